//! pgws: PostgreSQL `NOTIFY` → WebSocket fan-out for many tenants, each message shaped by the
//! tenant's sandboxed WebAssembly guest.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! listener ──▶ pipeline ──(envelope::parse)──▶ guest (per tenant) ──▶ hub ──▶ session ──▶ socket
//!                  └──(channel subscribed by name)──▶ guest (per tenant) ──▶ socketio rooms
//! ```
//!
//! - [`listener`]: the one LISTEN connection, drained, reconnected with back-off;
//! - [`channels`]: channels socket.io clients subscribe to by name, reference-counted;
//! - [`envelope`]: the payload format `<tenant>[/<topic>],<json>` and its name rules;
//! - [`pipeline`]: worker threads that run each tenant's guest in order and apply its verdict;
//! - [`guest`]: the WebAssembly runtime, limits and the tenant → guest registry;
//! - [`hub`]: tenant → sessions, bounded per-session queues, encode-once fan-out;
//! - [`frame`]: the bytes clients receive;
//! - [`session`]: one WebSocket connection, and the `pgws.v1` client frames it answers;
//! - [`protocol`]: the `pgws.v1` envelope protocol's frames;
//! - [`auth`]: JWT verification into an identity (tenant, topics, mode);
//! - [`publisher`]: client messages into Postgres via `pg_notify`;
//! - [`upgrade`]: who a connecting client is, decided before the WebSocket upgrade;
//! - [`socketio`]: the socket.io endpoint (socketio_pg's events) and its rooms;
//! - [`server`]: the accept loop, plain HTTP routes, start-up and shutdown order;
//! - [`admin`]: the token-guarded API to list, upload, remove and roll back guests;
//! - [`embedded`]: the private development PostgreSQL started when no database URL is given;
//! - [`config`], [`metrics`]: settings and the `/metrics` vocabulary.

pub mod admin;
pub mod auth;
pub mod channels;
pub mod config;
pub mod embedded;
pub mod envelope;
pub mod frame;
pub mod guest;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod publisher;
pub mod server;
pub mod session;
pub mod socketio;
pub mod upgrade;
