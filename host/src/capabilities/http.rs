//! Outbound HTTP for writers: `wasi:http/outgoing-handler`, linked into the
//! writer world only, with the send hook replaced by one that checks every
//! request against the writer's `http` grants.
//!
//! A request passes when its scheme, host and port are those of a granted base
//! URL, its path is under that URL's path, and the host resolves, now, to an
//! address the granted host resolved to when the instance was opened
//! ([`super::net`]). Anything else gets `error-code::HTTP-request-denied` and a
//! `warn` line in the host's log. Plain HTTP then connects to the checked
//! address itself, so a DNS answer that changes between the check and the
//! connect cannot send the request elsewhere.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::dry_run::{NOT_REACHED, Withheld};
use super::net::{GrantHost, HttpScheme, NetAccess, lookup};

/// How long connecting may take, unless the request's options say otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the response's head may take after the request was sent.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the response body may pause between two pieces.
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest any of these may be, whatever the request asks for.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// What the response future of a sent request resolves to, as the hook returns it.
type Sent = Result<(Response<WasiBody>, IoFuture), Error>;
/// Drives the connection while the guest reads the response body.
type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// The `wasi:http` hooks of a plugin instance.
pub(crate) struct HttpHooks {
    /// `None` for instances that are granted nothing (sources, `about`): every
    /// request is refused. Sources never get `wasi:http` linked anyway.
    access: Option<Arc<NetAccess>>,
}

impl HttpHooks {
    /// Every request refused.
    pub(crate) fn none() -> Self {
        Self { access: None }
    }

    /// Requests checked against `access`.
    pub(crate) fn new(access: Arc<NetAccess>) -> Self {
        Self {
            access: Some(access),
        }
    }
}

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let access = self.access.clone();
        Box::new(async move {
            let Some(access) = access else {
                return Err(Error::HttpRequestDenied);
            };
            let target = check(&access, request.uri()).await?;
            let options = limits(options);
            match target.scheme {
                HttpScheme::Http => send_plain(request, options, &target.addrs).await,
                // The crate's own sender does TLS. It resolves the host name
                // again when it connects, so for https a DNS change in the
                // instant between the check above and that connect is not
                // caught. TLS still holds: the server must present a
                // certificate for the granted host name.
                HttpScheme::Https => {
                    let (response, io) =
                        wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
                    Ok((
                        response.map(BodyExt::boxed_unsync),
                        Box::new(io) as IoFuture,
                    ))
                }
            }
        })
    }
}

/// Where a checked request may go.
struct Target {
    scheme: HttpScheme,
    /// The host's current addresses that are also granted, with the port.
    addrs: Vec<SocketAddr>,
}

/// Checks a request against the grants; logs and refuses it if it is outside.
async fn check(access: &NetAccess, uri: &Uri) -> Result<Target, Error> {
    let scheme = match uri.scheme_str() {
        Some("http") => HttpScheme::Http,
        Some("https") => HttpScheme::Https,
        other => {
            let shown = format!("{}://{}", other.unwrap_or(""), uri.host().unwrap_or(""));
            return Err(deny(access, &shown, "only http and https can be granted"));
        }
    };
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    let host = uri.host().and_then(GrantHost::of_request);
    let (Some(host), false) = (host, authority.contains('@')) else {
        let shown = format!("{}://{authority}", scheme.as_str());
        return Err(deny(access, &shown, "the request names no valid host"));
    };
    let port = uri.port_u16().unwrap_or(match scheme {
        HttpScheme::Http => 80,
        HttpScheme::Https => 443,
    });
    let path = uri.path();
    // What the log shows: never the query, which may hold secrets.
    let shown = format!("{}://{host}:{port}{path}", scheme.as_str());
    let covered = access
        .grants
        .http
        .iter()
        .any(|g| g.scheme == scheme && g.host == host && g.port == port && g.covers_path(path));
    if !covered {
        return Err(deny(access, &shown, "no http grant covers this URL"));
    }
    if let Some(run) = &access.grants.dry_run {
        // Not sent, and no name looked up. The SDK reads a DNS error as a
        // connection error (retriable); its text says why.
        run.withhold(Withheld::Http(shown));
        return Err(Error::DnsError {
            rcode: Some(NOT_REACHED.to_string()),
            info_code: None,
        });
    }
    let now = lookup(&host).await.map_err(|e| Error::DnsError {
        rcode: Some(e.to_string()),
        info_code: None,
    })?;
    let granted = access.granted_addresses(&host).await;
    let addrs: Vec<SocketAddr> = now
        .iter()
        .filter(|ip| granted.contains(ip))
        .map(|ip| SocketAddr::new(*ip, port))
        .collect();
    if addrs.is_empty() {
        let why = format!(
            "{host} resolves to {now:?} now, none of which it resolved to when the plugin was opened ({granted:?})"
        );
        return Err(deny(access, &shown, &why));
    }
    Ok(Target { scheme, addrs })
}

fn deny(access: &NetAccess, url: &str, why: &str) -> Error {
    tracing::warn!(
        plugin = &*access.label.plugin,
        pipeline = &*access.label.pipeline,
        url,
        granted = access.http_granted(),
        reason = why,
        "plugin made an HTTP request outside its grants; denied"
    );
    Error::HttpRequestDenied
}

/// The request's timeouts, with defaults, capped.
fn limits(options: Option<RequestOptions>) -> RequestOptions {
    let options = options.unwrap_or_default();
    let pick = |asked: Option<Duration>, default: Duration| {
        Some(asked.unwrap_or(default).min(MAX_TIMEOUT))
    };
    RequestOptions {
        connect_timeout: pick(options.connect_timeout, CONNECT_TIMEOUT),
        first_byte_timeout: pick(options.first_byte_timeout, FIRST_BYTE_TIMEOUT),
        between_bytes_timeout: pick(options.between_bytes_timeout, BETWEEN_BYTES_TIMEOUT),
    }
}

/// Sends a plain-HTTP request over HTTP/1.1 to one of `addrs`, the checked
/// addresses: no name is resolved here.
async fn send_plain(
    request: Request<WasiBody>,
    options: RequestOptions,
    addrs: &[SocketAddr],
) -> Sent {
    let connect_timeout = options.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
    let first_byte_timeout = options.first_byte_timeout.unwrap_or(FIRST_BYTE_TIMEOUT);
    let between_bytes = options
        .between_bytes_timeout
        .unwrap_or(BETWEEN_BYTES_TIMEOUT);

    let stream = tokio::time::timeout(connect_timeout, connect(addrs))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake::<_, WasiBody>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request line carries the path and query only (origin form); the host
    // is in the Host header, which the wasi:http implementation set.
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let request = Request::from_parts(parts, body);

    // The connection must be driven while waiting for the response head.
    let mut conn = Box::pin(conn);
    let mut conn_done = false;
    let response = {
        let send = sender.send_request(request);
        let wait = async {
            tokio::pin!(send);
            loop {
                tokio::select! {
                    response = &mut send => break response.map_err(Error::from),
                    ended = &mut conn, if !conn_done => {
                        conn_done = true;
                        ended?;
                    }
                }
            }
        };
        tokio::time::timeout(first_byte_timeout, wait)
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??
    };
    drop(sender);
    let io: IoFuture = if conn_done {
        Box::new(async { Ok(()) })
    } else {
        Box::new(async move { conn.await.map_err(Error::from) })
    };
    let response = response.map(|incoming| TimedBody::new(incoming, between_bytes).boxed_unsync());
    Ok((response, io))
}

/// Connects to the first address that answers.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, Error> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Connect(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address")
    })))
}

/// A response body that fails when the server pauses longer than `idle`
/// between two pieces.
struct TimedBody {
    incoming: Incoming,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(incoming: Incoming, idle: Duration) -> Self {
        Self {
            incoming,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::Grants;
    use crate::capabilities::net::HttpGrant;
    use crate::capabilities::tests::capture_warnings;
    use crate::plugin_runtime::state::PluginLabel;

    async fn access(grants: &[&str]) -> Arc<NetAccess> {
        let mut g = Grants::none();
        for url in grants {
            g = g.with_http(HttpGrant::parse(url).unwrap());
        }
        let label = Arc::new(PluginLabel {
            plugin: "probe@1.0.0".into(),
            pipeline: "cdr".into(),
        });
        NetAccess::prepare(label, Arc::new(g)).await
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_request_under_a_granted_base_url_goes_to_its_address() {
        let access = access(&["http://127.0.0.1:8123/x"]).await;
        let target = check(&access, &uri("http://127.0.0.1:8123/x/insert?q=1"))
            .await
            .ok()
            .unwrap();
        assert_eq!(target.addrs, vec!["127.0.0.1:8123".parse().unwrap()]);
    }

    #[tokio::test]
    async fn requests_outside_the_grants_are_denied_and_logged_without_the_query() {
        let access = access(&["http://127.0.0.1:8123/x"]).await;
        for denied in [
            "http://127.0.0.1:8124/x",
            "https://127.0.0.1:8123/x",
            "http://127.0.0.2:8123/x",
            "http://localhost:8123/x",
            "http://127.0.0.1:8123/y",
            "http://127.0.0.1:8123/x/../y",
        ] {
            let (result, logs) = capture_warnings(check(&access, &uri(denied))).await;
            assert!(
                matches!(result, Err(Error::HttpRequestDenied)),
                "{denied} passed"
            );
            assert!(logs.contains("plugin=\"probe@1.0.0\""), "{logs}");
            assert!(logs.contains("pipeline=\"cdr\""), "{logs}");
            assert!(
                logs.contains("granted=\"http://127.0.0.1:8123/x\""),
                "{logs}"
            );
            assert!(logs.contains("outside its grants"), "{logs}");
        }
        let (_, logs) =
            capture_warnings(check(&access, &uri("http://127.0.0.1:9/x?token=s3cret"))).await;
        assert!(logs.contains("url=\"http://127.0.0.1:9/x\""), "{logs}");
        assert!(!logs.contains("s3cret"), "{logs}");
    }

    #[test]
    fn timeouts_have_defaults_and_a_cap() {
        let o = limits(None);
        assert_eq!(o.connect_timeout, Some(CONNECT_TIMEOUT));
        assert_eq!(o.first_byte_timeout, Some(FIRST_BYTE_TIMEOUT));
        let o = limits(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(86400)),
            between_bytes_timeout: None,
        }));
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.first_byte_timeout, Some(MAX_TIMEOUT));
    }
}
