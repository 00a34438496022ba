//! One warm guest instance and the checks around each call into it.
//!
//! Owns the per-instance [`Store`] (built on [`GuestState`]: WASI context with no capabilities,
//! memory cap, log budget, the tail of what the guest printed) and turns one call into either a
//! checked [`Verdict`] or a [`CallFailure`]. Calls are async: every epoch tick the guest yields its thread, so a slow guest
//! shares the guest threads with every other tenant instead of holding one, and a call that has run
//! for its whole deadline is interrupted. After a failure the instance must not be entered again: the
//! caller drops it and makes a new one. It does not choose which module a tenant runs (`registry`)
//! or what happens to the verdict (`workers`, `deliver`).

use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use super::bindings::{
    Authorization, AuthorizerExport, ClientHandlerExport, ClientMessageRef, ClientVerdict,
    ConnectionRef, HandlerExport, NotificationRef, Verdict,
};
use super::runtime::{GuestLimits, GuestModule, GuestRuntime};
use super::state::{GuestState, MemoryCap, OutputTail, LOG_LINES_PER_CALL};

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
            memory: MemoryCap::new(runtime.limits.memory_bytes),
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

/// Instantiates `module` once, as the server would for a tenant: catches start functions that trap,
/// loop or wait, and memories over the cap, before a module may replace a working one. Runs on a
/// thread of its own with a small runtime (a start function may use WASI's clock, which needs one),
/// so it can be called from anywhere: a blocking task, the watcher thread, start-up.
pub fn check(runtime: &GuestRuntime, module: &GuestModule) -> wasmtime::Result<()> {
    let bound = runtime.limits.timeout * 10;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let executor = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()?;
                executor.block_on(async {
                    match tokio::time::timeout(bound, GuestInstance::new(runtime, module, "_check"))
                        .await
                    {
                        Ok(made) => made.map(drop),
                        Err(_) => Err(wasmtime::format_err!("start-up took longer than {bound:?}")),
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err(wasmtime::format_err!("the trial instance panicked")))
    })
}
