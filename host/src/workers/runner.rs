//! One lane's guest side: its warm instance, failure record and isolation, guest-time budget, and
//! the accounting around every call — the time it ran, the wall-clock bound, the failure log line
//! with what the guest printed.
//!
//! It does not queue or schedule (`lanes`), decide what a job does (`jobs`) or what a verdict
//! delivers (`deliver`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::FailureRules;
use crate::deliver::{Notify, Outcome};
use crate::envelope::TenantId;
use crate::guest::{
    Authorization, CallFailure, ClientMessageRef, ClientVerdict, ConnectionRef, GuestInstance,
    GuestModule, GuestRuntime, Verdict,
};
use crate::metrics as m;

/// A call's wall-clock bound, as a multiple of its running-time deadline. Epoch interruption counts
/// only time the guest runs; a guest that waits (a WASI sleep or poll) uses none, and a guest that
/// yields to others takes longer than it runs. This bound catches the first and leaves room for the
/// second.
const WALL_FACTOR: u32 = 10;

/// A call that runs longer than this (guest time) marks its lane slow until a call is quick again.
pub(super) const SLOW_CALL: Duration = Duration::from_millis(2);

/// Quick calls in a row after which a slow lane counts as quick again.
const QUICK_AGAIN_AFTER: u32 = 32;

/// The guest side of a lane: its guest slot, its time budget, and whether its last call was slow.
pub(super) struct Runner {
    slot: Option<GuestSlot>,
    budget: Budget,
    /// Whether the lane counts as slow: a call ran longer than [`SLOW_CALL`], and fewer than
    /// [`QUICK_AGAIN_AFTER`] quick calls came since.
    pub(super) slow: bool,
    quick_streak: u32,
    /// Warm instances of all lanes together (see [`Warm`]).
    warm: Arc<AtomicUsize>,
}

/// A guest call that produced nothing usable; its message follows the failure policy.
pub(super) struct Failed {
    pub(super) kind: &'static str,
    pub(super) detail: String,
}

impl Runner {
    pub(super) fn new(budget_per_sec: Duration, warm: Arc<AtomicUsize>) -> Self {
        Runner {
            slot: None,
            budget: Budget::new(budget_per_sec),
            slow: false,
            quick_streak: 0,
            warm,
        }
    }

    /// When the tenant used its guest-time budget: until when it must wait (counted and logged).
    pub(super) fn throttled_until(&mut self, tenant: &TenantId) -> Option<Instant> {
        let until = self.budget.exhausted_until(Instant::now())?;
        metrics::counter!(m::GUEST_THROTTLED, "tenant" => tenant.to_string()).increment(1);
        tracing::debug!(%tenant, "guest over its time budget; throttled until the next second");
        Some(until)
    }

    /// A warm instance of `module` for the next call, unless the guest is isolated or cannot be
    /// instantiated (that failure is accounted like a failed call).
    async fn instance(
        &mut self,
        runtime: &GuestRuntime,
        rules: &FailureRules,
        tenant: &TenantId,
        module: Arc<GuestModule>,
    ) -> Result<&mut GuestInstance, Failed> {
        // The registry is the truth: a slot whose module was replaced starts afresh, so the next
        // message after a swap runs on the new module.
        if self
            .slot
            .as_ref()
            .is_some_and(|slot| !Arc::ptr_eq(&slot.module, &module))
        {
            self.slot = None;
        }
        let slot = self
            .slot
            .get_or_insert_with(|| GuestSlot::new(module, tenant));
        if let Some(until) = slot.isolated_until {
            if Instant::now() < until {
                return Err(Failed {
                    kind: "guest_isolated",
                    detail: "guest is isolated after repeated failures".into(),
                });
            }
            slot.isolated_until = None;
            slot.isolations_ended.increment(1);
            slot.failures = 0;
            tracing::info!(%tenant, "isolation over; trying the guest again");
        }
        if slot.instance.is_none() {
            let (made, spent) = timed(bounded(runtime, async {
                GuestInstance::new(runtime, &slot.module, tenant.as_str())
                    .await
                    .map_err(|e| CallFailure::Instantiate(format!("{e:#}")))
            }))
            .await;
            self.budget.charge(spent);
            match made {
                Ok(instance) => {
                    if let Some(slot) = self.slot.as_mut() {
                        slot.instance = Some(Warm::new(instance, &self.warm));
                    }
                }
                Err(failure) => return Err(self.fail(rules, tenant, failure)),
            }
        }
        self.slot
            .as_mut()
            .and_then(|slot| slot.instance.as_mut())
            .map(|warm| &mut warm.instance)
            .ok_or(Failed {
                kind: "instantiate",
                detail: "no instance".into(),
            })
    }

    /// Accounts one finished call — time, failure record, isolation, logging — and passes its
    /// result on.
    fn settle<R>(
        &mut self,
        rules: &FailureRules,
        tenant: &TenantId,
        result: Result<R, CallFailure>,
        spent: Duration,
    ) -> Result<R, Failed> {
        self.budget.charge(spent);
        // Slow at once, quick again only after a run of quick calls: a guest that alternates
        // quick and slow calls stays on the slow threads.
        if spent > SLOW_CALL {
            self.slow = true;
            self.quick_streak = 0;
        } else {
            self.quick_streak = self.quick_streak.saturating_add(1);
            if self.quick_streak >= QUICK_AGAIN_AFTER {
                self.slow = false;
            }
        }
        if let Some(slot) = self.slot.as_mut() {
            slot.seconds.record(spent.as_secs_f64());
            if result.is_ok() {
                slot.failures = 0;
            }
        }
        result.map_err(|failure| self.fail(rules, tenant, failure))
    }

    /// Records a failed call: the failure count and isolation rule, the metric, and a log line
    /// with what the guest printed last.
    fn fail(&mut self, rules: &FailureRules, tenant: &TenantId, failure: CallFailure) -> Failed {
        let failed = Failed {
            kind: failure.kind(),
            detail: failure.to_string(),
        };
        let Some(slot) = self.slot.as_mut() else {
            return failed;
        };
        let printed = slot
            .instance
            .as_ref()
            .map(|warm| warm.instance.take_output())
            .unwrap_or_default();
        if failure.poisons_instance() {
            slot.instance = None;
        }
        crate::guest::count_failure(&slot.module);
        slot.failures += 1;
        metrics::counter!(m::GUEST_FAILURES, "tenant" => tenant.to_string(), "kind" => failure.kind())
            .increment(1);
        tracing::error!(
            %tenant,
            version = %slot.module.version,
            kind = failure.kind(),
            error = %failure,
            // Quoted, so a multi-line panic message stays one log line.
            guest_output = ?printed,
            "guest call failed"
        );
        if slot.failures >= rules.max_failures {
            slot.isolated_until = Some(Instant::now() + rules.isolation);
            metrics::counter!(m::GUEST_ISOLATIONS, "tenant" => tenant.to_string()).increment(1);
            tracing::error!(
                %tenant,
                failures = slot.failures,
                isolation = ?rules.isolation,
                "guest isolated after repeated failures"
            );
        }
        failed
    }

    /// `on-notify` of `module` for `n`.
    pub(super) async fn on_notify(
        &mut self,
        runtime: &GuestRuntime,
        rules: &FailureRules,
        module: Arc<GuestModule>,
        n: &Notify,
    ) -> Result<Verdict, Failed> {
        let instance = self.instance(runtime, rules, &n.tenant, module).await?;
        let (result, spent) = timed(bounded(
            runtime,
            instance.on_notify(runtime, &n.as_guest_input()),
        ))
        .await;
        self.settle(rules, &n.tenant, result, spent)
    }

    /// `on-client-message` of `module`.
    pub(super) async fn on_client_message(
        &mut self,
        runtime: &GuestRuntime,
        rules: &FailureRules,
        tenant: &TenantId,
        module: Arc<GuestModule>,
        message: &ClientMessageRef<'_>,
    ) -> Result<ClientVerdict, Failed> {
        let instance = self.instance(runtime, rules, tenant, module).await?;
        let (result, spent) = timed(bounded(
            runtime,
            instance.on_client_message(runtime, message),
        ))
        .await;
        self.settle(rules, tenant, result, spent)
    }

    /// `authorize` of `module`.
    pub(super) async fn authorize(
        &mut self,
        runtime: &GuestRuntime,
        rules: &FailureRules,
        tenant: &TenantId,
        module: Arc<GuestModule>,
        connection: &ConnectionRef<'_>,
    ) -> Result<Authorization, Failed> {
        let instance = self.instance(runtime, rules, tenant, module).await?;
        let (result, spent) =
            timed(bounded(runtime, instance.authorize(runtime, connection))).await;
        self.settle(rules, tenant, result, spent)
    }

    /// Whether an instance is kept for the next call.
    pub(super) fn is_warm(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|slot| slot.instance.is_some())
    }

    /// Drops the warm instance (it comes back on the next call).
    pub(super) fn cool(&mut self) {
        if let Some(slot) = self.slot.as_mut() {
            slot.instance = None;
        }
    }

    /// Counts a delivered verdict's outcome for the tenant.
    pub(super) fn count(&self, outcome: &Outcome) {
        if let Some(slot) = &self.slot {
            slot.count(outcome);
        }
    }
}

/// Bounds a guest call in wall-clock time ([`WALL_FACTOR`] × its deadline). A call cut off here
/// counts as a timeout, which also discards the instance.
async fn bounded<R>(
    runtime: &GuestRuntime,
    call: impl Future<Output = Result<R, CallFailure>>,
) -> Result<R, CallFailure> {
    let deadline = runtime.limits().timeout;
    tokio::time::timeout(deadline * WALL_FACTOR, call)
        .await
        .unwrap_or(Err(CallFailure::Timeout(deadline)))
}

/// Runs `future` and measures the time spent inside its polls: the guest's own running time, not
/// the time it waited for a thread after yielding.
async fn timed<F: Future>(future: F) -> (F::Output, Duration) {
    let mut future = std::pin::pin!(future);
    let mut spent = Duration::ZERO;
    let output = std::future::poll_fn(|cx| {
        let started = Instant::now();
        let poll = future.as_mut().poll(cx);
        spent += started.elapsed();
        poll
    })
    .await;
    (output, spent)
}

/// A warm instance, counted in the workers' total for as long as it lives (the total is what
/// [`Scheduling::max_warm`](super::Scheduling::max_warm) bounds).
struct Warm {
    instance: GuestInstance,
    count: Arc<AtomicUsize>,
}

impl Warm {
    fn new(instance: GuestInstance, count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Warm {
            instance,
            count: count.clone(),
        }
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One tenant's guest as its lane sees it: the module, a warm instance, its failure record and its
/// per-tenant series.
struct GuestSlot {
    module: Arc<GuestModule>,
    /// `None` after a failure that leaves the instance unusable, after a quiet spell, or when too
    /// many lanes are warm; rebuilt on the next call.
    instance: Option<Warm>,
    failures: u32,
    isolated_until: Option<Instant>,
    /// `pgws_guest_calls_total{tenant, outcome}`, one series per outcome.
    delivered: metrics::Counter,
    dropped: metrics::Counter,
    rejected: metrics::Counter,
    /// `pgws_guest_call_seconds{tenant}`.
    seconds: metrics::Histogram,
    /// `pgws_guest_isolations_ended_total{tenant}`: an isolation ends when it runs out, or when
    /// the slot goes (a new guest version, a forgotten lane).
    isolations_ended: metrics::Counter,
}

impl Drop for GuestSlot {
    fn drop(&mut self) {
        if self.isolated_until.take().is_some() {
            self.isolations_ended.increment(1);
        }
    }
}

impl GuestSlot {
    fn new(module: Arc<GuestModule>, tenant: &TenantId) -> Self {
        let outcome = |label: &'static str| metrics::counter!(m::GUEST_CALLS, "tenant" => tenant.to_string(), "outcome" => label);
        GuestSlot {
            delivered: outcome("delivered"),
            dropped: outcome("dropped"),
            rejected: outcome("rejected"),
            seconds: metrics::histogram!(m::GUEST_CALL_SECONDS, "tenant" => tenant.to_string()),
            isolations_ended: metrics::counter!(m::GUEST_ISOLATIONS_ENDED, "tenant" => tenant.to_string()),
            module,
            instance: None,
            failures: 0,
            isolated_until: None,
        }
    }

    fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Deliver(_) => &self.delivered,
            Outcome::Dropped => &self.dropped,
            Outcome::Rejected(..) => &self.rejected,
        };
        counter.increment(1);
    }
}

/// Guest time a tenant may use per second.
struct Budget {
    per_sec: Duration,
    window_start: Instant,
    used: Duration,
}

impl Budget {
    fn new(per_sec: Duration) -> Self {
        Budget {
            per_sec,
            window_start: Instant::now(),
            used: Duration::ZERO,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.used = Duration::ZERO;
        }
    }

    fn charge(&mut self, spent: Duration) {
        self.roll(Instant::now());
        self.used += spent;
    }

    /// When the budget of the current second is spent, the moment the next second starts.
    fn exhausted_until(&mut self, now: Instant) -> Option<Instant> {
        self.roll(now);
        (self.used >= self.per_sec).then(|| self.window_start + Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_throttles_until_the_next_second() {
        let mut b = Budget::new(Duration::from_millis(100));
        let start = b.window_start;
        assert_eq!(b.exhausted_until(start), None);
        b.used = Duration::from_millis(100);
        assert_eq!(
            b.exhausted_until(start + Duration::from_millis(10)),
            Some(start + Duration::from_secs(1))
        );
        assert_eq!(b.exhausted_until(start + Duration::from_secs(1)), None);
        assert_eq!(b.used, Duration::ZERO, "a new second starts afresh");
    }
}
