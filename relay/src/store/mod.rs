//! Everything the relay asks the database, behind one trait so the HTTP and
//! streaming logic can be tested with an in-memory store.
//!
//! - [`types`]: the values exchanged (checkpoint states, changes, op rows, CRUD outcomes).
//! - [`postgres`]: [`PgStore`], the implementation over the extension's SQL
//!   API (docs/sql-api.md) on a connection pool from [`crate::db`].
//! - [`crud_errors`]: which SQLSTATEs of a `/crud` entry are the client's doing.

pub mod crud_errors;
pub mod postgres;
pub mod types;

pub use crud_errors::classify_crud_error;
pub use postgres::PgStore;
pub use types::{
    Changes, CheckpointState, CrudOutcome, CrudRejection, OpRow, RejectKind, ReplicaStatus,
};

use crate::Error;
use futures_util::future::BoxFuture;
use outpost_protocol::OpId;
use serde_json::Value;

pub trait Store: Send + Sync + 'static {
    /// `outpost.sync_checkpoint(claims, params, client_id, streams)`;
    /// `streams` is the request's Sync Streams field (null: the request has
    /// none, so the three-argument form: default streams, no subscriptions).
    fn sync_checkpoint<'a>(
        &'a self,
        claims: &'a Value,
        params: &'a Value,
        client_id: &'a str,
        streams: &'a Value,
    ) -> BoxFuture<'a, Result<CheckpointState, Error>>;

    /// `outpost.bucket_ops(buckets, afters, checkpoint, max_ops)`: ops with
    /// `afters[i] < op_id <= checkpoint`, ordered by bucket (as given) then op_id.
    fn bucket_ops<'a>(
        &'a self,
        buckets: &'a [String],
        afters: &'a [OpId],
        checkpoint: OpId,
        max_ops: u32,
    ) -> BoxFuture<'a, Result<Vec<OpRow>, Error>>;

    /// [`Changes`] after `since`, or `None` when the database cannot say
    /// (callers then ask `sync_checkpoint` per stream).
    fn changes_since(&self, since: OpId) -> BoxFuture<'_, Result<Option<Changes>, Error>> {
        let _ = since;
        Box::pin(async { Ok(None) })
    }

    /// `outpost.request_write_checkpoint(user_id, client_id)`.
    fn request_write_checkpoint<'a>(
        &'a self,
        user_id: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<OpId, Error>>;

    /// `outpost.request_checkpoint(user_id, client_id, request_id)`: stores
    /// the largest request id of the client and returns it.
    fn request_checkpoint<'a>(
        &'a self,
        user_id: &'a str,
        client_id: &'a str,
        request_id: i64,
    ) -> BoxFuture<'a, Result<u64, Error>>;

    /// `outpost.tick()`: returns the latest checkpoint.
    fn tick(&self) -> BoxFuture<'_, Result<OpId, Error>>;

    /// `CALL outpost.compact_online()`: ops removed (0 when another compaction runs).
    fn compact(&self) -> BoxFuture<'_, Result<i64, Error>>;

    /// `outpost.checkpoint()`: the latest published checkpoint.
    fn checkpoint(&self) -> BoxFuture<'_, Result<OpId, Error>>;

    /// The latest checkpoint visible here and whether the server is a
    /// standby (`None`: cannot tell); polled on hot standbys by
    /// [`crate::replica::Gate`].
    fn replica_status(&self) -> BoxFuture<'_, Result<ReplicaStatus, Error>> {
        Box::pin(async move {
            Ok(ReplicaStatus {
                checkpoint: self.checkpoint().await?,
                in_recovery: None,
            })
        })
    }

    /// Whether the database answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// `outpost.client_schema()`: `{"tables": [...]}` from the active rules.
    fn client_schema(&self) -> BoxFuture<'_, Result<Value, Error>>;

    /// Applies `entries` in ONE transaction as `role` with the user's
    /// `claims` (see `routes::crud`): all of them, or none and the first
    /// entry that failed. `Err` is a fault of ours (database down, bad role).
    fn apply_crud<'a>(
        &'a self,
        role: &'a str,
        claims: &'a Value,
        entries: &'a [Value],
    ) -> BoxFuture<'a, Result<CrudOutcome, Error>>;
}
