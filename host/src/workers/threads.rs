//! The threads guest calls run on: one runtime of quick lanes at the server's own priority, one of
//! slow lanes (last call over [`SLOW_CALL`]) at a lower OS priority, both apart from the runtime that
//! serves sockets.
//!
//! It does not decide which lane is slow (`runner`) or when a lane runs (`workers`).

#[cfg(doc)]
use super::runner::SLOW_CALL;

/// The runtimes guest calls run on, kept apart from the one that serves sockets. Lanes whose calls
/// are quick run on `quick`, one thread at the server's own priority; lanes whose last call ran
/// longer than [`SLOW_CALL`] run on `slow`, whose threads run at a lower OS priority
/// ([`SLOW_NICE`]). When slow guests and the rest of the server want the same CPU, the kernel gives
/// it to deliveries and quick guests first: a slow tenant slows only slow tenants.
pub(super) struct GuestThreads {
    quick: tokio::runtime::Handle,
    slow: tokio::runtime::Handle,
    /// Owned here so they stop with the last handle on the workers.
    runtimes: Vec<tokio::runtime::Runtime>,
}

impl GuestThreads {
    pub(super) fn start(slow_threads: usize) -> std::io::Result<Self> {
        let runtime = |name: &str, threads: usize, lowered: bool| {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder
                .worker_threads(threads.max(1))
                .thread_name(name)
                // A lane that just got work is spawned from outside onto the shared queue;
                // checking it at every scheduling point lets it start at the next yield of a
                // running guest instead of after dozens of them.
                .global_queue_interval(1)
                .enable_time();
            if lowered {
                builder.on_thread_start(lower_priority);
            }
            builder.build()
        };
        let quick = runtime("pgws-guest", 1, false)?;
        let slow = runtime("pgws-guest-slow", slow_threads, true)?;
        Ok(GuestThreads {
            quick: quick.handle().clone(),
            slow: slow.handle().clone(),
            runtimes: vec![quick, slow],
        })
    }

    pub(super) fn handle(&self, slow: bool) -> &tokio::runtime::Handle {
        if slow {
            &self.slow
        } else {
            &self.quick
        }
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        // The last handle may go from inside an async task, where a blocking drop would panic.
        for runtime in self.runtimes.drain(..) {
            runtime.shutdown_background();
        }
    }
}

/// How much lower the slow lanes' threads run, as a `nice` increment.
const SLOW_NICE: i32 = 10;

/// Lowers the calling thread's OS priority by [`SLOW_NICE`] (Linux keeps a nice value per thread).
fn lower_priority() {
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), current + SLOW_NICE) {
        tracing::warn!(error = %e, "could not lower the slow guest threads' priority");
    }
}
