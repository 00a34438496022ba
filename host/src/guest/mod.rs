//! Tenant guests: WebAssembly components that decide what each notification becomes.
//!
//! - `bindings`: the generated WIT bindings and their mapping to host types;
//! - `runtime`: engine, linker, compile cache, epoch clock, limits;
//! - `instance`: one warm instance and the checks around a call;
//! - `registry`: which module serves which tenant, swapped atomically.
//!
//! Nothing here knows about sockets or Postgres; the pipeline calls in with one notification at a time.

mod bindings;
mod instance;
mod registry;
mod runtime;

pub use bindings::{
    Authorization, ClientMessageRef, ClientVerdict, ConnectionRef, NotificationRef, Verdict,
};
pub use instance::{CallFailure, GuestInstance};
pub use registry::{GuestRegistry, GuestTarget, DEFAULT_GUEST};
pub use runtime::{GuestLimits, GuestModule, GuestRuntime, LoadError};
