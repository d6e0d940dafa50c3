//! What the relay reads from and hands to the database, as plain values:
//! no I/O here, so [`crate::sync`] and the tests use them freely.

use outpost_protocol::{BucketChecksum, Checksum, OpId, OplogEntry, StreamDescription};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// A user's view at one checkpoint: the result of `outpost.sync_checkpoint`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CheckpointState {
    pub checkpoint: OpId,
    #[serde(default)]
    pub write_checkpoint: Option<OpId>,
    #[serde(default)]
    pub buckets: Vec<BucketChecksum>,
    /// The active rules version in the same snapshot, when the store can
    /// tell; a state without it is never advanced by [`Changes`].
    #[serde(default)]
    pub rules_version: Option<i64>,
    /// The streams the request resolved to (Sync Streams), with errors.
    #[serde(default)]
    pub streams: Option<Vec<StreamDescription>>,
}

/// What changed after checkpoint `since`, read in ONE snapshot (at
/// `checkpoint`): shared by every stream at `since`, so that a new checkpoint
/// costs one query per process instead of one per connection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub since: OpId,
    pub checkpoint: OpId,
    pub rules_version: Option<i64>,
    /// True when no request's bucket set can have changed in
    /// `(since, checkpoint]` other than by a new rules version: every
    /// parameter query is static (reads only the token and client
    /// parameters), or the extension recorded that no parameter lookup changed.
    pub membership_fixed: bool,
    /// Every bucket with an op in `(since, checkpoint]`: checksum and count at `checkpoint`.
    pub buckets: HashMap<String, (Checksum, u64)>,
    /// Write checkpoints published in `(since, checkpoint]`: (user, client) → seq.
    pub write_checkpoints: HashMap<(String, String), OpId>,
}

/// One row of `outpost.bucket_ops`.
#[derive(Clone, Debug, PartialEq)]
pub struct OpRow {
    /// Shared by the rows of one bucket in a page (one allocation per
    /// bucket rather than per row of a million-row download).
    pub bucket: Arc<str>,
    pub entry: OplogEntry,
    /// MOVE/CLEAR from compaction: the op that superseded what it replaced.
    /// A checkpoint below it must not be completed (its rows would be wrong).
    pub target_op: Option<OpId>,
}

/// The result of a `/crud` batch.
#[derive(Clone, Debug, PartialEq)]
pub enum CrudOutcome {
    /// Every entry applied; the transaction committed.
    Applied(usize),
    /// Entry `index` was refused; the transaction rolled back.
    Rejected(CrudRejection),
}

#[derive(Clone, Debug, PartialEq)]
pub struct CrudRejection {
    pub index: usize,
    pub kind: RejectKind,
    /// Text the client may see (never a raw internal error).
    pub message: String,
}

/// Why an entry was refused; decides the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// Malformed entry: unknown op, table or column, bad id or value (400).
    Invalid,
    /// The write role or an RLS policy does not allow it (403).
    Denied,
    /// A write handler or a constraint refused the data (422).
    Refused,
}

/// What a hot standby shows (see [`crate::replica`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// `outpost.checkpoint()` there: every op up to it is visible too.
    pub checkpoint: OpId,
    /// `pg_is_in_recovery()`: false once a standby was promoted.
    pub in_recovery: Option<bool>,
}
