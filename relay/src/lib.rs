//! `outpost-relay`: the stateless HTTP front of Outpost. It authenticates
//! clients, asks Postgres (extension `outpost`) which buckets they hold, and
//! streams checkpoints and ops as PowerSync-compatible NDJSON. It keeps no
//! durable state, so any number of relays can serve one database.
//!
//! Layout:
//! - [`config`]: command line and environment (`serve`, `token`).
//! - [`auth`]: JWT verification (HS256 secret, JWKS file, JWKS URLs fetched
//!   and refreshed) and dev tokens.
//! - [`pg_tls`]: libpq `sslmode`/`sslrootcert` of database URLs, enforced
//!   with rustls; every Postgres connection of the relay is made through it.
//! - [`outbound_tls`]: trust anchors (system roots, PEM files) and rustls
//!   client configs for the relay's outgoing connections.
//! - [`store`]: the [`store::Store`] trait (everything the relay asks the
//!   database) and its Postgres implementation over a connection pool.
//! - [`listener`]: the one LISTEN connection per process; fans checkpoint
//!   notifications out through a `watch` channel and wakes the ticker.
//! - [`fanout`]: reads shared by all streams of the process: what changed
//!   since a checkpoint (one query per checkpoint, not per connection) and
//!   pages of ops, both single-flight.
//! - [`ticker`]: calls `outpost.tick()` on change notifications, coalesced.
//! - [`sync`]: pure sync logic: checkpoint diffs, priority groups, paging.
//! - [`routes`]: the router ([`app`]) and one module per endpoint.
//! - [`server`]: accept loop, connection cap, graceful shutdown.
//! - [`metrics`]: counters and gauges, Prometheus text exposition.
//! - [`error`]: the one error type and its HTTP mapping.

pub mod auth;
pub mod config;
pub mod error;
pub mod fanout;
pub mod listener;
pub mod metrics;
pub mod outbound_tls;
pub mod pg_tls;
pub mod routes;
pub mod server;
pub mod store;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod ticker;

pub use error::Error;
pub use routes::{app, App, AppState, Limits};

/// Resolves once `stop` turns true (or its sender is gone). Wrapping
/// `wait_for` keeps its non-`Send` read guard out of callers' futures.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
