//! Outpost client: a local SQLite database kept in sync with Postgres through an
//! `outpost-relay`, with an upload queue for local writes and live queries.
//!
//! Layout (by responsibility):
//! - [`schema`]: the app's tables → typed views and `INSTEAD OF` triggers over
//!   schemaless `ps_data__<table>` rows.
//! - [`store`]: the SQLite layout (PowerSync-style `ps_*` tables), versioned
//!   migrations, and the adapter that executes the sync machine's database
//!   instructions (store ops, validate checksums, apply a checkpoint atomically).
//! - [`sync`]: the sans-IO sync state machine: stream lines in, instructions out.
//! - [`transport`]: hyper client for `POST /sync/stream` (bounded NDJSON lines) and JSON calls.
//! - [`connector`]: the app hook (`fetch_credentials`, `upload_data`) and the
//!   default upload to the relay's `/crud` + write-checkpoint request (writes the
//!   relay refuses for good move to `ps_crud_rejected`), and `GET /schema`.
//! - [`driver`]: the async loop tying them together: reconnect with backoff,
//!   concurrent uploads, [`driver::SyncStatus`].
//! - [`db`]: [`Database`], the shareable handle: queries, local writes, `watch`.
//! - [`watch`]: live queries woken by the SQLite update hook.
//! - [`cli`]: the `outpost` command line.
//!
//! Data flow: relay → [`transport`] → [`sync::SyncState::handle_line`] →
//! [`store::Store::execute`] → `ps_oplog` → (checkpoint complete, checksums valid,
//! upload queue empty) → `ps_data__*` in one transaction → update hook → [`watch`].

pub mod cli;
pub mod connector;
pub mod db;
pub mod driver;
pub mod error;
pub mod schema;
pub mod store;
pub mod sync;
pub mod transport;
pub mod watch;

pub use connector::{Connector, StaticConnector};
pub use db::Database;
pub use driver::{SyncOptions, SyncStatus};
pub use error::{Error, Result};
pub use schema::{Column, ColumnType, Schema, Table};
pub use store::{SchemaMode, Store};
pub use transport::Credentials;
