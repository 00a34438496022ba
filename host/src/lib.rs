//! pgws: PostgreSQL `NOTIFY` → WebSocket fan-out for many tenants, each message shaped by the
//! tenant's sandboxed WebAssembly guest.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! listener ──▶ pipeline ──(envelope::parse)──▶ guest (per tenant) ──▶ hub ──▶ session ──▶ socket
//! ```
//!
//! - [`listener`]: the one LISTEN connection, drained, reconnected with back-off;
//! - [`envelope`]: the payload format `<tenant>[/<topic>],<json>` and its name rules;
//! - [`pipeline`]: worker threads that run each tenant's guest in order and apply its verdict;
//! - [`guest`]: the WebAssembly runtime, limits and the tenant → guest registry;
//! - [`hub`]: tenant → sessions, bounded per-session queues, encode-once fan-out;
//! - [`frame`]: the bytes clients receive;
//! - [`session`]: one WebSocket connection;
//! - [`server`]: HTTP routes, who a client is, start-up and shutdown order;
//! - [`config`], [`metrics`]: settings and the `/metrics` vocabulary.

pub mod config;
pub mod envelope;
pub mod frame;
pub mod guest;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod session;
