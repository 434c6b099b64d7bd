//! RESP2, the Redis protocol: commands as arrays of bulk strings, and replies.

use std::io::{self, BufRead, BufReader, Read, Write};

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$3\r\nabc` (`None` for `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None` for `*-1`).
    Array(Option<Vec<Reply>>),
}

/// Appends one command (`args` as bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_number(out, args.len() as u64);
    for arg in args {
        out.push(b'$');
        push_number(out, arg.len() as u64);
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

fn malformed(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads one reply.
pub fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = Vec::new();
    read_line(reader, &mut line)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(malformed("an empty reply line"));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let number = || -> io::Result<i64> {
        std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed(format!("not a number: {:?}", String::from_utf8_lossy(rest))))
    };
    Ok(match kind {
        b'+' => Reply::Simple(text()),
        b'-' => Reply::Error(text()),
        b':' => Reply::Int(number()?),
        b'$' => {
            let n = number()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut data = vec![0; n as usize + 2];
                reader.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(malformed("a bulk string without its CRLF"));
                }
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(read_reply(reader)?);
                }
                Reply::Array(Some(items))
            }
        }
        other => {
            return Err(malformed(format!(
                "unexpected reply type {:?}",
                char::from(other)
            )));
        }
    })
}

fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    let n = reader.read_until(b'\n', line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(malformed("a reply line without its CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(())
}

/// A connection: writes go straight to the stream, replies are read buffered.
pub struct Connection<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> Connection<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Connection {
            reader: BufReader::with_capacity(64 * 1024, stream),
        }
    }

    /// Sends `commands` (already encoded) and flushes.
    pub fn send(&mut self, commands: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(commands)?;
        stream.flush()
    }

    /// Reads the next reply.
    pub fn reply(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut out = Vec::new();
        command(&mut out, args);
        self.send(&out)?;
        self.reply()
    }

    /// The stream.
    pub fn stream_mut(&mut self) -> &mut S {
        self.reader.get_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        command(&mut out, &[b"HSET", b"k", b"f", b""]);
        assert_eq!(out, b"*4\r\n$4\r\nHSET\r\n$1\r\nk\r\n$1\r\nf\r\n$0\r\n\r\n");
    }

    #[test]
    fn reads_replies() {
        let input: &[u8] =
            b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\na\r\n\r\n$-1\r\n*3\r\n+QUEUED\r\n*-1\r\n:-1\r\n";
        let mut reader = input;
        assert_eq!(read_reply(&mut reader).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            read_reply(&mut reader).unwrap(),
            Reply::Error("ERR bad".into())
        );
        assert_eq!(read_reply(&mut reader).unwrap(), Reply::Int(42));
        assert_eq!(
            read_reply(&mut reader).unwrap(),
            Reply::Bulk(Some(b"a\r\n".to_vec()))
        );
        assert_eq!(read_reply(&mut reader).unwrap(), Reply::Bulk(None));
        assert_eq!(
            read_reply(&mut reader).unwrap(),
            Reply::Array(Some(vec![
                Reply::Simple("QUEUED".into()),
                Reply::Array(None),
                Reply::Int(-1)
            ]))
        );
        let err = read_reply(&mut reader).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(read_reply(&mut &b"?x\r\n"[..]).is_err());
    }
}
