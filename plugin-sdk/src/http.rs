//! Outbound HTTP for writer plugins (feature `http`): a small blocking client.
//!
//! On wasm32 a request goes out through `wasi:http/outgoing-handler`, so the host
//! makes the connection, and only to the base URLs the writer's `grants.http`
//! lists: any other request fails with [`Error::Denied`]. The body is streamed to
//! the host in chunks of at most 4096 bytes, and the response body is read until
//! the host closes it. Natively (in `cargo test`) the same API speaks HTTP/1.1
//! over a `std::net::TcpStream`, one connection per request, `http://` only, with
//! `Content-Length` or chunked responses.
//!
//! A component built with this feature imports `wasi:http`; the host refuses to
//! load it for a writer that has no `grants.http`. Leave the feature off unless the
//! plugin makes HTTP requests.
//!
//! ```no_run
//! use sluice_plugin_sdk::PluginError;
//! use sluice_plugin_sdk::http::Request;
//!
//! fn ping() -> Result<(), PluginError> {
//!     let response = Request::post("http://127.0.0.1:8123/")
//!         .header("Content-Type", "text/plain")
//!         .body("SELECT 1")
//!         .send()?; // a refused connection is retriable, a denied URL a configuration error
//!     if !response.is_success() {
//!         return Err(PluginError::Fatal(format!(
//!             "status {}: {}",
//!             response.status,
//!             response.text()
//!         )));
//!     }
//!     Ok(())
//! }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::plugin::PluginError;

/// How long a request may take to connect, unless [`Request::connect_timeout`] says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may wait for the response to start, and then between two
/// pieces of its body, unless [`Request::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP request, built step by step and sent with [`send`](Self::send).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Request {
    /// A request with any method (`"GET"`, `"POST"`, `"PUT"`, ...) to `url`
    /// (`http://host[:port][/path][?query]`; `https://` too on wasm32, where the host
    /// makes the connection).
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Request {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A `GET` request to `url`.
    pub fn get(url: impl Into<String>) -> Request {
        Request::new("GET", url)
    }

    /// A `POST` request to `url`.
    pub fn post(url: impl Into<String>) -> Request {
        Request::new("POST", url)
    }

    /// A `PUT` request to `url`.
    pub fn put(url: impl Into<String>) -> Request {
        Request::new("PUT", url)
    }

    /// Adds a header (sent in the order added). `Host`, `Content-Length`,
    /// `Connection` and `Transfer-Encoding` are the client's to set.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (sent with a `Content-Length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// How long connecting may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Request {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the response to start, and then between two pieces of
    /// its body (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Sends the request and reads the whole response. Any status is a response:
    /// check [`Response::status`]. Errors say what failed, naming the URL without its
    /// query string.
    pub fn send(&self) -> Result<Response, Error> {
        let url = Url::parse(&self.url).map_err(|message| Error::InvalidRequest {
            url: redact(&self.url),
            message,
        })?;
        for (name, _) in &self.headers {
            if RESERVED_HEADERS
                .iter()
                .any(|r| name.eq_ignore_ascii_case(r))
            {
                return Err(Error::InvalidRequest {
                    url: url.redacted(),
                    message: format!("the header {name:?} is set by the client"),
                });
            }
        }
        imp::send(self, &url)
    }
}

/// Headers the client sets itself.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "upgrade",
];

/// A complete response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The headers, in the order received (names as the server or host gave them).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Why a request failed. Each variant names the URL without its query string (and
/// without credentials), so it is safe to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The host refused the request: the writer's `grants.http` does not allow this
    /// URL (wasi:http `HTTP-request-denied`). The operator must grant it.
    Denied {
        /// The URL, without its query.
        url: String,
    },
    /// No connection could be made or it was lost (refused, reset, name not found,
    /// destination unavailable). Worth retrying.
    Connection {
        /// The URL, without its query.
        url: String,
        /// What happened.
        message: String,
    },
    /// Connecting or waiting for the response took too long. Worth retrying.
    Timeout {
        /// The URL, without its query.
        url: String,
        /// What timed out.
        message: String,
    },
    /// The request cannot be sent as it is (a malformed URL, an unsupported scheme,
    /// a header the client sets itself).
    InvalidRequest {
        /// The URL, without its query.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// Anything else (a malformed response, a TLS or protocol error).
    Other {
        /// The URL, without its query.
        url: String,
        /// What happened.
        message: String,
    },
}

impl Error {
    /// The URL the request went to, without its query string.
    pub fn url(&self) -> &str {
        match self {
            Error::Denied { url }
            | Error::Connection { url, .. }
            | Error::Timeout { url, .. }
            | Error::InvalidRequest { url, .. }
            | Error::Other { url, .. } => url,
        }
    }

    /// Whether trying again later may work (a connection or a timeout error).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::Connection { .. } | Error::Timeout { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied { url } => write!(
                f,
                "HTTP request to {url} denied: the writer's grants.http does not allow it"
            ),
            Error::Connection { url, message } => {
                write!(f, "HTTP request to {url}: connection failed: {message}")
            }
            Error::Timeout { url, message } => {
                write!(f, "HTTP request to {url}: timed out: {message}")
            }
            Error::InvalidRequest { url, message } => {
                write!(f, "HTTP request to {url}: invalid request: {message}")
            }
            Error::Other { url, message } => write!(f, "HTTP request to {url}: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for PluginError {
    /// Connection errors and timeouts are retriable; a denied URL is the
    /// configuration's fault (not granted); anything else is fatal.
    ///
    /// ```
    /// use sluice_plugin_sdk::PluginError;
    /// use sluice_plugin_sdk::http::Error;
    ///
    /// let e = Error::Denied { url: "http://10.0.0.1:8123/".into() };
    /// assert!(matches!(PluginError::from(e), PluginError::InvalidConfig(_)));
    /// ```
    fn from(e: Error) -> Self {
        match e {
            Error::Connection { .. } | Error::Timeout { .. } => {
                PluginError::Retriable(e.to_string())
            }
            Error::Denied { .. } => PluginError::InvalidConfig(e.to_string()),
            Error::InvalidRequest { .. } | Error::Other { .. } => PluginError::Fatal(e.to_string()),
        }
    }
}

/// `url` without its query, fragment and credentials, for messages.
fn redact(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..cut];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// The parts of an absolute `http(s)://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Url<'a> {
    scheme: &'a str,
    /// `host[:port]`, as given.
    authority: &'a str,
    /// The host, without the brackets of an IPv6 literal.
    host: &'a str,
    port: u16,
    /// `/path?query`, at least `/`.
    path_with_query: Cow<'a, str>,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Url<'a>, String> {
        let url = url.split('#').next().unwrap_or(url);
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "not an absolute URL (expected http://host[:port]/...)".to_owned())?;
        let default_port = if scheme.eq_ignore_ascii_case("http") {
            80
        } else if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            return Err(format!(
                "unsupported scheme {scheme:?} (expected http or https)"
            ));
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(
                "credentials in the URL are not supported: send an Authorization header".into(),
            );
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| "unclosed [ in the host".to_owned())?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("unexpected {after:?} after the host")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("invalid port {p:?}"))?,
            None => default_port,
        };
        let path_with_query = if path.is_empty() {
            Cow::Borrowed("/")
        } else if path.starts_with('?') {
            Cow::Owned(format!("/{path}"))
        } else {
            Cow::Borrowed(path)
        };
        Ok(Url {
            scheme,
            authority,
            host,
            port,
            path_with_query,
        })
    }

    /// The URL without its query, for messages.
    fn redacted(&self) -> String {
        let path = self.path_with_query.split('?').next().unwrap_or("/");
        format!("{}://{}{path}", self.scheme, self.authority)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    //! HTTP/1.1 over std::net, one connection per request.

    use std::io::{self, BufRead, BufReader, Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};

    use super::{Error, Request, Response, Url};

    pub(super) fn send(request: &Request, url: &Url<'_>) -> Result<Response, Error> {
        let target = url.redacted();
        if !url.scheme.eq_ignore_ascii_case("http") {
            return Err(Error::InvalidRequest {
                url: target,
                message: "only http:// is supported outside a Sluice host".into(),
            });
        }
        let io_error = |doing: &str, e: io::Error| classify(&target, doing, e);
        let stream =
            connect(url, request.connect_timeout).map_err(|e| io_error("connecting", e))?;
        stream
            .set_read_timeout(Some(request.timeout))
            .and_then(|()| stream.set_write_timeout(Some(request.timeout)))
            .map_err(|e| io_error("connecting", e))?;
        let _ = stream.set_nodelay(true);

        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            request.method, url.path_with_query, url.authority
        );
        let has_body =
            !request.body.is_empty() || matches!(request.method.as_str(), "POST" | "PUT" | "PATCH");
        if has_body {
            head.push_str(&format!("Content-Length: {}\r\n", request.body.len()));
        }
        for (name, value) in &request.headers {
            if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
                return Err(Error::InvalidRequest {
                    url: target,
                    message: format!("invalid header {name:?}"),
                });
            }
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut writer = &stream;
        writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(&request.body))
            .and_then(|()| writer.flush())
            .map_err(|e| io_error("sending the request", e))?;

        let mut reader = BufReader::with_capacity(64 * 1024, &stream);
        read_response(&mut reader, &request.method).map_err(|e| match e {
            ReadError::Io(e) => io_error("reading the response", e),
            ReadError::Malformed(message) => Error::Other {
                url: target.clone(),
                message: format!("malformed response: {message}"),
            },
        })
    }

    fn connect(url: &Url<'_>, timeout: std::time::Duration) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in (url.host, url.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address found")))
    }

    fn classify(url: &str, doing: &str, e: io::Error) -> Error {
        use io::ErrorKind as K;
        let message = format!("{doing}: {e}");
        match e.kind() {
            K::TimedOut | K::WouldBlock => Error::Timeout {
                url: url.to_owned(),
                message,
            },
            K::PermissionDenied => Error::Denied {
                url: url.to_owned(),
            },
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::AddrNotAvailable
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::NotFound
            | K::Interrupted => Error::Connection {
                url: url.to_owned(),
                message,
            },
            // Name resolution failures come as `Other` (or `Uncategorized`).
            _ if doing == "connecting" => Error::Connection {
                url: url.to_owned(),
                message,
            },
            _ => Error::Other {
                url: url.to_owned(),
                message,
            },
        }
    }

    pub(super) enum ReadError {
        Io(io::Error),
        Malformed(String),
    }

    impl From<io::Error> for ReadError {
        fn from(e: io::Error) -> Self {
            ReadError::Io(e)
        }
    }

    fn malformed<T>(message: impl Into<String>) -> Result<T, ReadError> {
        Err(ReadError::Malformed(message.into()))
    }

    /// One line without its CRLF; EOF before the line ends is an error.
    fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<(), ReadError> {
        line.clear();
        // Status and header lines are bounded, so a broken server cannot make us
        // buffer forever.
        let n = reader.take(64 * 1024).read_until(b'\n', line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed in the middle of the response head",
            )));
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(())
    }

    /// Reads a response (status line, headers, body) from `reader`.
    pub(super) fn read_response(
        reader: &mut impl BufRead,
        method: &str,
    ) -> Result<Response, ReadError> {
        let mut line = Vec::new();
        let status = loop {
            read_line(reader, &mut line)?;
            let text = String::from_utf8_lossy(&line);
            let mut parts = text.splitn(3, ' ');
            let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
                return malformed(format!("status line {text:?}"));
            };
            if !version.starts_with("HTTP/1.") {
                return malformed(format!("status line {text:?}"));
            }
            let Ok(status) = code.parse::<u16>() else {
                return malformed(format!("status line {text:?}"));
            };
            let mut headers = Vec::new();
            loop {
                read_line(reader, &mut line)?;
                if line.is_empty() {
                    break;
                }
                let text = String::from_utf8_lossy(&line);
                let Some((name, value)) = text.split_once(':') else {
                    return malformed(format!("header line {text:?}"));
                };
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            // 1xx responses (100 Continue) come before the real one.
            if (100..200).contains(&status) {
                continue;
            }
            break Response {
                status,
                headers,
                body: Vec::new(),
            };
        };
        let mut response = status;
        let no_body =
            method.eq_ignore_ascii_case("HEAD") || response.status == 204 || response.status == 304;
        if no_body {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                read_line(reader, &mut line)?;
                let text = String::from_utf8_lossy(&line);
                let size = text.split(';').next().unwrap_or("").trim();
                let Ok(size) = usize::from_str_radix(size, 16) else {
                    return malformed(format!("chunk size {text:?}"));
                };
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        read_line(reader, &mut line)?;
                        if line.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = response.body.len();
                response.body.resize(start + size, 0);
                reader.read_exact(&mut response.body[start..])?;
                read_line(reader, &mut line)?;
                if !line.is_empty() {
                    return malformed("no CRLF after a chunk");
                }
            }
        } else if let Some(length) = response.header("content-length") {
            let Ok(length) = length.parse::<u64>() else {
                return malformed(format!("Content-Length {length:?}"));
            };
            reader.take(length).read_to_end(&mut response.body)?;
            if (response.body.len() as u64) < length {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the connection closed after {} of {length} body bytes",
                        response.body.len()
                    ),
                )));
            }
        } else {
            reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    //! wasi:http/outgoing-handler.

    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, HeaderError, IncomingBody, Method, OutgoingBody, OutgoingRequest,
        RequestOptions, Scheme,
    };
    use wasip2::io::streams::StreamError;

    use super::{Error, Request, Response, Url};

    /// At most this many bytes per `write` (the wasi:io contract for a blocking write).
    const CHUNK: usize = 4096;
    /// Bytes asked for per read of the response body.
    const READ: u64 = 64 * 1024;

    pub(super) fn send(request: &Request, url: &Url<'_>) -> Result<Response, Error> {
        let target = url.redacted();
        let invalid = |message: String| Error::InvalidRequest {
            url: target.clone(),
            message,
        };
        let mut entries: Vec<(String, Vec<u8>)> = request
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
            .collect();
        let has_body =
            !request.body.is_empty() || matches!(request.method.as_str(), "POST" | "PUT" | "PATCH");
        if has_body {
            entries.push((
                "content-length".into(),
                request.body.len().to_string().into_bytes(),
            ));
        }
        let headers = Fields::from_list(&entries).map_err(|e| {
            invalid(match e {
                HeaderError::Forbidden => "a header the host forbids".into(),
                HeaderError::InvalidSyntax => "a header with an invalid name or value".into(),
                HeaderError::Immutable => "immutable headers".into(),
            })
        })?;
        let outgoing = OutgoingRequest::new(headers);
        let method = match request.method.as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        };
        let scheme = if url.scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            Scheme::Http
        };
        outgoing
            .set_method(&method)
            .map_err(|()| invalid(format!("invalid method {:?}", request.method)))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("invalid scheme".into()))?;
        outgoing
            .set_authority(Some(url.authority))
            .map_err(|()| invalid("invalid host".into()))?;
        outgoing
            .set_path_with_query(Some(&url.path_with_query))
            .map_err(|()| invalid("invalid path".into()))?;
        let options = RequestOptions::new();
        let nanos = |d: std::time::Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        // A host may not support a timeout; then it keeps its own.
        let _ = options.set_connect_timeout(Some(nanos(request.connect_timeout)));
        let _ = options.set_first_byte_timeout(Some(nanos(request.timeout)));
        let _ = options.set_between_bytes_timeout(Some(nanos(request.timeout)));

        let body = outgoing
            .body()
            .map_err(|()| invalid("the request body was taken twice".into()))?;
        // Start the request first: the host reads the body while we write it.
        let future =
            outgoing_handler::handle(outgoing, Some(options)).map_err(|e| error(&target, e))?;

        let written = write_body(&body, &request.body);
        let finished = match written {
            Ok(()) => OutgoingBody::finish(body, None).map_err(|e| error(&target, e)),
            Err(e) => {
                drop(body);
                Err(e.into_error(&target))
            }
        };
        // The response (or the host's error for the request) says more than a
        // failed body write, which is only its consequence.
        let response = loop {
            match future.get() {
                Some(Ok(Ok(response))) => break response,
                Some(Ok(Err(code))) => return Err(error(&target, code)),
                Some(Err(())) => {
                    return Err(Error::Other {
                        url: target,
                        message: "the response was taken twice".into(),
                    });
                }
                None => future.subscribe().block(),
            }
        };
        let status = response.status();
        // A server may answer before it read the whole body (an early error): its
        // answer says more than the failed write. With a `content-length`, a
        // success means the server read the whole body.
        if let Err(e) = finished {
            crate::log::debug(&format!("{e}; the server answered {status}"));
        }
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| Error::Other {
            url: target.clone(),
            message: "the response body was taken twice".into(),
        })?;
        let body = read_body(&incoming).map_err(|e| e.into_error(&target))?;
        let trailers = IncomingBody::finish(incoming);
        drop(trailers);
        drop(response);
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// A failed stream operation: the host's error code for it, if it has one.
    enum StreamFailure {
        Closed,
        Failed(wasip2::io::error::Error),
    }

    impl StreamFailure {
        fn into_error(self, url: &str) -> Error {
            match self {
                StreamFailure::Closed => Error::Connection {
                    url: url.to_owned(),
                    message: "the connection closed while the body was sent".into(),
                },
                StreamFailure::Failed(e) => match wasip2::http::types::http_error_code(&e) {
                    Some(code) => error(url, code),
                    None => Error::Connection {
                        url: url.to_owned(),
                        message: e.to_debug_string(),
                    },
                },
            }
        }
    }

    impl From<StreamError> for StreamFailure {
        fn from(e: StreamError) -> Self {
            match e {
                StreamError::Closed => StreamFailure::Closed,
                StreamError::LastOperationFailed(e) => StreamFailure::Failed(e),
            }
        }
    }

    fn write_body(body: &OutgoingBody, data: &[u8]) -> Result<(), StreamFailure> {
        let stream = body.write().map_err(|()| StreamFailure::Closed)?;
        let mut rest = data;
        while !rest.is_empty() {
            let permitted = stream.check_write()?;
            if permitted == 0 {
                stream.subscribe().block();
                continue;
            }
            let n = rest.len().min(CHUNK).min(permitted as usize);
            stream.write(&rest[..n])?;
            rest = &rest[n..];
        }
        match stream.blocking_flush() {
            // The host may close the stream as soon as it has all `content-length`
            // bytes: everything was written.
            Ok(()) | Err(StreamError::Closed) => {}
            Err(e) => return Err(e.into()),
        }
        // The stream (a child of the body) must be gone before the body is finished.
        drop(stream);
        Ok(())
    }

    fn read_body(body: &IncomingBody) -> Result<Vec<u8>, StreamFailure> {
        let stream = body.stream().map_err(|()| StreamFailure::Closed)?;
        let mut out = Vec::new();
        loop {
            match stream.blocking_read(READ) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(e.into()),
            }
        }
        drop(stream);
        Ok(out)
    }

    /// The error for a wasi:http error code.
    fn error(url: &str, code: ErrorCode) -> Error {
        let url = url.to_owned();
        let message = format!("{code:?}");
        match code {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
                Error::Denied { url }
            }
            ErrorCode::DnsTimeout
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => Error::Timeout { url, message },
            ErrorCode::DnsError(_)
            | ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpUnroutable
            | ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTerminated
            | ErrorCode::ConnectionLimitReached
            | ErrorCode::HttpResponseIncomplete => Error::Connection { url, message },
            ErrorCode::HttpRequestMethodInvalid
            | ErrorCode::HttpRequestUriInvalid
            | ErrorCode::HttpRequestUriTooLong
            | ErrorCode::HttpRequestLengthRequired
            | ErrorCode::HttpRequestBodySize(_)
            | ErrorCode::HttpRequestHeaderSectionSize(_)
            | ErrorCode::HttpRequestHeaderSize(_) => Error::InvalidRequest { url, message },
            _ => Error::Other { url, message },
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::io::{BufReader, Read, Write};
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8123/?query=SELECT%201").unwrap();
        assert_eq!(
            (u.host, u.port, u.authority, &*u.path_with_query),
            ("127.0.0.1", 8123, "127.0.0.1:8123", "/?query=SELECT%201")
        );
        assert_eq!(u.redacted(), "http://127.0.0.1:8123/");
        let u = Url::parse("http://[::1]:80?x=1").unwrap();
        assert_eq!((u.host, u.port, &*u.path_with_query), ("::1", 80, "/?x=1"));
        let u = Url::parse("https://example.invalid/a/b").unwrap();
        assert_eq!((u.port, &*u.path_with_query), (443, "/a/b"));
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("127.0.0.1:8123").is_err());
        assert!(Url::parse("http://u:p@h/").is_err());
        assert!(Url::parse("http://h:99999/").is_err());
        assert_eq!(
            redact("http://u:secret@h:1/p?password=x#f"),
            "http://h:1/p".to_owned()
        );
    }

    /// A server that answers one connection with `answer`, and hands back what it read.
    fn serve_once(answer: &'static [u8]) -> (String, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(&stream);
            let mut request = Vec::new();
            // The head, then Content-Length bytes of body.
            let mut line = String::new();
            let mut length = 0;
            loop {
                line.clear();
                std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
                request.extend_from_slice(line.as_bytes());
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            request.extend_from_slice(&body);
            (&stream).write_all(answer).unwrap();
            request
        });
        (format!("http://{addr}"), handle)
    }

    #[test]
    fn post_with_content_length_response() {
        let (base, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        );
        let response = Request::post(format!("{base}/?q=1"))
            .header("X-Test", "yes")
            .body("INSERT")
            .send()
            .unwrap();
        assert_eq!(response.status, 200);
        assert!(response.is_success());
        assert_eq!(response.header("content-type"), Some("text/plain"));
        assert_eq!(response.body, b"hello");
        let request = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(request.starts_with("POST /?q=1 HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nContent-Length: 6\r\n"), "{request}");
        assert!(request.contains("\r\nX-Test: yes\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\nINSERT"), "{request}");
    }

    #[test]
    fn chunked_response_and_error_status() {
        let (base, server) = serve_once(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nCode\r\n6\r\n: 27, \r\n0\r\nX-Trailer: 1\r\n\r\n",
        );
        let response = Request::get(format!("{base}/ping")).send().unwrap();
        server.join().unwrap();
        assert_eq!(response.status, 500);
        assert!(!response.is_success());
        assert_eq!(response.text(), "Code: 27, ");
    }

    #[test]
    fn body_until_close() {
        let (base, server) = serve_once(b"HTTP/1.0 200 OK\r\n\r\nall of it");
        let response = Request::get(&base).send().unwrap();
        server.join().unwrap();
        assert_eq!(response.body, b"all of it");
    }

    #[test]
    fn truncated_body_is_a_connection_error() {
        let (base, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        let err = Request::get(format!("{base}/x?secret=1"))
            .send()
            .unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, Error::Connection { .. }), "{err:?}");
        assert!(err.is_retriable());
        assert_eq!(err.url(), format!("{base}/x"));
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn malformed_response_is_other() {
        let (base, server) = serve_once(b"SMTP ready\r\n\r\n");
        let err = Request::get(&base).send().unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, Error::Other { .. }), "{err:?}");
        assert!(matches!(PluginError::from(err), PluginError::Fatal(_)));
    }

    #[test]
    fn refused_connection_is_retriable() {
        // Bind then drop: nothing listens on that port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = Request::get(format!("http://127.0.0.1:{port}/?password=x"))
            .send()
            .unwrap_err();
        assert!(matches!(err, Error::Connection { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "HTTP request to http://127.0.0.1:{port}/: connection failed"
            )),
            "{text}"
        );
        assert!(matches!(PluginError::from(err), PluginError::Retriable(_)));
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let err = Request::get(format!("http://{addr}/"))
            .timeout(Duration::from_millis(200))
            .send()
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(err.is_retriable());
        drop(listener);
    }

    #[test]
    fn invalid_requests() {
        let err = Request::get("http://127.0.0.1:1/")
            .header("Host", "x")
            .send()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
        let err = Request::get("https://127.0.0.1:1/").send().unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
        let err = Request::get("nope").send().unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTP request to nope: invalid request: not an absolute URL (expected http://host[:port]/...)"
        );
    }
}
