//! Tenant guests: WebAssembly components that decide what each notification becomes.
//!
//! - `bindings`: the generated WIT bindings and their mapping to host types;
//! - `runtime`: engine, linker, compile cache, epoch clock, limits;
//! - `state`: what an instance's store holds (no-capability WASI, memory cap, log budget, output tail);
//! - `instance`: one warm instance and the checks around a call;
//! - `registry`: which module serves which tenant, swapped atomically, with one version of history;
//! - `watch`: follows the guest directory and reloads what changed;
//! - `inspect`: what `pgws guest check` reports about a component;
//! - `cases`: notifications and expected verdicts, as `pgws guest test` runs them;
//! - `template`: the projects `pgws guest new` makes.
//!
//! Nothing here knows about sockets or Postgres; the workers call in with one notification at a time.

mod bindings;
pub mod cases;
mod inspect;
mod instance;
mod registry;
mod runtime;
mod state;
pub mod template;
mod watch;

pub use bindings::{
    Authorization, ClientMessageRef, ClientVerdict, ConnectionRef, NotificationRef, Verdict,
};
pub use inspect::{inspect, Inspection};
pub use instance::{CallFailure, GuestInstance};
pub(crate) use registry::count_failure;
pub use registry::{GuestInfo, GuestRegistry, GuestTarget, Lookup, Refusal, DEFAULT_GUEST};
pub use runtime::{GuestLimits, GuestModule, GuestRuntime, LoadError};
pub use watch::watch_dir;
