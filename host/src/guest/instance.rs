//! One warm guest instance and the checks around each call into it.
//!
//! Owns the per-instance [`Store`] (WASI context with no capabilities, memory limiter, log budget) and
//! turns one call into either a checked [`Verdict`] or a [`CallFailure`]. After a failure the instance
//! must not be entered again: the caller drops it and makes a new one. It does not choose which
//! module a tenant runs (`registry`) or what happens to the verdict (`pipeline`).

use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{
    Authorization, AuthorizerExport, ClientHandlerExport, ClientMessageRef, ClientVerdict,
    ConnectionRef, HandlerExport, LogHost, LogLevel, NotificationRef, Verdict,
};
use super::runtime::{GuestModule, GuestRuntime};

/// Log lines one call may write; more are counted and dropped so a chatty guest cannot flood the log.
const LOG_LINES_PER_CALL: u32 = 16;
/// Longest log line kept from a guest, in bytes.
const LOG_LINE_MAX: usize = 1024;

/// Everything a guest's store holds.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    tenant: String,
    log_budget: u32,
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
        if message.len() > LOG_LINE_MAX {
            let mut end = LOG_LINE_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let tenant = self.tenant.as_str();
        match level {
            LogLevel::Debug => tracing::debug!(tenant, guest_log = %message),
            LogLevel::Info => tracing::info!(tenant, guest_log = %message),
            LogLevel::Warn => tracing::warn!(tenant, guest_log = %message),
            LogLevel::Error => tracing::error!(tenant, guest_log = %message),
        }
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
    deadline_ticks: u64,
}

impl GuestInstance {
    pub fn new(
        runtime: &GuestRuntime,
        module: &GuestModule,
        tenant: &str,
    ) -> wasmtime::Result<Self> {
        // No preopened directories, no environment, no arguments, no sockets, no name lookup:
        // WASI calls that need any of them fail inside the guest with an error code.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(runtime.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limits,
            tenant: tenant.to_owned(),
            log_budget: LOG_LINES_PER_CALL,
        };
        let mut store = Store::new(&runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        let deadline_ticks = runtime.deadline_ticks();
        store.set_epoch_deadline(deadline_ticks);
        let instance = module.pre.instantiate(&mut store)?;
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
            deadline_ticks,
        })
    }

    /// Whether the guest exports `on-client-message`.
    pub fn has_client_handler(&self) -> bool {
        self.client_handler.is_some()
    }

    /// Whether the guest exports `authorize`.
    pub fn has_authorizer(&self) -> bool {
        self.authorizer.is_some()
    }

    /// Arms the deadline and the log budget for one call.
    fn arm(&mut self) {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.store.data_mut().log_budget = LOG_LINES_PER_CALL;
    }

    /// Calls `on-client-message` and checks the output cap.
    pub fn on_client_message(
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
            .map_err(|e| classify(e, runtime))?
            .into();
        let size = match &verdict {
            ClientVerdict::Replace(b) | ClientVerdict::Reject(b) => b.len(),
            ClientVerdict::Accept => 0,
        };
        cap_output(size, &runtime.limits)?;
        Ok(verdict)
    }

    /// Calls `authorize` and checks the output cap (a denial's reason goes to the log and the client).
    pub fn authorize(
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
            .map_err(|e| classify(e, runtime))?
            .into();
        if let Authorization::Deny(reason) = &answer {
            cap_output(reason.len(), &runtime.limits)?;
        }
        Ok(answer)
    }

    /// Calls `on-notify` and checks the verdict against the output caps.
    pub fn on_notify(
        &mut self,
        runtime: &GuestRuntime,
        n: &NotificationRef<'_>,
    ) -> Result<Verdict, CallFailure> {
        self.arm();
        let verdict = self
            .handler
            .call_on_notify(&mut self.store, &n.to_wit())
            .map_err(|e| classify(e, runtime))?;
        check_output(Verdict::from(verdict), &runtime.limits)
    }
}

fn classify(error: wasmtime::Error, runtime: &GuestRuntime) -> CallFailure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallFailure::Timeout(runtime.limits.timeout),
        Some(Trap::AllocationTooLarge) => CallFailure::Memory,
        _ if format!("{error:#}").contains("forcing trap when growing memory") => {
            CallFailure::Memory
        }
        _ => CallFailure::Trap(format!("{error:#}")),
    }
}

/// The one output-size rule every hook's answer is held to.
fn cap_output(size: usize, limits: &super::runtime::GuestLimits) -> Result<(), CallFailure> {
    if size > limits.max_output {
        return Err(CallFailure::OutputTooLarge {
            size,
            max: limits.max_output,
        });
    }
    Ok(())
}

fn check_output(
    verdict: Verdict,
    limits: &super::runtime::GuestLimits,
) -> Result<Verdict, CallFailure> {
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
