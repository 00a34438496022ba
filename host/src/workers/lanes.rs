//! A tenant's lane and the task that drains it: one task per lane with work, its jobs in order,
//! deliveries gathered and fanned out together; a lane that turned slow (or quick) moves to the
//! other threads; quiet lanes lose their warm instance and, later, the lane itself.
//!
//! It does not decide what a job does (`jobs`) or queue it (`workers`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::runner::Runner;
use super::{Inner, Job, FORGET_AFTER, WARM_FOR};
use crate::deliver::{Batch, TenantStream};
use crate::envelope::TenantId;

/// One tenant's place in the scheduler.
pub(super) struct Lane {
    pub(super) tenant: TenantId,
    pub(super) stream: TenantStream,
    state: Mutex<LaneState>,
}

pub(super) struct LaneState {
    pub(super) jobs: VecDeque<Job>,
    /// Whether a task is draining `jobs`. At most one per lane.
    pub(super) running: bool,
    /// The guest side of the lane; taken by the draining task while it runs.
    pub(super) runner: Option<Runner>,
    /// Whether messages are being dropped because the queue is full (logged once per episode).
    pub(super) overflowing: bool,
    /// Whether the lane's last guest call was slow: its task runs on the slow threads.
    pub(super) slow: bool,
    pub(super) idle_since: Instant,
    /// Removed from the lanes map (see [`FORGET_AFTER`]); a job that finds this takes a new lane.
    pub(super) forgotten: bool,
}

impl LaneState {
    /// Whether the lane can be dropped: nothing queued or running, quiet for [`FORGET_AFTER`].
    /// (The caller also checks that no session of the tenant would see its numbering restart.)
    fn forgettable(&self, now: Instant) -> bool {
        !self.running && self.jobs.is_empty() && now.duration_since(self.idle_since) >= FORGET_AFTER
    }
}

impl Lane {
    pub(super) fn new(tenant: &TenantId, runner: Runner) -> Lane {
        Lane {
            tenant: tenant.clone(),
            stream: TenantStream::new(tenant),
            state: Mutex::new(LaneState {
                jobs: VecDeque::new(),
                running: false,
                runner: Some(runner),
                overflowing: false,
                slow: false,
                idle_since: Instant::now(),
                forgotten: false,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drains one lane: its jobs one after another, until none is left or the lane changed class (quick
/// or slow) and must move to the other threads. Exactly one per lane runs.
pub(super) async fn drain(inner: Arc<Inner>, lane: Arc<Lane>, on_slow: bool) {
    let runner = lane.lock().runner.take();
    let mut draining = Draining {
        runner,
        inner,
        lane,
        batch: Batch::default(),
    };
    loop {
        let job = draining.lane.lock().jobs.pop_front();
        let Some(job) = job else { break };
        let runner = draining
            .runner
            .get_or_insert_with(|| draining.inner.runner());
        if let Some(until) = runner.throttled_until(&draining.lane.tenant) {
            // What is gathered must not wait out the pause.
            draining.inner.deliverer.publish(&mut draining.batch);
            tokio::time::sleep_until(until.into()).await;
        }
        draining
            .inner
            .run(&draining.lane, runner, job, &mut draining.batch)
            .await;
        // Over the cap on warm instances, a running lane keeps none between calls; the sweep
        // cools the longest-idle ones until the count is back under it.
        if draining.inner.warm.load(Ordering::Relaxed) > draining.inner.scheduling.max_warm {
            runner.cool();
        }
        let slow = runner.slow;
        let more = {
            let mut state = draining.lane.lock();
            state.slow = slow;
            !state.jobs.is_empty()
        };
        // Messages that arrived together leave together, one write per subscriber.
        if !more || draining.batch.is_full() {
            draining.inner.deliverer.publish(&mut draining.batch);
        }
        if slow != on_slow {
            // `Draining` hands the rest of the queue to a task on the right threads.
            break;
        }
    }
}

/// Gives the lane back when its task ends — normally, or by panic or runtime shutdown — and starts
/// another task if jobs arrived after the last look.
struct Draining {
    inner: Arc<Inner>,
    lane: Arc<Lane>,
    runner: Option<Runner>,
    /// Deliveries not yet fanned out; they leave before the lane is given back.
    batch: Batch,
}

impl Drop for Draining {
    fn drop(&mut self) {
        self.inner.deliverer.publish(&mut self.batch);
        let mut state = self.lane.lock();
        state.runner = self.runner.take();
        state.idle_since = Instant::now();
        if state.jobs.is_empty() {
            state.running = false;
            state.overflowing = false;
        } else {
            let slow = state.slow;
            drop(state);
            // Not during shutdown: the runtimes are going, and the jobs with them.
            if tokio::runtime::Handle::try_current().is_ok() {
                self.inner.threads.handle(slow).spawn(drain(
                    self.inner.clone(),
                    self.lane.clone(),
                    slow,
                ));
            }
        }
    }
}

/// How often the sweep looks at the lanes: how long the warm count may stay over its cap.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Drops the warm instances of tenants that have been quiet for [`WARM_FOR`] — and, while more
/// than `--guest-max-warm` are warm, those of the longest-idle tenants first — and forgets the
/// lanes of tenants quiet for [`FORGET_AFTER`] with no session.
pub(super) async fn cool_down(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // Looked at without the map's lock, so dispatching never waits on this sweep.
        let lanes: Vec<Arc<Lane>> = inner
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        let mut quiet = Vec::new();
        let mut warm_idle = Vec::new();
        for lane in lanes {
            let mut state = lane.lock();
            let idle = !state.running;
            let idle_since = state.idle_since;
            if let Some(runner) = state.runner.as_mut() {
                if idle && now.duration_since(idle_since) >= WARM_FOR {
                    runner.cool();
                } else if idle && runner.is_warm() {
                    warm_idle.push((idle_since, lane.clone()));
                }
            }
            if state.forgettable(now) {
                quiet.push(lane.clone());
            }
        }
        let over = inner
            .warm
            .load(Ordering::Relaxed)
            .saturating_sub(inner.scheduling.max_warm);
        if over > 0 {
            warm_idle.sort_by_key(|(idle_since, _)| *idle_since);
            for (_, lane) in warm_idle.into_iter().take(over) {
                let mut state = lane.lock();
                if !state.running {
                    if let Some(runner) = state.runner.as_mut() {
                        runner.cool();
                    }
                }
            }
        }
        quiet.retain(|lane| inner.deliverer.hub.subscribers(&lane.tenant) == 0);
        if quiet.is_empty() {
            continue;
        }
        let mut lanes = inner.lanes.lock().unwrap_or_else(|e| e.into_inner());
        for lane in quiet {
            let mut state = lane.lock();
            // Checked again under the lock: a job may have come since.
            if state.forgettable(now) {
                state.forgotten = true;
                lanes.remove(&lane.tenant);
                inner.lanes_full.store(false, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn state(running: bool, jobs: usize, quiet_for: Duration) -> (LaneState, Instant) {
        let idle_since = Instant::now();
        let mut state = LaneState {
            jobs: VecDeque::new(),
            running,
            runner: None,
            overflowing: false,
            slow: false,
            idle_since,
            forgotten: false,
        };
        for _ in 0..jobs {
            let (reply, _) = oneshot::channel();
            state.jobs.push_back(Job::Authorize {
                topics: Vec::new(),
                can_publish: false,
                claims: String::new(),
                reply,
            });
        }
        (state, idle_since + quiet_for)
    }

    #[test]
    fn only_quiet_idle_lanes_are_forgotten() {
        let (s, now) = state(false, 0, FORGET_AFTER);
        assert!(s.forgettable(now));
        let (s, now) = state(false, 0, FORGET_AFTER / 2);
        assert!(!s.forgettable(now), "not quiet long enough");
        let (s, now) = state(true, 0, FORGET_AFTER);
        assert!(!s.forgettable(now), "a task is running");
        let (s, now) = state(false, 1, FORGET_AFTER);
        assert!(!s.forgettable(now), "a job waits");
    }
}
