//! Pure sync logic, with no I/O: what changed between two checkpoints, in
//! which order buckets are sent, and how a page of `bucket_ops` rows becomes
//! data lines. The streaming task in `routes::sync_stream` drives it.

use crate::store::{Changes, CheckpointState, OpRow};
use crate::Error;
use outpost_protocol::{BucketChecksum, CheckpointDiff, DataLine, OpId};
use std::collections::HashMap;

/// The `checkpoint_diff` that takes a client from `old` to `new`, or `None`
/// when neither any bucket checksum, the bucket set, nor the write checkpoint
/// changed (a bare op id advance tells the client nothing).
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
            Some(o) => o.checksum != b.checksum || o.priority != b.priority,
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
    })
}

/// Buckets grouped by priority, highest priority (0) first; within a group
/// the input order is kept so output is deterministic.
pub fn priority_groups(buckets: &[BucketChecksum]) -> Vec<(i32, Vec<BucketChecksum>)> {
    let mut groups: Vec<(i32, Vec<BucketChecksum>)> = Vec::new();
    let mut sorted: Vec<&BucketChecksum> = buckets.iter().collect();
    sorted.sort_by_key(|b| b.priority_or_default()); // stable
    for b in sorted {
        let p = b.priority_or_default();
        match groups.last_mut() {
            Some((gp, g)) if *gp == p => g.push(b.clone()),
            _ => groups.push((p, vec![b.clone()])),
        }
    }
    groups
}

/// The result of one `bucket_ops` page.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub lines: Vec<DataLine>,
    /// The highest `target_op` among the page's MOVE/CLEAR ops.
    pub max_target: Option<OpId>,
    /// Buckets still to query, with the op id to continue after. Empty when done.
    pub remaining: Vec<(String, OpId)>,
}

/// Turns one page of rows (for `pending`, in its order) into one data line per
/// bucket. A page shorter than `max_ops` finishes every pending bucket; a full
/// page finishes the buckets before the last one seen, and that one continues.
pub fn page(pending: &[(String, OpId)], rows: Vec<OpRow>, max_ops: u32) -> Result<Page, Error> {
    let full = rows.len() as u64 >= u64::from(max_ops);
    let mut lines: Vec<DataLine> = Vec::new();
    let mut pos = 0usize; // index in `pending` of the bucket of the current line
    let mut max_target: Option<OpId> = None;
    for row in rows {
        max_target = max_target.max(row.target_op);
        if lines.last().map(|l| l.bucket != row.bucket).unwrap_or(true) {
            let idx = pending[pos..]
                .iter()
                .position(|(b, _)| *b == row.bucket)
                .map(|i| i + pos)
                .ok_or_else(|| {
                    Error::Decode(format!(
                        "bucket_ops returned unrequested or unordered bucket {}",
                        row.bucket
                    ))
                })?;
            pos = idx;
            lines.push(DataLine {
                bucket: row.bucket.clone(),
                has_more: false,
                after: Some(pending[idx].1),
                next_after: None,
                data: Vec::new(),
            });
        }
        let line = lines.last_mut().expect("pushed above");
        line.next_after = Some(row.entry.op_id);
        line.data.push(row.entry);
    }
    let mut remaining = Vec::new();
    if full {
        if let Some(last) = lines.last_mut() {
            last.has_more = true;
            let next = last.next_after.expect("a line has at least one op");
            remaining.push((last.bucket.clone(), next));
            remaining.extend(pending[pos + 1..].iter().cloned());
        }
    }
    Ok(Page {
        lines,
        max_target,
        remaining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{Checksum, OpType, OplogEntry};

    fn b(name: &str, checksum: u32, priority: Option<i32>) -> BucketChecksum {
        BucketChecksum {
            bucket: name.into(),
            checksum: Checksum(checksum),
            count: None,
            priority,
        }
    }

    fn state(cp: u64, wc: Option<u64>, buckets: Vec<BucketChecksum>) -> CheckpointState {
        CheckpointState {
            checkpoint: OpId(cp),
            write_checkpoint: wc.map(OpId),
            buckets,
            rules_version: Some(1),
        }
    }

    fn changes(since: u64, cp: u64, buckets: &[(&str, u32)]) -> Changes {
        Changes {
            since: OpId(since),
            checkpoint: OpId(cp),
            rules_version: Some(1),
            membership_fixed: true,
            never_fixed: false,
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

    #[test]
    fn groups_by_priority_zero_first_default_three() {
        let g = priority_groups(&[
            b("x", 0, None),
            b("y", 0, Some(0)),
            b("z", 0, Some(3)),
            b("w", 0, Some(1)),
        ]);
        let shape: Vec<(i32, Vec<&str>)> = g
            .iter()
            .map(|(p, bs)| (*p, bs.iter().map(|b| b.bucket.as_str()).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![(0, vec!["y"]), (1, vec!["w"]), (3, vec!["x", "z"])]
        );
    }

    fn row(bucket: &str, op_id: u64) -> OpRow {
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

    fn pending(v: &[(&str, u64)]) -> Vec<(String, OpId)> {
        v.iter().map(|(b, a)| (b.to_string(), OpId(*a))).collect()
    }

    #[test]
    fn short_page_finishes_everything() {
        let p = page(
            &pending(&[("a", 0), ("b", 5), ("c", 0)]),
            vec![row("a", 1), row("c", 7)],
            10,
        )
        .unwrap();
        assert!(p.remaining.is_empty());
        assert_eq!(p.lines.len(), 2);
        assert_eq!(
            (p.lines[0].after, p.lines[0].next_after),
            (Some(OpId(0)), Some(OpId(1)))
        );
        assert_eq!(p.lines[1].bucket, "c");
        assert!(!p.lines[1].has_more);
    }

    #[test]
    fn full_page_continues_last_bucket_and_later_ones() {
        let p = page(
            &pending(&[("a", 0), ("b", 0), ("c", 0)]),
            vec![row("a", 1), row("b", 2), row("b", 4)],
            3,
        )
        .unwrap();
        assert!(!p.lines[0].has_more);
        assert!(p.lines[1].has_more);
        assert_eq!(p.remaining, pending(&[("b", 4), ("c", 0)]));
    }

    #[test]
    fn unordered_rows_are_an_error() {
        assert!(page(
            &pending(&[("a", 0), ("b", 0)]),
            vec![row("b", 1), row("a", 2)],
            10
        )
        .is_err());
        assert!(page(&pending(&[("a", 0)]), vec![row("zzz", 1)], 10).is_err());
    }
}
