//! What a guest's store holds: its WASI context (no capabilities), its memory cap, its log budget and
//! the tail of what it printed, and the host side of the `log` import.
//!
//! It does not make instances or run calls (`instance`) or build the linker (`runtime`); both build on
//! [`GuestState`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{LogHost, LogLevel};

/// Log lines one call may write; more are counted and dropped so a chatty guest cannot flood the log.
pub(super) const LOG_LINES_PER_CALL: u32 = 16;
/// Longest log line kept from a guest, in bytes.
const LOG_LINE_MAX: usize = 1024;
/// Bytes of the guest's stdout/stderr kept (the most recent ones): enough for a panic message or a
/// JavaScript exception, small enough that a guest printing in a loop costs nothing but this buffer.
const OUTPUT_TAIL: usize = 2048;

/// Everything a guest's store holds.
pub struct GuestState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) memory: MemoryCap,
    pub(super) tenant: String,
    pub(super) log_budget: u32,
    /// Epoch slices the current call may still run before it is interrupted.
    pub(super) slices_left: u64,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl super::bindings::pgws::guest::types::Host for GuestState {}

impl LogHost for GuestState {
    fn log(&mut self, level: LogLevel, message: String) {
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        let mut message = message;
        truncate_utf8(&mut message, LOG_LINE_MAX);
        let tenant = self.tenant.as_str();
        match level {
            LogLevel::Debug => tracing::debug!(tenant, guest_log = %message),
            LogLevel::Info => tracing::info!(tenant, guest_log = %message),
            LogLevel::Warn => tracing::warn!(tenant, guest_log = %message),
            LogLevel::Error => tracing::error!(tenant, guest_log = %message),
        }
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Caps an instance's linear memory and tables, and remembers that it refused a growth, so a
/// failed call is classified by what happened rather than by the text of an error.
pub(super) struct MemoryCap {
    max_bytes: usize,
    /// Set when a growth was refused; cleared before each call.
    pub(super) refused: bool,
}

impl MemoryCap {
    pub(super) fn new(max_bytes: usize) -> Self {
        MemoryCap {
            max_bytes,
            refused: false,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            wasmtime::bail!("guest memory would grow to {desired} bytes, over its cap");
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far past any real guest.
        if desired > 1_000_000 {
            self.refused = true;
            wasmtime::bail!("guest table would grow to {desired} entries, over its cap");
        }
        Ok(true)
    }
}

/// The last [`OUTPUT_TAIL`] bytes a guest wrote to stdout or stderr. A guest's panic handler or
/// uncaught-exception printer writes there, so a trap's log line can say what the guest said.
#[derive(Clone, Default)]
pub struct OutputTail(Arc<Mutex<VecDeque<u8>>>);

impl OutputTail {
    pub(super) fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let keep = bytes.len().min(OUTPUT_TAIL);
        let overflow = (tail.len() + keep).saturating_sub(OUTPUT_TAIL);
        tail.drain(..overflow);
        tail.extend(&bytes[bytes.len() - keep..]);
    }

    /// What the guest printed since the last call to this, trimmed, lossily decoded.
    pub fn take(&self) -> String {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = tail.drain(..).collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputTail {
    async fn ready(&mut self) {}
}

impl OutputStream for OutputTail {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: old bytes make way for new ones.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for OutputTail {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tail_keeps_the_most_recent_bytes() {
        let tail = OutputTail::default();
        tail.push(b"first line\n");
        tail.push(&vec![b'x'; OUTPUT_TAIL]);
        tail.push(b"panicked at 'boom'");
        let text = tail.take();
        assert_eq!(text.len(), OUTPUT_TAIL);
        assert!(text.ends_with("panicked at 'boom'"), "{text}");
        assert!(!text.contains("first line"));
        assert_eq!(tail.take(), "", "taken once");
    }
}
