//! One warm guest instance and the checks around each call into it.
//!
//! Owns the per-instance [`Store`] (WASI context with no capabilities, memory limiter, log budget, the
//! tail of what the guest printed) and turns one call into either a checked [`Verdict`] or a
//! [`CallFailure`]. Calls are async: every epoch tick the guest yields its thread, so a slow guest
//! shares the guest threads with every other tenant instead of holding one, and a call that has run
//! for its whole deadline is interrupted. After a failure the instance must not be entered again: the
//! caller drops it and makes a new one. It does not choose which module a tenant runs (`registry`)
//! or what happens to the verdict (`workers`, `deliver`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{
    Authorization, AuthorizerExport, ClientHandlerExport, ClientMessageRef, ClientVerdict,
    ConnectionRef, HandlerExport, LogHost, LogLevel, NotificationRef, Verdict,
};
use super::runtime::{GuestLimits, GuestModule, GuestRuntime};

/// Log lines one call may write; more are counted and dropped so a chatty guest cannot flood the log.
const LOG_LINES_PER_CALL: u32 = 16;
/// Longest log line kept from a guest, in bytes.
const LOG_LINE_MAX: usize = 1024;
/// Bytes of the guest's stdout/stderr kept (the most recent ones): enough for a panic message or a
/// JavaScript exception, small enough that a guest printing in a loop costs nothing but this buffer.
const OUTPUT_TAIL: usize = 2048;

/// Everything a guest's store holds.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    tenant: String,
    log_budget: u32,
    /// Epoch slices the current call may still run before it is interrupted.
    slices_left: u64,
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
struct MemoryCap {
    max_bytes: usize,
    refused: bool,
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
    fn push(&self, bytes: &[u8]) {
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

/// Why a call produced no usable verdict. The variant name is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    #[error("guest ran past its {0:?} deadline")]
    Timeout(std::time::Duration),
    #[error("guest exceeded its memory cap")]
    Memory,
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("guest output is {size} bytes, over the {max}-byte cap")]
    OutputTooLarge { size: usize, max: usize },
    #[error("guest routed to {count} topics, over the cap of {max}")]
    TooManyRoutes { count: usize, max: usize },
    #[error("could not instantiate guest: {0}")]
    Instantiate(String),
    #[error("guest does not export `{0}`")]
    NotExported(&'static str),
}

impl CallFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Timeout(_) => "timeout",
            CallFailure::Memory => "memory",
            CallFailure::Trap(_) => "trap",
            CallFailure::OutputTooLarge { .. } => "output_too_large",
            CallFailure::TooManyRoutes { .. } => "too_many_routes",
            CallFailure::Instantiate(_) => "instantiate",
            CallFailure::NotExported(_) => "not_exported",
        }
    }

    /// Whether the instance may be entered again. Output-cap failures happen after a clean return.
    pub fn poisons_instance(&self) -> bool {
        !matches!(
            self,
            CallFailure::OutputTooLarge { .. }
                | CallFailure::TooManyRoutes { .. }
                | CallFailure::NotExported(_)
        )
    }
}

/// A live instance of one guest module, reused call after call.
pub struct GuestInstance {
    store: Store<GuestState>,
    handler: HandlerExport,
    client_handler: Option<ClientHandlerExport>,
    authorizer: Option<AuthorizerExport>,
    output: OutputTail,
    slices: u64,
}

impl GuestInstance {
    pub async fn new(
        runtime: &GuestRuntime,
        module: &GuestModule,
        tenant: &str,
    ) -> wasmtime::Result<Self> {
        let output = OutputTail::default();
        // No preopened directories, no environment, no arguments, no sockets, no name lookup:
        // WASI calls that need any of them fail inside the guest with an error code. Output goes
        // to a small tail buffer that a failure's log line shows.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output.clone())
            .stderr(output.clone())
            .build();
        let slices = runtime.deadline_slices();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                max_bytes: runtime.limits.memory_bytes,
                refused: false,
            },
            tenant: tenant.to_owned(),
            log_budget: LOG_LINES_PER_CALL,
            slices_left: slices,
        };
        let mut store = Store::new(&runtime.engine, state);
        store.limiter(|s| &mut s.memory);
        // Every tick the guest gives its thread back to the scheduler, so other tenants' calls run
        // in between; once the call has used its whole deadline it is interrupted (a trap).
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.slices_left == 0 {
                return Ok(UpdateDeadline::Interrupt);
            }
            state.slices_left -= 1;
            // wasmtime's own yield wakes the task and returns pending once: the executor puts it
            // at the back of its queue. (tokio's `yield_now` would instead wait for the runtime's
            // next park, which never comes when a compile's trial instance is driven by a plain
            // `block_on` on a runtime thread.)
            Ok(UpdateDeadline::Yield(1))
        });
        let instance = module.pre.instantiate_async(&mut store).await?;
        let handler = module.handler.load(&mut store, &instance)?;
        let client_handler = match &module.client_handler {
            Some(indices) => Some(indices.load(&mut store, &instance)?),
            None => None,
        };
        let authorizer = match &module.authorizer {
            Some(indices) => Some(indices.load(&mut store, &instance)?),
            None => None,
        };
        Ok(GuestInstance {
            store,
            handler,
            client_handler,
            authorizer,
            output,
            slices,
        })
    }

    /// What the guest wrote to stdout/stderr most recently (and forgets it).
    pub fn take_output(&self) -> String {
        self.output.take()
    }

    /// Arms the deadline and the log budget for one call.
    fn arm(&mut self) {
        self.store.set_epoch_deadline(1);
        let state = self.store.data_mut();
        state.slices_left = self.slices;
        state.memory.refused = false;
        state.log_budget = LOG_LINES_PER_CALL;
    }

    fn classify(&self, error: wasmtime::Error, limits: &GuestLimits) -> CallFailure {
        if self.store.data().memory.refused {
            return CallFailure::Memory;
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallFailure::Timeout(limits.timeout),
            Some(Trap::AllocationTooLarge) => CallFailure::Memory,
            _ => CallFailure::Trap(format!("{error:#}")),
        }
    }

    /// Calls `on-client-message` and checks the output cap.
    pub async fn on_client_message(
        &mut self,
        runtime: &GuestRuntime,
        m: &ClientMessageRef<'_>,
    ) -> Result<ClientVerdict, CallFailure> {
        self.arm();
        let export = self
            .client_handler
            .as_ref()
            .ok_or(CallFailure::NotExported("on-client-message"))?;
        let verdict: ClientVerdict = export
            .call_on_client_message(&mut self.store, &m.to_wit())
            .await
            .map_err(|e| self.classify(e, &runtime.limits))?
            .into();
        let size = match &verdict {
            ClientVerdict::Replace(b) | ClientVerdict::Reject(b) => b.len(),
            ClientVerdict::Accept => 0,
        };
        cap_output(size, &runtime.limits)?;
        Ok(verdict)
    }

    /// Calls `authorize` and checks the output cap (a denial's reason goes to the log and the client).
    pub async fn authorize(
        &mut self,
        runtime: &GuestRuntime,
        c: &ConnectionRef<'_>,
    ) -> Result<Authorization, CallFailure> {
        self.arm();
        let export = self
            .authorizer
            .as_ref()
            .ok_or(CallFailure::NotExported("authorize"))?;
        let answer: Authorization = export
            .call_authorize(&mut self.store, &c.to_wit())
            .await
            .map_err(|e| self.classify(e, &runtime.limits))?
            .into();
        if let Authorization::Deny(reason) = &answer {
            cap_output(reason.len(), &runtime.limits)?;
        }
        Ok(answer)
    }

    /// Calls `on-notify` and checks the verdict against the output caps.
    pub async fn on_notify(
        &mut self,
        runtime: &GuestRuntime,
        n: &NotificationRef<'_>,
    ) -> Result<Verdict, CallFailure> {
        self.arm();
        let verdict = self
            .handler
            .call_on_notify(&mut self.store, &n.to_wit())
            .await
            .map_err(|e| self.classify(e, &runtime.limits))?;
        check_output(Verdict::from(verdict), &runtime.limits)
    }
}

/// The one output-size rule every hook's answer is held to.
fn cap_output(size: usize, limits: &GuestLimits) -> Result<(), CallFailure> {
    if size > limits.max_output {
        return Err(CallFailure::OutputTooLarge {
            size,
            max: limits.max_output,
        });
    }
    Ok(())
}

fn check_output(verdict: Verdict, limits: &GuestLimits) -> Result<Verdict, CallFailure> {
    let (size, routes) = match &verdict {
        Verdict::Replace(body) => (body.len(), 0),
        Verdict::Route(routes) => (
            routes
                .iter()
                .map(|(t, b)| t.len() + b.as_ref().map_or(0, String::len))
                .sum(),
            routes.len(),
        ),
        Verdict::Reject(reason) => (reason.len(), 0),
        Verdict::Forward | Verdict::Drop => (0, 0),
    };
    cap_output(size, limits)?;
    if routes > limits.max_routes {
        return Err(CallFailure::TooManyRoutes {
            count: routes,
            max: limits.max_routes,
        });
    }
    Ok(verdict)
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
