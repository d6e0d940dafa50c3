//! One checkpoint's data: buckets by priority group, and a page of
//! `bucket_ops` rows turned into data lines.

use crate::store::OpRow;
use crate::Error;
use outpost_protocol::{BucketChecksum, DataLine, OpId};

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
        if lines
            .last()
            .map(|l| *l.bucket != *row.bucket)
            .unwrap_or(true)
        {
            let idx = pending[pos..]
                .iter()
                .position(|(b, _)| **b == *row.bucket)
                .map(|i| i + pos)
                .ok_or_else(|| {
                    Error::Decode(format!(
                        "bucket_ops returned unrequested or unordered bucket {}",
                        row.bucket
                    ))
                })?;
            pos = idx;
            lines.push(DataLine {
                bucket: row.bucket.to_string(),
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
    use crate::sync::test_util::{b, pending, row};

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
