//! The WASI context every plugin gets: nothing ambient.
//!
//! Plugins built with Rust's std for `wasm32-wasip1`/`wasip2` import WASI
//! interfaces whether or not they use them, so the host links WASI but hands out a
//! context with no preopened directory, no environment variables, no arguments, no
//! sockets and frozen clocks. Only randomness is real (hash maps need it). Whatever
//! the plugin writes to stdout or stderr is kept (the last few KiB) so that a trap
//! can be reported with the plugin's own last words.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx};

/// How much of a plugin's stdout/stderr is kept.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// A locked-down WASI context whose stdout and stderr go to `output`.
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
