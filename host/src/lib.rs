//! pgws: PostgreSQL `NOTIFY` → WebSocket fan-out for many tenants, each message shaped by the
//! tenant's sandboxed WebAssembly guest.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! listener ──▶ dispatch ──▶ workers (a lane per tenant: its guest) ──▶ deliver ──▶ hub ──▶ outbox (/ws)
//!                  │            ▲                                                     └──▶ socket.io sockets
//!                  └─▶ streams ─┘ (doorbells: stored messages read by position)
//! ```
//!
//! - [`listener`]: the one LISTEN connection, drained, reconnected with back-off;
//! - [`channels`]: channels socket.io clients subscribe to by name, reference-counted;
//! - [`envelope`]: the payload format `<tenant>[/<topic>],<json>` and its name rules;
//! - [`dispatch`]: listener events into tenant lanes, never waiting on one;
//! - [`streams`]: durable messages stored in Postgres, read on doorbells, recovered by position;
//! - [`workers`]: a lane per tenant, guest threads that run any lane, budgets and failure policy;
//! - [`deliver`]: a verdict into numbered deliveries, gathered in batches for the hub;
//! - [`guest`]: the WebAssembly runtime, limits and the tenant → guest registry;
//! - [`hub`]: tenant → subscribers (`/ws` sessions and socket.io sockets), encode-once fan-out;
//! - [`outbox`]: one client's socket and bounded send queue, written without a task switch;
//! - [`frame`]: the messages clients receive, as whole WebSocket frames;
//! - [`wire`]: WebSocket frames on the wire: server frames, reading client frames;
//! - [`session`]: one WebSocket connection, and the `pgws.v1` client frames it answers;
//! - [`protocol`]: the `pgws.v1` envelope protocol's frames;
//! - [`auth`]: the one identity rule of every endpoint; JWT verification, least-privilege grants;
//! - [`admission`]: connection counts, in all and per tenant, for every endpoint;
//! - [`publisher`]: client messages into Postgres via `pg_notify`;
//! - [`database`]: bounded pools of Postgres connections (publisher, streams);
//! - [`upgrade`]: who a connecting client is, decided before the WebSocket upgrade;
//! - [`socketio`]: the socket.io endpoint (socketio_pg's events);
//! - [`handshakes`]: the cap on Engine.IO sessions that have not authenticated yet;
//! - [`server`]: the accept loop, plain HTTP routes, start-up and shutdown order;
//! - [`admin`]: the token-guarded API to list, upload, remove and roll back guests, and the
//!   operator's console over it;
//! - [`embedded`]: the private development PostgreSQL started when no database URL is given;
//! - [`config`], [`metrics`]: settings, and the `/metrics` vocabulary with the console's live figures.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod channels;
pub mod config;
pub mod database;
pub mod deliver;
pub mod dispatch;
pub mod embedded;
pub mod envelope;
pub mod frame;
pub mod guest;
pub mod handshakes;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod publisher;
pub mod server;
pub mod session;
pub mod socketio;
pub mod streams;
pub mod upgrade;
pub mod wire;
pub mod workers;
