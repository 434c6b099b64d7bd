//! Outbound TCP for writer plugins (feature `tcp`): a blocking [`TcpStream`] that
//! implements [`std::io::Read`] and [`std::io::Write`], to speak a store's own
//! protocol (Redis's RESP, for example).
//!
//! On wasm32 it is built on `wasi:sockets`: the name is resolved with
//! `ip-name-lookup`, the socket connected with `start-connect`/`finish-connect`,
//! and bytes move through the socket's `wasi:io` streams (writes of at most 4096
//! bytes, each within what `check-write` permits). The host lets a writer connect
//! only to the `host:port` addresses its `grants.tcp` lists: any other connection
//! fails with [`Error::Denied`]. Natively (in `cargo test`) it is a
//! `std::net::TcpStream`.
//!
//! A component built with this feature imports `wasi:sockets`; the host refuses to
//! load it for a writer that has no `grants.tcp`. Leave the feature off unless the
//! plugin opens connections.
//!
//! ```no_run
//! use std::io::{BufRead, BufReader, Write};
//! use sluice_plugin_sdk::PluginError;
//! use sluice_plugin_sdk::tcp::TcpStream;
//!
//! fn ping() -> Result<String, PluginError> {
//!     let mut stream = TcpStream::connect("127.0.0.1:6379")?; // Denied: a configuration error
//!     let lost = |e: std::io::Error| PluginError::Retriable(format!("redis: {e}"));
//!     stream.write_all(b"PING\r\n").map_err(lost)?;
//!     stream.flush().map_err(lost)?;
//!     let mut line = String::new();
//!     BufReader::new(&mut stream).read_line(&mut line).map_err(lost)?;
//!     Ok(line) // "+PONG\r\n"
//! }
//! ```

use std::fmt;
use std::io;
use std::time::Duration;

use crate::plugin::PluginError;

/// How long [`TcpStream::connect`] may take, name lookup included.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected TCP stream. Dropping it closes the connection.
pub struct TcpStream {
    inner: imp::Stream,
    address: String,
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl TcpStream {
    /// Connects to `address` (`host:port`, `1.2.3.4:port` or `[::1]:port`), trying
    /// each address the name resolves to, within [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect(address: &str) -> Result<TcpStream, Error> {
        Self::connect_timeout(address, DEFAULT_CONNECT_TIMEOUT)
    }

    /// Connects to `address` within `timeout` (name lookup included).
    pub fn connect_timeout(address: &str, timeout: Duration) -> Result<TcpStream, Error> {
        let (host, port) = split_address(address).map_err(|message| Error::InvalidAddress {
            address: address.to_owned(),
            message,
        })?;
        let inner = imp::connect(address, host, port, timeout)?;
        Ok(TcpStream {
            inner,
            address: address.to_owned(),
        })
    }

    /// The address it was connected with, as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How long a read may wait for data (`None`, the default: for ever). A read
    /// that waits longer fails with [`io::ErrorKind::TimedOut`].
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }

    /// How long a write may wait for room to send (`None`, the default: for ever).
    /// A write that waits longer fails with [`io::ErrorKind::TimedOut`].
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(timeout)
    }
}

impl io::Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl io::Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Why a connection could not be made. Each variant names the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The host refused it: the writer's `grants.tcp` does not list this address
    /// (wasi:sockets `access-denied`). The operator must grant it.
    Denied {
        /// The address, as given.
        address: String,
    },
    /// Refused, reset, unreachable, or the name did not resolve. Worth retrying.
    Connection {
        /// The address, as given.
        address: String,
        /// What happened.
        message: String,
    },
    /// Connecting took longer than the timeout. Worth retrying.
    Timeout {
        /// The address, as given.
        address: String,
        /// What timed out.
        message: String,
    },
    /// Not a `host:port` address.
    InvalidAddress {
        /// The address, as given.
        address: String,
        /// What is wrong.
        message: String,
    },
    /// Anything else.
    Other {
        /// The address, as given.
        address: String,
        /// What happened.
        message: String,
    },
}

impl Error {
    /// The address the connection was for.
    pub fn address(&self) -> &str {
        match self {
            Error::Denied { address }
            | Error::Connection { address, .. }
            | Error::Timeout { address, .. }
            | Error::InvalidAddress { address, .. }
            | Error::Other { address, .. } => address,
        }
    }

    /// Whether trying again later may work (a connection error or a timeout).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::Connection { .. } | Error::Timeout { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied { address } => write!(
                f,
                "TCP connection to {address} denied: the writer's grants.tcp does not allow it"
            ),
            Error::Connection { address, message } => {
                write!(f, "TCP connection to {address} failed: {message}")
            }
            Error::Timeout { address, message } => {
                write!(f, "TCP connection to {address} timed out: {message}")
            }
            Error::InvalidAddress { address, message } => {
                write!(f, "invalid TCP address {address:?}: {message}")
            }
            Error::Other { address, message } => {
                write!(f, "TCP connection to {address}: {message}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for PluginError {
    /// Connection errors and timeouts are retriable; a denied or invalid address is
    /// the configuration's fault; anything else is fatal.
    ///
    /// ```
    /// use sluice_plugin_sdk::PluginError;
    /// use sluice_plugin_sdk::tcp::Error;
    ///
    /// let e = Error::Connection { address: "127.0.0.1:6379".into(), message: "refused".into() };
    /// assert_eq!(
    ///     PluginError::from(e),
    ///     PluginError::Retriable("TCP connection to 127.0.0.1:6379 failed: refused".into())
    /// );
    /// ```
    fn from(e: Error) -> Self {
        match e {
            Error::Connection { .. } | Error::Timeout { .. } => {
                PluginError::Retriable(e.to_string())
            }
            Error::Denied { .. } | Error::InvalidAddress { .. } => {
                PluginError::InvalidConfig(e.to_string())
            }
            Error::Other { .. } => PluginError::Fatal(e.to_string()),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match e {
            Error::Denied { .. } => io::ErrorKind::PermissionDenied,
            Error::Connection { .. } => io::ErrorKind::ConnectionRefused,
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::InvalidAddress { .. } => io::ErrorKind::InvalidInput,
            Error::Other { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// `host:port` (the host without the brackets of an IPv6 literal) and the port.
fn split_address(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the host".to_owned())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "expected host:port".to_owned())?;
        (host, port)
    } else {
        address
            .rsplit_once(':')
            .ok_or_else(|| "expected host:port".to_owned())?
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("invalid port {port:?}"))?;
    Ok((host, port))
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    //! std::net.

    use std::io::{self, Read, Write};
    use std::net::ToSocketAddrs;
    use std::time::Duration;

    use super::Error;

    pub(super) struct Stream(std::net::TcpStream);

    pub(super) fn connect(
        address: &str,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Stream, Error> {
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::Connection {
                address: address.to_owned(),
                message: format!("name lookup: {e}"),
            })?;
        let mut last = None;
        for addr in addrs {
            match std::net::TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Stream(stream));
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(e) = last else {
            return Err(Error::Connection {
                address: address.to_owned(),
                message: "the name resolved to no address".into(),
            });
        };
        let message = e.to_string();
        let address = address.to_owned();
        Err(match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                Error::Timeout { address, message }
            }
            io::ErrorKind::PermissionDenied => Error::Denied { address },
            _ => Error::Connection { address, message },
        })
    }

    impl Stream {
        pub(super) fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
            self.0.set_read_timeout(timeout)
        }

        pub(super) fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
            self.0.set_write_timeout(timeout)
        }

        pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf) {
                // std reports an expired read timeout as WouldBlock on Unix.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    Err(io::Error::new(io::ErrorKind::TimedOut, e))
                }
                r => r,
            }
        }

        pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.0.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    Err(io::Error::new(io::ErrorKind::TimedOut, e))
                }
                r => r,
            }
        }

        pub(super) fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    //! wasi:sockets and wasi:io.

    use std::io;
    use std::net::IpAddr;
    use std::time::Duration;

    use wasip2::clocks::monotonic_clock;
    use wasip2::io::poll::{Pollable, poll};
    use wasip2::io::streams::{InputStream, OutputStream, StreamError};
    use wasip2::sockets::instance_network::instance_network;
    use wasip2::sockets::ip_name_lookup::resolve_addresses;
    use wasip2::sockets::network::{
        ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress,
        Ipv6SocketAddress, Network,
    };
    use wasip2::sockets::tcp::TcpSocket;
    use wasip2::sockets::tcp_create_socket::create_tcp_socket;

    use super::Error;

    /// At most this many bytes per `write` (the wasi:io contract for a blocking write).
    const CHUNK: usize = 4096;
    /// At most this many bytes per read.
    const READ: usize = 64 * 1024;

    /// Fields drop in order: the streams (children of the socket) before the socket.
    pub(super) struct Stream {
        input: InputStream,
        output: OutputStream,
        socket: TcpSocket,
        _network: Network,
        read_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
    }

    fn nanos(d: Duration) -> u64 {
        d.as_nanos().min(u64::MAX as u128) as u64
    }

    /// Waits for `ready` until the monotonic clock reaches `deadline`; false on timeout.
    fn wait(ready: &Pollable, deadline: u64) -> bool {
        let timer = monotonic_clock::subscribe_instant(deadline);
        let fired = poll(&[ready, &timer]);
        fired.contains(&0)
    }

    fn error(address: &str, doing: &str, code: ErrorCode) -> Error {
        let address = address.to_owned();
        let message = format!("{doing}: {}", code.message());
        match code {
            ErrorCode::AccessDenied => Error::Denied { address },
            ErrorCode::Timeout => Error::Timeout { address, message },
            ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionReset
            | ErrorCode::ConnectionAborted
            | ErrorCode::RemoteUnreachable
            | ErrorCode::NameUnresolvable
            | ErrorCode::TemporaryResolverFailure
            | ErrorCode::PermanentResolverFailure
            | ErrorCode::NewSocketLimit
            | ErrorCode::OutOfMemory => Error::Connection { address, message },
            ErrorCode::InvalidArgument => Error::InvalidAddress { address, message },
            _ => Error::Other { address, message },
        }
    }

    fn timeout(address: &str, doing: &str) -> Error {
        Error::Timeout {
            address: address.to_owned(),
            message: format!("{doing} took too long"),
        }
    }

    pub(super) fn connect(
        address: &str,
        host: &str,
        port: u16,
        timeout_after: Duration,
    ) -> Result<Stream, Error> {
        let deadline = monotonic_clock::now().saturating_add(nanos(timeout_after));
        let network = instance_network();
        let addresses = match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                let [a, b, c, d] = ip.octets();
                vec![IpAddress::Ipv4((a, b, c, d))]
            }
            Ok(IpAddr::V6(ip)) => {
                let s = ip.segments();
                vec![IpAddress::Ipv6((
                    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
                ))]
            }
            Err(_) => resolve(&network, address, host, deadline)?,
        };
        let mut last = None;
        for ip in addresses {
            match connect_one(&network, address, ip, port, deadline) {
                Ok((socket, input, output)) => {
                    return Ok(Stream {
                        input,
                        output,
                        socket,
                        _network: network,
                        read_timeout: None,
                        write_timeout: None,
                    });
                }
                Err(e @ (Error::Denied { .. } | Error::Timeout { .. })) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Connection {
            address: address.to_owned(),
            message: "the name resolved to no address".into(),
        }))
    }

    fn resolve(
        network: &Network,
        address: &str,
        host: &str,
        deadline: u64,
    ) -> Result<Vec<IpAddress>, Error> {
        let lookup =
            resolve_addresses(network, host).map_err(|e| error(address, "name lookup", e))?;
        let mut out = Vec::new();
        let ready = lookup.subscribe();
        loop {
            match lookup.resolve_next_address() {
                Ok(Some(ip)) => out.push(ip),
                Ok(None) => break,
                Err(ErrorCode::WouldBlock) => {
                    if !wait(&ready, deadline) {
                        return Err(timeout(address, "name lookup"));
                    }
                }
                Err(e) => return Err(error(address, "name lookup", e)),
            }
        }
        drop(ready);
        Ok(out)
    }

    fn connect_one(
        network: &Network,
        address: &str,
        ip: IpAddress,
        port: u16,
        deadline: u64,
    ) -> Result<(TcpSocket, InputStream, OutputStream), Error> {
        let (family, remote) = match ip {
            IpAddress::Ipv4(a) => (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address: a }),
            ),
            IpAddress::Ipv6(a) => (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port,
                    flow_info: 0,
                    address: a,
                    scope_id: 0,
                }),
            ),
        };
        let socket =
            create_tcp_socket(family).map_err(|e| error(address, "creating a socket", e))?;
        socket
            .start_connect(network, remote)
            .map_err(|e| error(address, "connecting", e))?;
        let ready = socket.subscribe();
        let streams = loop {
            match socket.finish_connect() {
                Ok(streams) => break streams,
                Err(ErrorCode::WouldBlock) => {
                    if !wait(&ready, deadline) {
                        return Err(timeout(address, "connecting"));
                    }
                }
                Err(e) => return Err(error(address, "connecting", e)),
            }
        };
        drop(ready);
        Ok((socket, streams.0, streams.1))
    }

    fn io_error(e: StreamError) -> io::Error {
        match e {
            StreamError::Closed => {
                io::Error::new(io::ErrorKind::BrokenPipe, "the connection is closed")
            }
            StreamError::LastOperationFailed(e) => {
                io::Error::new(io::ErrorKind::ConnectionReset, e.to_debug_string())
            }
        }
    }

    impl Stream {
        pub(super) fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
            self.read_timeout = timeout;
            Ok(())
        }

        pub(super) fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
            self.write_timeout = timeout;
            Ok(())
        }

        pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if buf.is_empty() {
                return Ok(0);
            }
            let len = buf.len().min(READ) as u64;
            let result = match self.read_timeout {
                None => self.input.blocking_read(len),
                Some(t) => {
                    let deadline = monotonic_clock::now().saturating_add(nanos(t));
                    loop {
                        match self.input.read(len) {
                            Ok(chunk) if chunk.is_empty() => {
                                let ready = self.input.subscribe();
                                if !wait(&ready, deadline) {
                                    return Err(io::Error::new(
                                        io::ErrorKind::TimedOut,
                                        "no data within the read timeout",
                                    ));
                                }
                            }
                            other => break other,
                        }
                    }
                }
            };
            match result {
                Ok(chunk) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    Ok(n)
                }
                Err(StreamError::Closed) => Ok(0),
                Err(e) => Err(io_error(e)),
            }
        }

        pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.is_empty() {
                return Ok(0);
            }
            let deadline = self
                .write_timeout
                .map(|t| monotonic_clock::now().saturating_add(nanos(t)));
            loop {
                let permitted = self.output.check_write().map_err(io_error)?;
                if permitted == 0 {
                    let ready = self.output.subscribe();
                    match deadline {
                        None => ready.block(),
                        Some(deadline) => {
                            if !wait(&ready, deadline) {
                                return Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "no room to send within the write timeout",
                                ));
                            }
                        }
                    }
                    continue;
                }
                let n = buf.len().min(CHUNK).min(permitted as usize);
                self.output.write(&buf[..n]).map_err(io_error)?;
                return Ok(n);
            }
        }

        pub(super) fn flush(&mut self) -> io::Result<()> {
            self.output.blocking_flush().map_err(io_error)
        }
    }

    impl Drop for Stream {
        fn drop(&mut self) {
            // Best effort: tell the peer we are done before the streams go.
            let _ = self
                .socket
                .shutdown(wasip2::sockets::tcp::ShutdownType::Both);
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(split_address("127.0.0.1:6379"), Ok(("127.0.0.1", 6379)));
        assert_eq!(split_address("[::1]:6379"), Ok(("::1", 6379)));
        assert_eq!(split_address("redis.internal:1"), Ok(("redis.internal", 1)));
        assert!(split_address("127.0.0.1").is_err());
        assert!(split_address(":6379").is_err());
        assert!(split_address("h:port").is_err());
        let err = TcpStream::connect("nowhere").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid TCP address \"nowhere\": expected host:port"
        );
        assert!(matches!(
            PluginError::from(err),
            PluginError::InvalidConfig(_)
        ));
    }

    #[test]
    fn echo() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream).write_all(line.to_uppercase().as_bytes()).unwrap();
        });
        let mut stream = TcpStream::connect(&addr.to_string()).unwrap();
        assert_eq!(stream.address(), addr.to_string());
        let big = "x".repeat(100_000);
        stream.write_all(format!("{big}\n").as_bytes()).unwrap();
        stream.flush().unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, format!("{}\n", big.to_uppercase()));
        server.join().unwrap();
    }

    #[test]
    fn refused_is_retriable() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = TcpStream::connect(&format!("127.0.0.1:{port}")).unwrap_err();
        assert!(matches!(err, Error::Connection { .. }), "{err:?}");
        assert!(err.is_retriable());
        assert!(matches!(PluginError::from(err), PluginError::Retriable(_)));
    }

    #[test]
    fn read_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stream = TcpStream::connect(&listener.local_addr().unwrap().to_string()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let err = stream.read(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
