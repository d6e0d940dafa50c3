//! Outpost client: a local SQLite database kept in sync with Postgres through an
//! `outpost-relay`, with an upload queue for local writes and live queries.
//! The `outpost` command line is a separate crate (`outpost-cli`), so this
//! library carries no CLI dependencies.
//!
//! Modules, lowest first; each imports only modules above it in this list:
//! - [`error`]: the crate's one error type.
//! - [`schema`]: the app's tables → typed views and `INSTEAD OF` triggers over
//!   schemaless `ps_data__<table>` rows.
//! - [`stream_key`]: a Sync Streams subscription's identity.
//! - [`progress`]: download progress, overall and per subscription.
//! - [`sync`]: the sans-IO sync state machine: stream lines in, instructions out.
//! - [`streams`]: Sync Streams subscriptions, sans-IO: what a request
//!   carries, TTL expiry (injected clock), what a checkpoint says per
//!   subscription ([`streams::StreamStatus`]).
//! - [`store`]: the SQLite layout (PowerSync-style `ps_*` tables), versioned
//!   migrations, and the adapter that executes the sync machine's database
//!   instructions (store ops, validate checksums, apply a checkpoint atomically),
//!   the upload queue, inferred views.
//! - [`status`]: [`SyncStatus`], what syncing reports to the app.
//! - [`watch`]: live queries woken by the SQLite update hook.
//! - [`db`]: [`Database`], the local shareable handle: queries, local writes,
//!   `watch`, status, the upload queue as batches. No network.
//! - [`subscriptions`]: `Database::sync_stream(name, params).subscribe()` and
//!   its handles (held while alive, TTL after).
//! - [`net`]: the network side: NDJSON framing, body decompression, TLS, the
//!   hyper transport (timeouts), and the [`Connector`] with the relay's `/crud`,
//!   write-checkpoint and `/schema` calls.
//! - [`driver`]: [`SyncClient`], the async loop on top: reconnect with backoff,
//!   concurrent uploads, store work off the async runtime.
//!
//! Data flow: relay → [`net::transport`] → [`sync::SyncState::handle_line`] →
//! [`store::Store::execute`] → `ps_oplog` → (checkpoint complete, checksums valid,
//! upload queue empty) → `ps_data__*` in one transaction → update hook → [`watch`].

pub mod db;
pub mod driver;
pub mod error;
pub mod net;
pub mod progress;
pub mod schema;
pub mod status;
pub mod store;
pub mod stream_key;
pub mod streams;
pub mod subscriptions;
pub mod sync;
pub mod watch;

pub use db::Database;
pub use driver::{parse_stream_arg, SyncClient, SyncOptions};
pub use error::{Error, Result};
pub use net::connector::{Connector, StaticConnector};
pub use net::transport::{Credentials, Http, TransportOptions};
pub use outpost_protocol::{StreamSubscription, StreamsRequest};
pub use schema::{Column, ColumnType, Schema, Table};
pub use status::SyncStatus;
pub use store::{SchemaMode, Store};
pub use streams::{StreamStatus, SubscribeOptions};
pub use subscriptions::{SyncStream, SyncStreamSubscription};
