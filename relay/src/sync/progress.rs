//! What one stream has sent, and the steps of sending one checkpoint.
//!
//! [`Progress`] holds, per bucket, the op id the client has everything up
//! to, and the buckets a superseded checkpoint left unfinished (they go out
//! with the next checkpoint even when their checksum did not change).
//!
//! [`Download`] sends one checkpoint's data by priority group: it says which
//! page to read next ([`Step::Fetch`]), takes the rows ([`Download::page`]),
//! and when to send `partial_checkpoint_complete` / `checkpoint_complete`.
//! It stops without completing ([`Step::Superseded`]) when a newer
//! checkpoint was announced while more remains, or when compaction moved an
//! op it sent beyond the checkpoint (a MOVE/CLEAR whose superseding op is
//! newer: checksums would match but rows would not, so that checkpoint must
//! not be completed; the next one carries the rest).

use super::page::{page, priority_groups};
use crate::store::{CheckpointState, OpRow};
use crate::Error;
use outpost_protocol::{BucketChecksum, CheckpointDiff, DataLine, OpId};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Progress {
    /// Per bucket, the op id the client has everything up to.
    afters: HashMap<String, OpId>,
    /// Buckets of the last checkpoint whose data was cut short because a
    /// newer checkpoint superseded it: sent with the next one.
    incomplete: Vec<String>,
}

impl Progress {
    /// Starts from the positions of the client's request.
    pub fn new(requested: impl IntoIterator<Item = (String, OpId)>) -> Progress {
        Progress {
            afters: requested.into_iter().collect(),
            incomplete: Vec::new(),
        }
    }

    /// Forgets buckets the first checkpoint lacks (the client drops them).
    pub fn start(&mut self, initial: &CheckpointState) {
        // A set, not a scan per bucket: a resume can list 100,000 buckets.
        let held: HashSet<&str> = initial.buckets.iter().map(|b| b.bucket.as_str()).collect();
        self.afters.retain(|name, _| held.contains(name.as_str()));
    }

    pub fn has_incomplete(&self) -> bool {
        !self.incomplete.is_empty()
    }

    /// The diff that takes the client from `last` to `next`: the checkpoint
    /// diff, or an empty one when only unfinished buckets are left to send.
    /// `None`: nothing to tell.
    pub fn diff(&self, last: &CheckpointState, next: &CheckpointState) -> Option<CheckpointDiff> {
        super::diff(last, next).or_else(|| {
            self.has_incomplete().then(|| CheckpointDiff {
                last_op_id: next.checkpoint,
                write_checkpoint: next.write_checkpoint,
                updated_buckets: Vec::new(),
                removed_buckets: Vec::new(),
            })
        })
    }

    /// Takes in a diff about to be sent; returns the buckets whose data
    /// follows it: the updated ones, then unfinished ones still held in `next`.
    pub fn advance(&mut self, d: &CheckpointDiff, next: &CheckpointState) -> Vec<BucketChecksum> {
        for removed in &d.removed_buckets {
            self.afters.remove(removed);
        }
        let mut to_send = d.updated_buckets.clone();
        let incomplete = std::mem::take(&mut self.incomplete);
        if incomplete.is_empty() {
            return to_send;
        }
        let mut queued: HashSet<String> = to_send.iter().map(|b| b.bucket.clone()).collect();
        let held: HashMap<&str, &BucketChecksum> = next
            .buckets
            .iter()
            .map(|b| (b.bucket.as_str(), b))
            .collect();
        for name in incomplete {
            if let Some(b) = held.get(name.as_str()) {
                if queued.insert(name) {
                    to_send.push((*b).clone());
                }
            }
        }
        to_send
    }

    fn after(&self, bucket: &str) -> OpId {
        self.afters.get(bucket).copied().unwrap_or_default()
    }
}

/// What the stream does next for a [`Download`].
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Read `bucket_ops(buckets, afters, checkpoint, max_ops)` and hand the
    /// rows to [`Download::page`].
    Fetch {
        buckets: Vec<String>,
        afters: Vec<OpId>,
    },
    /// Send `partial_checkpoint_complete` for this priority.
    Partial(i32),
    /// Send `checkpoint_complete`; the download is over.
    Complete,
    /// Stop without completing; [`Progress`] names what is left.
    Superseded,
}

/// Sending one checkpoint's data (see the module docs).
pub struct Download {
    checkpoint: OpId,
    max_ops: u32,
    groups: Vec<(i32, Vec<BucketChecksum>)>,
    /// Index of the group being sent.
    group: usize,
    /// Buckets of the group still to read, with the op id to continue after;
    /// `None` before the group started.
    pending: Option<Vec<(String, OpId)>>,
    /// Buckets asked for by the last [`Step::Fetch`].
    asked: usize,
    /// A page was taken since the last step.
    paged: bool,
    /// A MOVE/CLEAR points beyond the checkpoint.
    beyond: bool,
}

impl Download {
    pub fn new(checkpoint: OpId, buckets: &[BucketChecksum], max_ops: u32) -> Download {
        Download {
            checkpoint,
            max_ops: max_ops.max(1),
            groups: priority_groups(buckets),
            group: 0,
            pending: None,
            asked: 0,
            paged: false,
            beyond: false,
        }
    }

    /// The next step. `superseded`: a newer checkpoint was announced.
    pub fn next(&mut self, progress: &mut Progress, superseded: bool) -> Step {
        loop {
            let Some((priority, group)) = self.groups.get(self.group) else {
                return Step::Complete;
            };
            let later = self.group + 1 < self.groups.len();
            let cp = self.checkpoint;
            let pending = self.pending.get_or_insert_with(|| {
                group
                    .iter()
                    .map(|b| (b.bucket.clone(), progress.after(&b.bucket)))
                    .filter(|(_, after)| *after < cp)
                    .collect()
            });
            if std::mem::take(&mut self.paged) && (!pending.is_empty() || later) && superseded {
                progress.incomplete = pending.drain(..).map(|(b, _)| b).collect();
                progress.incomplete.extend(self.later_buckets());
                return Step::Superseded;
            }
            if !pending.is_empty() {
                // A page holds at most `max_ops` ops, so asking for more
                // buckets than that per query only ships names that cannot
                // be answered.
                self.asked = pending.len().min(self.max_ops as usize);
                let (buckets, afters) = pending[..self.asked].iter().cloned().unzip();
                return Step::Fetch { buckets, afters };
            }
            for b in group {
                let after = progress.afters.entry(b.bucket.clone()).or_default();
                *after = (*after).max(cp);
            }
            if self.beyond {
                progress.incomplete = self.later_buckets().collect();
                return Step::Superseded;
            }
            let priority = *priority;
            self.group += 1;
            self.pending = None;
            if later {
                return Step::Partial(priority);
            }
        }
    }

    /// Takes the rows of the last [`Step::Fetch`]; returns the data lines to send.
    pub fn page(
        &mut self,
        progress: &mut Progress,
        rows: Vec<OpRow>,
    ) -> Result<Vec<DataLine>, Error> {
        let pending = self.pending.as_mut().expect("page follows a Fetch step");
        let page = page(&pending[..self.asked], rows, self.max_ops)?;
        self.beyond |= page.max_target.is_some_and(|t| t > self.checkpoint);
        for line in &page.lines {
            if let Some(next) = line.next_after {
                progress.afters.insert(line.bucket.clone(), next);
            }
        }
        // What is left of the asked buckets replaces them in place; the
        // rest (up to every bucket of a 100,000-bucket resume) is moved, not
        // copied, on each page.
        pending.splice(..self.asked, page.remaining);
        self.paged = true;
        Ok(page.lines)
    }

    fn later_buckets(&self) -> impl Iterator<Item = String> + '_ {
        self.groups[self.group + 1..]
            .iter()
            .flat_map(|(_, g)| g.iter().map(|b| b.bucket.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::test_util::{b, row, state};

    /// Runs `dl` to its end against `rows_of` (the rows a store would give),
    /// superseding after `supersede_after` pages; returns the steps taken and
    /// the op ids sent per bucket.
    fn run(
        dl: &mut Download,
        progress: &mut Progress,
        supersede_after: usize,
        rows_of: impl Fn(&[String], &[OpId]) -> Vec<OpRow>,
    ) -> (Vec<Step>, Vec<(String, u64)>) {
        let (mut steps, mut sent, mut pages) = (Vec::new(), Vec::new(), 0);
        loop {
            let step = dl.next(progress, pages >= supersede_after);
            if let Step::Fetch { buckets, afters } = &step {
                pages += 1;
                for line in dl.page(progress, rows_of(buckets, afters)).unwrap() {
                    sent.extend(line.data.iter().map(|o| (line.bucket.clone(), o.op_id.0)));
                }
            }
            let end = matches!(step, Step::Complete | Step::Superseded);
            steps.push(step);
            if end {
                return (steps, sent);
            }
        }
    }

    /// Ops `first..=last` of each bucket, `max` at most.
    fn store<'a>(
        ops: &'a [(&'a str, u64, u64)],
        max: usize,
    ) -> impl Fn(&[String], &[OpId]) -> Vec<OpRow> + 'a {
        move |buckets, afters| {
            let mut out = Vec::new();
            for (name, after) in buckets.iter().zip(afters) {
                for (n, first, last) in ops {
                    if n == name {
                        out.extend((*first..=*last).filter(|i| *i > after.0).map(|i| row(n, i)));
                    }
                }
            }
            out.truncate(max);
            out
        }
    }

    fn fetches(steps: &[Step]) -> usize {
        steps
            .iter()
            .filter(|s| matches!(s, Step::Fetch { .. }))
            .count()
    }

    #[test]
    fn groups_complete_in_priority_order_with_partials_between() {
        let buckets = [b("low", 0, None), b("high", 0, Some(0))];
        let mut progress = Progress::new([("low".to_string(), OpId(1))]);
        let mut dl = Download::new(OpId(5), &buckets, 2);
        let ops = [("low", 1, 3), ("high", 4, 4)];
        let (steps, sent) = run(&mut dl, &mut progress, usize::MAX, store(&ops, 2));
        assert_eq!(steps.last(), Some(&Step::Complete));
        assert!(steps.contains(&Step::Partial(0)));
        assert_eq!(
            sent,
            [("high".into(), 4), ("low".into(), 2), ("low".into(), 3)]
        );
        // Every bucket is now at the checkpoint, whether it had ops or not.
        assert_eq!(
            (progress.after("low"), progress.after("high")),
            (OpId(5), OpId(5))
        );
        assert!(!progress.has_incomplete());
    }

    #[test]
    fn a_newer_checkpoint_stops_the_download_and_names_what_is_left() {
        let buckets = [b("a", 0, Some(0)), b("b", 0, Some(0)), b("c", 0, None)];
        let mut progress = Progress::default();
        // Two ops per page: a's and b's first, then superseded while the
        // rest of b (and the group of c) remain.
        let mut dl = Download::new(OpId(9), &buckets, 2);
        let ops = [("a", 1, 1), ("b", 2, 3), ("c", 4, 4)];
        let (steps, sent) = run(&mut dl, &mut progress, 1, store(&ops, 2));
        assert_eq!(steps.last(), Some(&Step::Superseded));
        assert_eq!(sent, [("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(progress.incomplete, ["b", "c"]);
        assert_eq!(
            progress.after("a"),
            OpId(1),
            "not moved to a checkpoint never completed"
        );

        // The next checkpoint changes only c: b still goes out, after c.
        let next = state(
            10,
            None,
            vec![b("a", 0, Some(0)), b("b", 0, Some(0)), b("c", 1, None)],
        );
        let last = state(9, None, buckets.to_vec());
        let d = progress.diff(&last, &next).unwrap();
        let to_send: Vec<String> = progress
            .advance(&d, &next)
            .into_iter()
            .map(|b| b.bucket)
            .collect();
        assert_eq!(to_send, ["c", "b"]);
        assert!(!progress.has_incomplete());
    }

    #[test]
    fn an_unchanged_checkpoint_still_finishes_unfinished_buckets() {
        let mut progress = Progress::default();
        let last = state(9, None, vec![b("a", 1, None)]);
        assert_eq!(
            progress.diff(&last, &state(10, None, vec![b("a", 1, None)])),
            None
        );
        progress.incomplete = vec!["a".into(), "gone".into()];
        let next = state(10, None, vec![b("a", 1, None)]);
        let d = progress.diff(&last, &next).expect("an empty diff");
        assert!(d.updated_buckets.is_empty() && d.removed_buckets.is_empty());
        let to_send: Vec<String> = progress
            .advance(&d, &next)
            .into_iter()
            .map(|b| b.bucket)
            .collect();
        assert_eq!(to_send, ["a"], "a bucket no longer held is not sent");
    }

    #[test]
    fn superseded_after_the_last_page_of_the_last_group_still_completes() {
        let mut progress = Progress::default();
        let mut dl = Download::new(OpId(3), &[b("a", 0, None)], 10);
        let (steps, _) = run(&mut dl, &mut progress, 0, store(&[("a", 1, 3)], 10));
        assert_eq!(fetches(&steps), 1);
        assert_eq!(
            steps.last(),
            Some(&Step::Complete),
            "nothing was left to send"
        );
    }

    #[test]
    fn a_move_beyond_the_checkpoint_holds_back_completion_after_its_group() {
        let buckets = [b("a", 0, Some(0)), b("z", 0, None)];
        let mut progress = Progress::default();
        let mut dl = Download::new(OpId(2), &buckets, 10);
        let moved = |bs: &[String], _: &[OpId]| {
            let mut out = Vec::new();
            if bs[0] == "a" {
                let mut r = row("a", 1);
                r.target_op = Some(OpId(3));
                out.push(r);
            }
            out
        };
        let (steps, sent) = run(&mut dl, &mut progress, usize::MAX, moved);
        assert_eq!(sent, [("a".into(), 1)]);
        assert_eq!(steps.last(), Some(&Step::Superseded));
        assert!(!steps.contains(&Step::Partial(0)));
        assert_eq!(progress.incomplete, ["z"]);
        assert_eq!(progress.after("a"), OpId(2));
    }

    #[test]
    fn no_buckets_completes_at_once_and_start_forgets_unheld_ones() {
        let mut progress =
            Progress::new([("gone".to_string(), OpId(4)), ("a".to_string(), OpId(1))]);
        progress.start(&state(5, None, vec![b("a", 0, None)]));
        assert_eq!(
            (progress.after("gone"), progress.after("a")),
            (OpId(0), OpId(1))
        );
        let mut dl = Download::new(OpId(5), &[], 10);
        assert_eq!(dl.next(&mut progress, true), Step::Complete);
    }
}
