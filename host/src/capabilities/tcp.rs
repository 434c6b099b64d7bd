//! Outbound TCP for writers: `wasi:sockets`, with every address checked against
//! the writer's `tcp` grants.
//!
//! A writer with `tcp` grants may look names up and open TCP connections (no
//! UDP). A connect passes when its port is a granted port and its address is
//! one the grant's host resolved to when the instance was opened
//! ([`super::net`]). The guest connects to the very address that was checked,
//! so there is nothing to re-resolve. Binding (other than the implicit bind of
//! a connect) and listening are refused. A refusal is
//! `error-code::access-denied` for the guest and a `warn` line in the host's log.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;

use super::dry_run::Withheld;
use super::net::{GrantHost, NetAccess};

/// The check `WasiCtxBuilder::socket_addr_check` takes.
pub(crate) type SocketCheck = Box<
    dyn Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>>
        + Send
        + Sync,
>;

/// The socket check of one writer instance.
pub(crate) fn socket_check(access: Arc<NetAccess>) -> SocketCheck {
    Box::new(move |addr, usage| {
        let access = access.clone();
        // The check runs in a task of its own: wasmtime wants a `Sync` future,
        // and a join handle is one whatever the lookup inside it is.
        let task = tokio::spawn(async move { permits(&access, addr, usage).await });
        Box::pin(async move { task.await.unwrap_or(false) })
    })
}

async fn permits(access: &NetAccess, addr: SocketAddr, usage: SocketAddrUse) -> bool {
    let ip = addr.ip().to_canonical();
    let why = match usage {
        // A connect first checks the implicit bind the OS does: to the wildcard
        // address and an ephemeral port. That one is fine.
        SocketAddrUse::TcpBind if ip.is_unspecified() && addr.port() == 0 => return true,
        SocketAddrUse::TcpConnect if access.grants.dry_run.is_some() => {
            // Nothing is reached, and nothing looked up: an address on a
            // granted port counts as granted when the grant names a host.
            let granted = access.grants.tcp.iter().any(|g| {
                g.port == addr.port()
                    && match &g.host {
                        GrantHost::Ip(granted) => granted.to_canonical() == ip,
                        GrantHost::Name(_) => true,
                    }
            });
            if let Some(run) = access.grants.dry_run.as_ref().filter(|_| granted) {
                run.withhold(Withheld::Tcp(addr.to_string()));
                return false;
            }
            "no tcp grant has this address and port"
        }
        SocketAddrUse::TcpConnect => {
            for grant in access.grants.tcp.iter().filter(|g| g.port == addr.port()) {
                if access.granted_addresses(&grant.host).await.contains(&ip) {
                    return true;
                }
            }
            "no tcp grant has this address and port"
        }
        SocketAddrUse::TcpBind => "binding to an address is not granted",
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => "listening is not granted",
        _ => "UDP is not granted",
    };
    tracing::warn!(
        plugin = &*access.label.plugin,
        pipeline = &*access.label.pipeline,
        address = %addr,
        operation = ?usage,
        granted = access.tcp_granted(),
        reason = why,
        "plugin used a socket outside its grants; denied"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::Grants;
    use crate::capabilities::net::TcpGrant;
    use crate::capabilities::tests::capture_warnings;
    use crate::plugin_runtime::state::PluginLabel;

    async fn access(grants: &[&str]) -> Arc<NetAccess> {
        let mut g = Grants::none();
        for grant in grants {
            g = g.with_tcp(TcpGrant::parse(grant).unwrap());
        }
        let label = Arc::new(PluginLabel {
            plugin: "probe@1.0.0".into(),
            pipeline: "cdr".into(),
        });
        NetAccess::prepare(label, Arc::new(g)).await
    }

    #[tokio::test]
    async fn connects_pass_only_to_granted_addresses_and_ports() {
        let access = access(&["127.0.0.1:6379"]).await;
        let check = socket_check(access);
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check(addr("127.0.0.1:6379"), SocketAddrUse::TcpConnect).await);
        assert!(check(addr("[::ffff:127.0.0.1]:6379"), SocketAddrUse::TcpConnect).await);
        assert!(check(addr("0.0.0.0:0"), SocketAddrUse::TcpBind).await);

        let (allowed, logs) =
            capture_warnings(check(addr("127.0.0.1:6380"), SocketAddrUse::TcpConnect)).await;
        assert!(!allowed);
        assert!(logs.contains("plugin=\"probe@1.0.0\""), "{logs}");
        assert!(logs.contains("pipeline=\"cdr\""), "{logs}");
        assert!(logs.contains("address=127.0.0.1:6380"), "{logs}");
        assert!(logs.contains("granted=\"127.0.0.1:6379\""), "{logs}");

        assert!(!check(addr("10.0.0.1:6379"), SocketAddrUse::TcpConnect).await);
        assert!(!check(addr("127.0.0.1:6379"), SocketAddrUse::TcpBind).await);
        assert!(!check(addr("0.0.0.0:0"), SocketAddrUse::TcpListen).await);
        assert!(!check(addr("127.0.0.1:6379"), SocketAddrUse::UdpSend).await);
    }
}
