//! Builders shared by the tests of the sync modules.

use crate::store::{CheckpointState, OpRow};
use outpost_protocol::{BucketChecksum, Checksum, OpId, OpType, OplogEntry};

pub fn b(name: &str, checksum: u32, priority: Option<i32>) -> BucketChecksum {
    BucketChecksum {
        bucket: name.into(),
        checksum: Checksum(checksum),
        count: None,
        priority,
        subscriptions: None,
    }
}

pub fn state(cp: u64, wc: Option<u64>, buckets: Vec<BucketChecksum>) -> CheckpointState {
    CheckpointState {
        checkpoint: OpId(cp),
        write_checkpoint: wc.map(OpId),
        buckets,
        rules_version: Some(1),
        streams: None,
    }
}

pub fn row(bucket: &str, op_id: u64) -> OpRow {
    OpRow {
        bucket: bucket.into(),
        entry: OplogEntry {
            op_id: OpId(op_id),
            op: OpType::Put,
            object_type: Some("t".into()),
            object_id: Some(op_id.to_string()),
            subkey: None,
            checksum: Checksum(op_id as u32),
            data: Some("{}".into()),
        },
        target_op: None,
    }
}

pub fn pending(v: &[(&str, u64)]) -> Vec<(String, OpId)> {
    v.iter().map(|(b, a)| (b.to_string(), OpId(*a))).collect()
}
