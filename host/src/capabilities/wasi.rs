//! The WASI context of a plugin instance: nothing ambient, and what its grants give.
//!
//! Plugins built with Rust's std for `wasm32-wasip1`/`wasip2` import WASI
//! interfaces whether or not they use them, so the host links WASI for every
//! plugin. With no grant the context has no preopened directory, no environment
//! variables, no arguments, no sockets and frozen clocks; only randomness is real
//! (hash maps need it). A writer's grants add to that ([`ctx`]): a granted
//! directory is preopened as [`DATA_DIR`], `tcp` grants allow TCP and name
//! lookups through the socket check of [`super::tcp`], and any network or
//! directory grant gives real clocks (timeouts, timestamps, file times).
//! Whatever the plugin writes to stdout or stderr is kept (the last few KiB) so
//! that a trap can be reported with the plugin's own last words.
//!
//! A writer with a directory grant runs its filesystem calls on the thread that
//! calls it ([`files_inline`]) instead of wasmtime-wasi's default, a hop to
//! tokio's blocking pool per call (about 85 us each, several per batch); its
//! calls then run inside `tokio::task::block_in_place`
//! (`plugin_runtime::instance`), so a slow or hung `fsync` holds that call's
//! thread, never a worker of the runtime.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx};

use super::Grants;
use super::net::NetAccess;

/// How much of a plugin's stdout/stderr is kept.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// Where a writer's granted directory appears in the guest.
pub const DATA_DIR: &str = "/data";

/// A locked-down WASI context whose stdout and stderr go to `output`: what
/// sources get, and writers with no grant.
pub fn locked_down_ctx(output: &OutputTail) -> WasiCtx {
    WasiCtx::builder()
        .stdout(output.clone())
        .stderr(output.clone())
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Whether a writer instance with `grants`, set up on the current thread, runs
/// its filesystem calls on the calling thread: with a directory grant, on a
/// multi-thread tokio runtime, where its calls can go through
/// `tokio::task::block_in_place` (`plugin_runtime::can_block_in_place`). On a
/// current-thread runtime (tests, tools) they hop to the blocking pool as
/// wasmtime-wasi does by default: blocking the only thread would stop
/// everything else.
///
/// Only filesystem calls change (`wasi:filesystem` descriptors and the
/// directory; `wasi:http`, `wasi:sockets` and the `postgres` capability are
/// async in any case), and only for writers with a directory grant.
pub(crate) fn files_inline(grants: &Grants) -> bool {
    grants.directory.is_some() && crate::plugin_runtime::can_block_in_place()
}

/// The WASI context of a writer instance with `grants`; `net` checks its
/// socket addresses. Creates the granted directory if it is missing; the error
/// names it if that, or opening it, fails. With `files_inline` (see
/// [`files_inline`]) filesystem calls run on the calling thread.
pub(crate) fn ctx(
    output: &OutputTail,
    grants: &Grants,
    net: &Arc<NetAccess>,
    files_inline: bool,
) -> Result<WasiCtx, String> {
    let mut builder = WasiCtx::builder();
    builder
        .stdout(output.clone())
        .stderr(output.clone())
        .allow_udp(false)
        .allow_blocking_current_thread(files_inline);
    if !grants.gives_real_clocks() {
        builder.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
    }
    if grants.tcp.is_empty() {
        builder.allow_tcp(false).allow_ip_name_lookup(false);
    } else {
        builder
            .allow_tcp(true)
            // A dry run looks no name up: the lookup fails, which the SDK
            // reads as a connection error (retriable).
            .allow_ip_name_lookup(grants.dry_run.is_none())
            .socket_addr_check(super::tcp::socket_check(net.clone()));
    }
    if let Some(dir) = &grants.directory {
        let (dir, perms) = match &grants.dry_run {
            // Seen, never changed nor created.
            Some(run) => (run.directory_view(dir)?, FsPerms::ReadOnly),
            None => {
                super::prepare_directory(dir)?;
                (dir.clone(), FsPerms::ReadWrite)
            }
        };
        builder.preopened_dir(&dir, DATA_DIR, perms).map_err(|e| {
            format!(
                "cannot open the granted directory {} for the plugin: {e:#}",
                dir.display()
            )
        })?;
    }
    Ok(builder.build())
}

/// A clock that always says the Unix epoch: plugins get no clock unless granted.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The last few KiB a plugin wrote to stdout or stderr. Writing never fails (a
/// full buffer drops its oldest bytes), so a chatty plugin cannot trap itself.
#[derive(Clone, Default)]
pub struct OutputTail(Arc<Mutex<VecDeque<u8>>>);

impl OutputTail {
    /// The kept output as text, trimmed; `None` when the plugin wrote nothing.
    pub fn text(&self) -> Option<String> {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = buf.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).trim().to_string();
        (!text.is_empty()).then_some(text)
    }

    /// Forgets what was kept (a new call starts).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = &bytes[bytes.len().saturating_sub(OUTPUT_TAIL_BYTES)..];
        let overflow = (buf.len() + bytes.len()).saturating_sub(OUTPUT_TAIL_BYTES);
        buf.drain(..overflow);
        buf.extend(bytes);
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for OutputTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tail_keeps_only_the_last_bytes() {
        let tail = OutputTail::default();
        assert_eq!(tail.text(), None);
        tail.push(&vec![b'a'; OUTPUT_TAIL_BYTES]);
        tail.push(b"panicked at src/lib.rs:3");
        let text = tail.text().unwrap();
        assert_eq!(text.len(), OUTPUT_TAIL_BYTES);
        assert!(text.ends_with("panicked at src/lib.rs:3"));
        tail.clear();
        assert_eq!(tail.text(), None);
    }
}
