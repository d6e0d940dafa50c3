//! Outpost wire types, shared by the relay and the client.
//!
//! Layout:
//! - [`checksum`]: per-op checksums (blake3-derived u32) and wrapping bucket sums.
//! - [`lines`]: the NDJSON lines of `POST /sync/stream` (server → client) and the request body.
//! - [`streams`]: Sync Streams subscriptions in the request, stream statuses in checkpoints.
//! - [`http`]: the small JSON bodies of the other endpoints (`/write-checkpoint2.json`,
//!   `/sync/checkpoint-request`, `/crud`, errors).
//!
//! The shapes follow PowerSync's sync protocol: op ids travel as decimal
//! strings, checksums as 32-bit numbers that may arrive signed, unsigned or as
//! whole floats. Bucket ids are opaque text here; the extension builds them
//! (definition name + compact JSON array of parameter values, e.g.
//! `user_lists["u1"]`, `global[]`).

pub mod checksum;
pub mod http;
pub mod lines;
pub mod streams;

pub use checksum::{op_checksum, Checksum};
pub use lines::{
    BucketChecksum, BucketRequest, Checkpoint, CheckpointComplete, CheckpointDiff, DataLine, OpId,
    OpType, OplogEntry, PartialCheckpointComplete, SyncLine, SyncRequest,
};
pub use streams::{
    BucketReason, StreamDescription, StreamError, StreamSubscription, StreamsRequest,
};

/// Everything that can go wrong decoding the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("stream line is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stream line is not a JSON object with exactly one key: {0}")]
    Shape(String),
    #[error("invalid op id {0:?}: expected a decimal u64")]
    OpId(String),
    #[error("invalid checksum {0}: expected a 32-bit integer")]
    Checksum(String),
}
