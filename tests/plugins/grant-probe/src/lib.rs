//! A writer for the grant tests. `open` reads a JSON config and tries each action
//! it names, in this order:
//!
//! - `"http": "http://127.0.0.1:PORT/x"`: a GET through `wasi:http`; needs a 200;
//! - `"tcp": "127.0.0.1:PORT"`: a TCP connect through `wasi:sockets`;
//! - `"file": "/data/a.txt"`: writes the file with `std::fs` and reads it back;
//! - `"postgres": "name"`: opens the granted Postgres connection `name`, and
//!   with `"sql": "..."` runs that on it (`batch_execute`; a `pg_sleep` makes
//!   a store call that hangs);
//! - `"clock": "real"` or `"frozen"`: what `SystemTime::now()` must look like;
//! - `"spin": true`: then loops forever (the host's time limit must stop it).
//!
//! `open` succeeds when every action did; otherwise it fails with one
//! `kind: typed error` per failed action, joined by `; `
//! (`http: HttpRequestDenied; tcp: access-denied`), which the tests match.
//! Because it calls `wasi:http` and `wasi:sockets` itself, its component imports
//! both, whatever its config: it is also the writer that is refused when its
//! grants give no `http` or `tcp`.

use sluice_plugin_sdk::{PluginError, RowBatch, RowRejection, Schema, Writer};

/// The probe: nothing to keep once opened.
pub struct Probe;

impl Writer for Probe {
    fn open(config: &str, _schema: &Schema) -> Result<Self, PluginError> {
        let config: serde_json::Value = serde_json::from_str(config)
            .map_err(|e| PluginError::InvalidConfig(format!("not JSON: {e}")))?;
        let text = |key: &str| config.get(key).and_then(|v| v.as_str());
        let mut failed = Vec::new();
        if let Some(url) = text("http")
            && let Err(e) = net::http_get(url)
        {
            failed.push(format!("http: {e}"));
        }
        if let Some(addr) = text("tcp")
            && let Err(e) = net::tcp_connect(addr)
        {
            failed.push(format!("tcp: {e}"));
        }
        if let Some(path) = text("file")
            && let Err(e) = file(path)
        {
            failed.push(format!("file: {e}"));
        }
        if let Some(name) = text("postgres") {
            match sluice_plugin_sdk::postgres::Connection::open(name) {
                Err(e) => failed.push(format!("postgres: {:?}: {}", e.kind, e.message)),
                Ok(connection) => {
                    if let Some(sql) = text("sql")
                        && let Err(e) = connection.batch_execute(sql)
                    {
                        failed.push(format!("sql: {:?}: {}", e.kind, e.message));
                    }
                }
            }
        }
        if let Some(expected) = text("clock") {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let seen = if secs == 0 { "frozen" } else { "real" };
            if seen != expected {
                failed.push(format!("clock: {seen} ({secs}s since the epoch)"));
            }
        }
        if config.get("spin") == Some(&serde_json::Value::Bool(true)) {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if failed.is_empty() {
            Ok(Probe)
        } else {
            Err(PluginError::Fatal(failed.join("; ")))
        }
    }

    fn write(&mut self, _batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
        Ok(Vec::new())
    }
}

/// Writes a file and reads it back.
fn file(path: &str) -> Result<(), String> {
    let describe = |e: std::io::Error| format!("{:?}: {e}", e.kind());
    std::fs::write(path, b"written by grant-probe").map_err(describe)?;
    let back = std::fs::read(path).map_err(describe)?;
    if back != b"written by grant-probe" {
        return Err("read back something else".to_string());
    }
    Ok(())
}

#[cfg(target_arch = "wasm32")]
mod net {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    use wasip2::sockets::network::{
        ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress,
        Ipv6SocketAddress,
    };
    use wasip2::sockets::{instance_network, ip_name_lookup, tcp_create_socket};

    /// A GET; `Ok` on a 200. The error is the wasi:http error code's name
    /// (`HttpRequestDenied`), or the status.
    pub fn http_get(url: &str) -> Result<(), String> {
        let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let request = OutgoingRequest::new(Fields::new());
        let scheme = match scheme {
            "https" => Scheme::Https,
            _ => Scheme::Http,
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| "bad scheme")?;
        request
            .set_authority(Some(authority))
            .map_err(|_| "bad authority")?;
        request
            .set_path_with_query(Some(path))
            .map_err(|_| "bad path")?;
        let name = |e: &outgoing_handler::ErrorCode| {
            format!("{e:?}")
                .trim_start_matches("ErrorCode::")
                .to_string()
        };
        let pending = outgoing_handler::handle(request, None).map_err(|e| name(&e))?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(name(&e)),
            Some(Err(())) => return Err("response taken twice".into()),
            None => return Err("no response after blocking".into()),
        };
        match response.status() {
            200 => Ok(()),
            status => Err(format!("status {status}")),
        }
    }

    /// Connects to `host:port` (a name is looked up first). The error is the
    /// wasi:sockets error code's name (`access-denied`).
    pub fn tcp_connect(addr: &str) -> Result<(), String> {
        let (host, port) = addr.rsplit_once(':').ok_or("expected host:port")?;
        let port: u16 = port.parse().map_err(|_| "bad port")?;
        let network = instance_network::instance_network();
        let ip = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                let o = ip.octets();
                IpAddress::Ipv4((o[0], o[1], o[2], o[3]))
            }
            Ok(std::net::IpAddr::V6(ip)) => {
                let s = ip.segments();
                IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
            }
            Err(_) => {
                let found = ip_name_lookup::resolve_addresses(&network, host)
                    .map_err(|e| format!("lookup: {}", e.name()))?;
                loop {
                    match found.resolve_next_address() {
                        Ok(Some(ip)) => break ip,
                        Ok(None) => return Err(format!("lookup: {host} has no address")),
                        Err(ErrorCode::WouldBlock) => found.subscribe().block(),
                        Err(e) => return Err(format!("lookup: {}", e.name())),
                    }
                }
            }
        };
        let (family, remote) = match ip {
            IpAddress::Ipv4(address) => (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address }),
            ),
            IpAddress::Ipv6(address) => (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port,
                    flow_info: 0,
                    address,
                    scope_id: 0,
                }),
            ),
        };
        let socket = tcp_create_socket::create_tcp_socket(family).map_err(|e| e.name())?;
        socket
            .start_connect(&network, remote)
            .map_err(|e| e.name())?;
        let ready = socket.subscribe();
        loop {
            match socket.finish_connect() {
                Ok(_streams) => return Ok(()),
                Err(ErrorCode::WouldBlock) => ready.block(),
                Err(e) => return Err(e.name().to_string()),
            }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod net {
    const NATIVE: &str = "grant-probe tries the network only as a WebAssembly component";

    pub fn http_get(_url: &str) -> Result<(), String> {
        Err(NATIVE.to_string())
    }

    pub fn tcp_connect(_addr: &str) -> Result<(), String> {
        Err(NATIVE.to_string())
    }
}

sluice_plugin_sdk::export_writer!(Probe);
