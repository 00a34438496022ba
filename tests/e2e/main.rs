//! End-to-end tests: the real `pgws` binary, a private PostgreSQL, real WebSocket clients.
//!
//! One test binary, a module per feature. Every test gets its own database, so tests run in parallel.

mod harness;

mod auth;
mod browser;
mod conformance;
mod delivery;
mod documented;
mod guests;
mod hardening;
mod hotswap;
mod isolation;
mod pipeline;
mod quickstart;
mod reliability;
mod socketio;
mod streams;
mod templates;
mod toolkit;
mod triggers;
