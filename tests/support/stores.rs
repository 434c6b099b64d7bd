//! Plain clients for the customer-managed stores the tests check: ClickHouse over
//! HTTP and Redis over RESP, on blocking sockets. Small on purpose: a test reads
//! what landed with the simplest client that can, independently of the plugins.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// ClickHouse's HTTP interface on the local server (`scripts/services.sh` starts it).
pub const CLICKHOUSE_HTTP: &str = "127.0.0.1:8123";
/// The local Redis.
pub const REDIS: &str = "127.0.0.1:6379";

/// Runs `sql` on the local ClickHouse and returns the response body (TabSeparated
/// unless the query says otherwise). Panics with ClickHouse's message on an error.
pub fn clickhouse(sql: &str) -> String {
    let mut stream = TcpStream::connect(CLICKHOUSE_HTTP).expect("ClickHouse listens on 8123");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {CLICKHOUSE_HTTP}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{sql}",
        sql.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    assert!(
        status.contains(" 200 "),
        "ClickHouse refused `{sql}`: {status}: {body}"
    );
    body
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A Redis reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, or a bulk string.
    Text(String),
    /// `:42`.
    Int(i64),
    /// `*n` elements.
    Array(Vec<Reply>),
    /// `$-1` / `*-1`.
    Nil,
}

impl Reply {
    /// The integer of an `Int` reply.
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The elements of an `Array` reply.
    pub fn array(&self) -> &[Reply] {
        match self {
            Reply::Array(items) => items,
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
}

/// A blocking connection to the local Redis.
pub struct Redis(BufReader<TcpStream>);

impl Redis {
    /// Connects to the local Redis.
    pub fn connect() -> Redis {
        let stream = TcpStream::connect(REDIS).expect("Redis listens on 6379");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Redis(BufReader::new(stream))
    }

    /// Sends one command and reads its reply. Panics on an error reply.
    pub fn cmd(&mut self, args: &[&str]) -> Reply {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.get_mut().write_all(out.as_bytes()).unwrap();
        self.read()
    }

    /// Every key matching `pattern`, with SCAN (never KEYS on a shared server).
    pub fn keys(&mut self, pattern: &str) -> Vec<String> {
        let mut cursor = "0".to_string();
        let mut keys = Vec::new();
        loop {
            let reply = self.cmd(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
            let [Reply::Text(next), Reply::Array(batch)] = reply.array() else {
                panic!("unexpected SCAN reply {reply:?}");
            };
            keys.extend(batch.iter().map(|k| match k {
                Reply::Text(k) => k.clone(),
                other => panic!("unexpected key {other:?}"),
            }));
            if next == "0" {
                return keys;
            }
            cursor = next.clone();
        }
    }

    /// Deletes every key matching `pattern`.
    pub fn delete_matching(&mut self, pattern: &str) {
        for key in self.keys(pattern) {
            self.cmd(&["DEL", &key]);
        }
    }

    fn read(&mut self) -> Reply {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Text(rest.to_string()),
            "-" => panic!("Redis error: {rest}"),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let len: i64 = rest.parse().unwrap();
                if len < 0 {
                    return Reply::Nil;
                }
                let mut buf = vec![0; len as usize + 2];
                self.0.read_exact(&mut buf).unwrap();
                buf.truncate(len as usize);
                Reply::Text(String::from_utf8(buf).unwrap())
            }
            "*" => {
                let len: i64 = rest.parse().unwrap();
                if len < 0 {
                    return Reply::Nil;
                }
                Reply::Array((0..len).map(|_| self.read()).collect())
            }
            other => panic!("unexpected RESP reply type {other:?} in {line:?}"),
        }
    }
}
