//! Checkpoint to checkpoint: the `checkpoint_diff` between two views, and a
//! view derived from a shared [`Changes`] read instead of a query.

use crate::store::{Changes, CheckpointState};
use outpost_protocol::{BucketChecksum, CheckpointDiff};
use std::collections::HashMap;

pub fn diff(old: &CheckpointState, new: &CheckpointState) -> Option<CheckpointDiff> {
    let before: HashMap<&str, &BucketChecksum> =
        old.buckets.iter().map(|b| (b.bucket.as_str(), b)).collect();
    let after: HashMap<&str, &BucketChecksum> =
        new.buckets.iter().map(|b| (b.bucket.as_str(), b)).collect();
    let updated_buckets: Vec<BucketChecksum> = new
        .buckets
        .iter()
        .filter(|b| match before.get(b.bucket.as_str()) {
            None => true,
            Some(o) => {
                o.checksum != b.checksum
                    || o.priority != b.priority
                    || o.subscriptions != b.subscriptions
            }
        })
        .cloned()
        .collect();
    let removed_buckets: Vec<String> = old
        .buckets
        .iter()
        .filter(|b| !after.contains_key(b.bucket.as_str()))
        .map(|b| b.bucket.clone())
        .collect();
    if updated_buckets.is_empty()
        && removed_buckets.is_empty()
        && old.write_checkpoint == new.write_checkpoint
    {
        return None;
    }
    Some(CheckpointDiff {
        last_op_id: new.checkpoint,
        write_checkpoint: new.write_checkpoint,
        updated_buckets,
        removed_buckets,
    })
}

/// The user's view at `changes.checkpoint`, derived from their view at
/// `changes.since` without asking the database, or `None` when that is not
/// sound and `sync_checkpoint` must be asked: `last` is not at `since`, the
/// rules version is unknown or changed, or bucket sets may have changed.
/// Buckets keep their order and priority; changed ones take the new
/// checksum and count; the write checkpoint of (`user_id`, `client_id`)
/// follows a newer one.
pub fn apply_changes(
    last: &CheckpointState,
    changes: &Changes,
    user_id: &str,
    client_id: &str,
) -> Option<CheckpointState> {
    if last.checkpoint != changes.since
        || !changes.membership_fixed
        || last.rules_version.is_none()
        || last.rules_version != changes.rules_version
    {
        return None;
    }
    let buckets = last
        .buckets
        .iter()
        .map(|b| match changes.buckets.get(&b.bucket) {
            Some((checksum, count)) => BucketChecksum {
                checksum: *checksum,
                count: Some(*count),
                ..b.clone()
            },
            None => b.clone(),
        })
        .collect();
    let write_checkpoint = changes
        .write_checkpoints
        .get(&(user_id.to_string(), client_id.to_string()))
        .copied()
        .or(last.write_checkpoint);
    Some(CheckpointState {
        checkpoint: changes.checkpoint,
        write_checkpoint,
        buckets,
        rules_version: last.rules_version,
        streams: last.streams.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::test_util::{b, state};
    use outpost_protocol::{Checksum, OpId};

    fn changes(since: u64, cp: u64, buckets: &[(&str, u32)]) -> Changes {
        Changes {
            since: OpId(since),
            checkpoint: OpId(cp),
            rules_version: Some(1),
            membership_fixed: true,
            buckets: buckets
                .iter()
                .map(|(b, c)| (b.to_string(), (Checksum(*c), 7)))
                .collect(),
            write_checkpoints: Default::default(),
        }
    }

    #[test]
    fn changes_update_only_held_buckets_and_own_write_checkpoint() {
        let old = state(10, Some(1), vec![b("a[]", 1, None), b("b[]", 2, Some(0))]);
        let mut c = changes(10, 15, &[("b[]", 9), ("other[]", 5)]);
        c.write_checkpoints
            .insert(("u1".into(), "c2".into()), OpId(4));
        let next = apply_changes(&old, &c, "u1", "c1").unwrap();
        assert_eq!(next.checkpoint, OpId(15));
        assert_eq!(next.write_checkpoint, Some(OpId(1)), "another client's");
        assert_eq!(next.buckets[0], old.buckets[0]);
        assert_eq!(next.buckets[1].checksum, Checksum(9));
        assert_eq!(next.buckets[1].count, Some(7));
        assert_eq!(next.buckets[1].priority, Some(0));
        assert_eq!(next.buckets.len(), 2, "buckets the user lacks stay out");
        let next = apply_changes(&old, &c, "u1", "c2").unwrap();
        assert_eq!(next.write_checkpoint, Some(OpId(4)));
        // The same result as the database would give: diff sees only b[].
        let d = diff(&old, &next).unwrap();
        assert_eq!(d.updated_buckets.len(), 1);
    }

    #[test]
    fn changes_are_refused_when_unsound() {
        let old = state(10, None, vec![b("a[]", 1, None)]);
        assert!(apply_changes(&old, &changes(9, 15, &[]), "u", "c").is_none());
        let mut c = changes(10, 15, &[]);
        c.membership_fixed = false;
        assert!(apply_changes(&old, &c, "u", "c").is_none());
        let mut c = changes(10, 15, &[]);
        c.rules_version = Some(2);
        assert!(apply_changes(&old, &c, "u", "c").is_none());
        let mut unknown = old.clone();
        unknown.rules_version = None;
        assert!(apply_changes(&unknown, &changes(10, 15, &[]), "u", "c").is_none());
        assert!(apply_changes(&old, &changes(10, 15, &[]), "u", "c").is_some());
    }

    #[test]
    fn diff_reports_changed_new_and_removed_buckets() {
        let old = state(
            10,
            None,
            vec![b("a[]", 1, None), b("b[]", 2, None), b("c[]", 3, None)],
        );
        let new = state(
            12,
            None,
            vec![b("a[]", 1, None), b("b[]", 5, None), b("d[]", 4, Some(1))],
        );
        let d = diff(&old, &new).unwrap();
        assert_eq!(d.last_op_id, OpId(12));
        let updated: Vec<&str> = d
            .updated_buckets
            .iter()
            .map(|b| b.bucket.as_str())
            .collect();
        assert_eq!(updated, vec!["b[]", "d[]"]);
        assert_eq!(d.removed_buckets, vec!["c[]".to_string()]);
    }

    #[test]
    fn diff_is_none_when_only_op_id_moved_and_some_for_write_checkpoint() {
        let old = state(10, Some(1), vec![b("a[]", 1, None)]);
        assert_eq!(
            diff(&old, &state(11, Some(1), vec![b("a[]", 1, None)])),
            None
        );
        let d = diff(&old, &state(11, Some(2), vec![b("a[]", 1, None)])).unwrap();
        assert!(d.updated_buckets.is_empty() && d.removed_buckets.is_empty());
        assert_eq!(d.write_checkpoint, Some(OpId(2)));
    }
}
