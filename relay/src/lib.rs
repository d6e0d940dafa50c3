//! `outpost-relay`: the stateless HTTP front of Outpost. It authenticates
//! clients, asks Postgres (extension `outpost`) which buckets they hold, and
//! streams checkpoints and ops as PowerSync-compatible NDJSON. It keeps no
//! durable state, so any number of relays can serve one database.
//!
//! Layout (a module imports only modules listed before it):
//! - [`error`]: the one error type and its HTTP mapping.
//! - [`config`]: command line and environment (`serve`, `token`).
//! - [`metrics`]: counters, gauges and histograms, exposed by `prometheus-client`.
//! - [`auth`]: JWT verification (HS256 secret, JWKS file, JWKS URLs fetched
//!   and refreshed) and dev tokens.
//! - [`outbound_tls`]: trust anchors (system roots, PEM files) and rustls
//!   client configs for the relay's outgoing connections.
//! - [`pg_tls`]: libpq `sslmode`/`sslrootcert` of database URLs, enforced
//!   with rustls.
//! - [`db`]: opening Postgres connections (the pool and the LISTEN connection),
//!   every one through [`pg_tls`].
//! - [`store`]: the [`store::Store`] trait (everything the relay asks the
//!   database), the values it exchanges, and its Postgres implementation.
//! - [`sync`]: pure sync logic: checkpoint diffs, priority groups, paging, and
//!   what a stream has sent (positions, superseded checkpoints).
//! - [`liveness`]: whether the relay can do its job (LISTEN up, ticks succeeding).
//! - [`supervise`]: restarts background tasks that panic or end early.
//! - [`listener`]: the one LISTEN connection per process; fans checkpoint
//!   notifications out through a `watch` channel and wakes the ticker.
//! - [`freshness`]: the barrier that makes a stream's first checkpoint
//!   include every commit before its request (one tick shared by all).
//! - [`replica`]: hot standbys (`--replica-url`): the store that routes the
//!   sync path's reads to a standby, and the gate that announces a
//!   checkpoint only once that standby shows it.
//! - [`ticker`]: calls `outpost.tick()` on change notifications, coalesced,
//!   and schedules compaction.
//! - [`fanout`]: reads shared by all streams of the process: what changed
//!   since a checkpoint (one query per checkpoint, not per connection) and
//!   pages of ops, both single-flight.
//! - [`compress`]: content negotiation and flushable gzip/zstd encoders for streams.
//! - [`tls`]: HTTPS: certificates loaded (and reloaded) into a rustls acceptor.
//! - [`routes`]: the router ([`app`]), one module per endpoint, CORS and the
//!   stream body (compressed or not).
//! - [`server`]: accept loop, connection cap, graceful shutdown, and [`server::run`],
//!   which wires the relay together.
//! - `testing` (tests only): an in-memory [`store::Store`] and a router harness.

pub mod auth;
pub mod compress;
pub mod config;
pub mod db;
pub mod error;
pub mod fanout;
pub mod freshness;
pub mod listener;
pub mod liveness;
pub mod metrics;
pub mod outbound_tls;
pub mod pg_tls;
pub mod replica;
pub mod routes;
pub mod server;
pub mod store;
pub mod supervise;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod ticker;
pub mod tls;

pub use error::Error;
pub use routes::{app, App, AppState, Limits};

/// Resolves once `stop` turns true (or its sender is gone). Wrapping
/// `wait_for` keeps its non-`Send` read guard out of callers' futures.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
