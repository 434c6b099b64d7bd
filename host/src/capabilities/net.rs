//! What the network grants (`http`, `tcp`) name, and the addresses their hosts
//! resolve to.
//!
//! A grant names a host, and the host resolves the name when a writer instance
//! is opened (at pipeline start, and again for every fresh instance after a
//! failure). A request or a connection passes only if it goes to one of those
//! addresses: a name that resolves elsewhere later (a DNS change, or rebinding)
//! is refused until the next instance resolves it again. A name that could not
//! be resolved at opening is resolved again when it is first needed.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Grants;
use crate::plugin_runtime::state::PluginLabel;

/// How long one name lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A host as a grant names it: a lowercase DNS name or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GrantHost {
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
    /// An IP address.
    Ip(IpAddr),
}

impl GrantHost {
    /// Parses a host as written in a URL or a `host:port` (IPv6 in brackets).
    fn parse(text: &str) -> Result<Self, String> {
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| format!("`{text}` is missing its closing `]`"))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| GrantHost::Ip(IpAddr::V6(ip)))
                .map_err(|_| format!("`{inner}` in brackets is not an IPv6 address"));
        }
        if text.is_empty() {
            return Err("the host is missing".to_string());
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(GrantHost::Ip(ip));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "`{text}` is not a host name or an IP address (an IPv6 address goes in brackets, like [::1])"
            ));
        }
        Ok(GrantHost::Name(name))
    }

    /// The host of a request (`example.com`, `127.0.0.1`, `[::1]`), in the same
    /// form, to compare with a grant's.
    pub(crate) fn of_request(text: &str) -> Option<Self> {
        Self::parse(text).ok()
    }
}

impl fmt::Display for GrantHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantHost::Name(name) => f.write_str(name),
            GrantHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            GrantHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Splits `host[:port]` (IPv6 hosts in brackets) and checks both parts. Without
/// a port, `default_port` applies, or it is an error when there is none.
fn host_and_port(text: &str, default_port: Option<u16>) -> Result<(GrantHost, u16), String> {
    let (host, port) = if text.starts_with('[') {
        match text.find(']') {
            Some(end) => {
                let (host, rest) = text.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if rest.is_empty() => (host, None),
                    None => return Err(format!("unexpected `{rest}` after `{host}`")),
                }
            }
            None => {
                return Err(format!(
                    "`{text}` is missing the closing `]` of its IPv6 address"
                ));
            }
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "`{text}`: an IPv6 address goes in brackets, like [::1]:6379"
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let host = GrantHost::parse(host)?;
    let port = match (port, default_port) {
        (Some(port), _) => {
            let n: u32 = port
                .parse()
                .map_err(|_| format!("`{port}` is not a port number; expected 1 to 65535"))?;
            match u16::try_from(n) {
                Ok(0) => return Err("port 0 cannot be connected to; expected 1 to 65535".into()),
                Ok(n) => n,
                Err(_) => return Err(format!("port {n} is out of range; expected 1 to 65535")),
            }
        }
        (None, Some(default)) => default,
        (None, None) => {
            return Err(format!(
                "`{text}` has no port; expected host:port, like \"127.0.0.1:6379\""
            ));
        }
    };
    Ok((host, port))
}

/// A TCP grant: connections to one host and port (`grants.tcp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpGrant {
    pub(crate) host: GrantHost,
    pub(crate) port: u16,
}

impl TcpGrant {
    /// Parses `host:port` (`"127.0.0.1:6379"`, `"redis.internal:6379"`,
    /// `"[::1]:6379"`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host, port) = host_and_port(text, None)?;
        Ok(Self { host, port })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for TcpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The scheme of an HTTP grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpScheme {
    /// `http://`, default port 80.
    Http,
    /// `https://`, default port 443.
    Https,
}

impl HttpScheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            HttpScheme::Http => 80,
            HttpScheme::Https => 443,
        }
    }
}

/// An HTTP grant: requests under one base URL (`grants.http`): same scheme,
/// host and port, and a path equal to the base URL's path or under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpGrant {
    pub(crate) scheme: HttpScheme,
    pub(crate) host: GrantHost,
    pub(crate) port: u16,
    /// The path prefix, without a trailing `/` (empty: every path).
    pub(crate) path: String,
}

impl HttpGrant {
    /// Parses a base URL: `http://` or `https://`, a host, an optional port (80
    /// or 443 by default) and an optional path prefix. No user, query or
    /// fragment.
    pub fn parse(text: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected a base URL like \"https://api.example.com/v1\"";
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!("`{text}` is not a URL; {EXPECTED}"));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => HttpScheme::Http,
            "https" => HttpScheme::Https,
            _ => {
                return Err(format!(
                    "unsupported scheme `{scheme}`; only http:// and https:// can be granted"
                ));
            }
        };
        if rest.contains('?') {
            return Err(format!(
                "a base URL has no query (`?…`): requests are matched on scheme, host, port and path; {EXPECTED}"
            ));
        }
        if rest.contains('#') {
            return Err(format!("a base URL has no fragment (`#…`); {EXPECTED}"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(
                "a base URL has no user or password (`user@host`); credentials belong in the plugin's config"
                    .to_string(),
            );
        }
        if authority.is_empty() {
            return Err(format!("`{text}` has no host; {EXPECTED}"));
        }
        let (host, port) = host_and_port(authority, Some(scheme.default_port()))?;
        if path
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || c == '\\')
        {
            return Err(format!(
                "the path `{path}` has spaces, control characters or `\\`; percent-encode them"
            ));
        }
        if has_dot_segment(path) {
            return Err(format!(
                "the path `{path}` has `.` or `..` segments; write the path it means"
            ));
        }
        Ok(Self {
            scheme,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> HttpScheme {
        self.scheme
    }

    /// The port (80 or 443 when the URL gives none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path prefix, without a trailing `/` (empty for the whole host).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether a request to `path` on this grant's scheme, host and port is
    /// under its path. `/v1` covers `/v1` and `/v1/…`, not `/v10`. Paths with
    /// dot segments or encoded slashes are never covered: a server could
    /// resolve them to a path outside the prefix.
    pub(crate) fn covers_path(&self, path: &str) -> bool {
        if has_dot_segment(path) || path.to_ascii_lowercase().contains("%2f") || path.contains('\\')
        {
            return false;
        }
        let path = if path.is_empty() { "/" } else { path };
        self.path.is_empty()
            || path == self.path
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}{}",
            self.scheme.as_str(),
            self.host,
            self.port,
            if self.path.is_empty() {
                "/"
            } else {
                &self.path
            }
        )
    }
}

/// Whether a path has a `.` or `..` segment, also percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// Resolves a host to its addresses (an IP is its own), IPv4-mapped IPv6
/// addresses made IPv4.
pub(crate) async fn lookup(host: &GrantHost) -> std::io::Result<Vec<IpAddr>> {
    let name = match host {
        GrantHost::Ip(ip) => return Ok(vec![ip.to_canonical()]),
        GrantHost::Name(name) => name.as_str(),
    };
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("looking up {name} took more than {LOOKUP_TIMEOUT:?}"),
            )
        })??;
    let mut ips: Vec<IpAddr> = Vec::new();
    for addr in found {
        let ip = addr.ip().to_canonical();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// What one writer instance may reach over the network: its grants, the
/// addresses their hosts resolved to, and its names for the log. Shared by the
/// HTTP hook and the socket check of the instance.
pub(crate) struct NetAccess {
    pub(crate) label: Arc<PluginLabel>,
    pub(crate) grants: Arc<Grants>,
    resolved: Mutex<HashMap<GrantHost, Arc<Vec<IpAddr>>>>,
}

impl NetAccess {
    /// Resolves every host the grants name. A name that does not resolve now is
    /// logged and resolved again when it is first needed.
    pub(crate) async fn prepare(label: Arc<PluginLabel>, grants: Arc<Grants>) -> Arc<Self> {
        let mut hosts: Vec<&GrantHost> = grants.http.iter().map(|g| &g.host).collect();
        hosts.extend(grants.tcp.iter().map(|g| &g.host));
        let mut resolved = HashMap::new();
        for host in hosts {
            if resolved.contains_key(host) {
                continue;
            }
            match lookup(host).await {
                Ok(ips) if !ips.is_empty() => {
                    resolved.insert(host.clone(), Arc::new(ips));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    plugin = &*label.plugin,
                    pipeline = &*label.pipeline,
                    host = %host,
                    error = %e,
                    "a granted host does not resolve; trying again when the plugin uses it"
                ),
            }
        }
        Arc::new(Self {
            label,
            grants: grants.clone(),
            resolved: Mutex::new(resolved),
        })
    }

    /// No host resolved: for a dry run, which reaches nothing.
    pub(crate) fn unresolved(label: Arc<PluginLabel>, grants: Arc<Grants>) -> Arc<Self> {
        Arc::new(Self {
            label,
            grants,
            resolved: Mutex::new(HashMap::new()),
        })
    }

    /// The addresses `host` resolved to when the instance was opened; resolved
    /// now if it did not resolve then.
    pub(crate) async fn granted_addresses(&self, host: &GrantHost) -> Arc<Vec<IpAddr>> {
        if let Some(ips) = self.lock().get(host) {
            return ips.clone();
        }
        match lookup(host).await {
            Ok(ips) if !ips.is_empty() => {
                let ips = Arc::new(ips);
                self.lock().insert(host.clone(), ips.clone());
                ips
            }
            _ => Arc::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GrantHost, Arc<Vec<IpAddr>>>> {
        self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The HTTP grants, for the log.
    pub(crate) fn http_granted(&self) -> String {
        list(&self.grants.http)
    }

    /// The TCP grants, for the log.
    pub(crate) fn tcp_granted(&self) -> String {
        list(&self.grants.tcp)
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_grants_parse_with_default_ports_and_a_path_prefix() {
        let g = HttpGrant::parse("http://127.0.0.1:8123").unwrap();
        assert_eq!(g.to_string(), "http://127.0.0.1:8123/");
        let g = HttpGrant::parse("HTTPS://API.Example.com/v1/").unwrap();
        assert_eq!(g.to_string(), "https://api.example.com:443/v1");
        assert_eq!(g.path(), "/v1");
        let g = HttpGrant::parse("http://[::1]/x").unwrap();
        assert_eq!(g.to_string(), "http://[::1]:80/x");
    }

    #[test]
    fn http_grants_refuse_what_a_base_url_cannot_have() {
        let err = |s: &str| HttpGrant::parse(s).unwrap_err();
        assert!(err("ftp://host").contains("unsupported scheme `ftp`"));
        assert!(err("127.0.0.1:8123").contains("not a URL"));
        assert!(err("http://host/x?token=1").contains("no query"));
        assert!(err("http://host/x#top").contains("no fragment"));
        assert!(err("http://user:pw@host").contains("no user or password"));
        assert!(err("http://host:0").contains("port 0"));
        assert!(err("http://host:99999").contains("out of range"));
        assert!(err("http:///x").contains("no host"));
        assert!(err("http://ho st").contains("not a host name"));
        assert!(err("http://host/a/../b").contains("`..`"));
    }

    #[test]
    fn http_paths_are_covered_by_segment() {
        let g = HttpGrant::parse("http://h/v1").unwrap();
        assert!(g.covers_path("/v1"));
        assert!(g.covers_path("/v1/"));
        assert!(g.covers_path("/v1/insert"));
        assert!(!g.covers_path("/v10"));
        assert!(!g.covers_path("/"));
        assert!(!g.covers_path("/v1/../admin"));
        assert!(!g.covers_path("/v1/%2E%2e/admin"));
        assert!(!g.covers_path("/v1/..%2fadmin"));
        let root = HttpGrant::parse("http://h").unwrap();
        assert!(root.covers_path("/anything"));
        assert!(root.covers_path(""));
    }

    #[test]
    fn tcp_grants_are_host_and_port() {
        assert_eq!(
            TcpGrant::parse("Redis.Internal:6379").unwrap().to_string(),
            "redis.internal:6379"
        );
        assert_eq!(
            TcpGrant::parse("[::1]:6379").unwrap().to_string(),
            "[::1]:6379"
        );
        let err = |s: &str| TcpGrant::parse(s).unwrap_err();
        assert!(err("127.0.0.1").contains("has no port"));
        assert!(err("127.0.0.1:0").contains("port 0"));
        assert!(err("127.0.0.1:http").contains("not a port number"));
        assert!(err("::1:6379").contains("in brackets"));
        assert!(err(":6379").contains("host is missing"));
    }

    #[tokio::test]
    async fn ip_hosts_resolve_to_themselves() {
        let ips = lookup(&GrantHost::parse("127.0.0.1").unwrap())
            .await
            .unwrap();
        assert_eq!(ips, vec![IpAddr::from([127, 0, 0, 1])]);
        let mapped = lookup(&GrantHost::parse("[::ffff:10.0.0.1]").unwrap())
            .await
            .unwrap();
        assert_eq!(mapped, vec![IpAddr::from([10, 0, 0, 1])]);
    }
}
