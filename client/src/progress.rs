//! Download progress toward the target checkpoint, overall and per Sync
//! Streams subscription, kept incrementally (no pass over every bucket per
//! data line: a connection may hold 100,000 buckets).
//!
//! The counts are PowerSync's: a bucket's total is its checkpoint `count`
//! less its count at the last applied checkpoint, its downloaded part the ops
//! received for it since then in this session; a subscription's progress sums
//! the buckets the checkpoint lists for it (`subscriptions: [{sub: i} |
//! {default: k}]`), each bucket counted once per subscription. Ops received
//! before a reconnect of the same sync session keep counting (the relay
//! resumes after them); a new session (after an error, or a restart) starts
//! from zero, so its bar starts part-way. The counts are a progress bar's,
//! not exact: compaction between syncs can make `downloaded` pass `total`.

use crate::stream_key::StreamKey;
use outpost_protocol::{BucketChecksum, BucketReason, Checkpoint, StreamSubscription};
use std::collections::HashMap;

/// Ops downloaded out of those the target checkpoint adds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub downloaded: u64,
    pub total: u64,
}

impl Progress {
    fn add(&mut self, total: u64, downloaded: u64) {
        self.total += total;
        self.downloaded += downloaded;
    }

    fn sub(&mut self, total: u64, downloaded: u64) {
        self.total = self.total.saturating_sub(total);
        self.downloaded = self.downloaded.saturating_sub(downloaded);
    }
}

/// One bucket of the target: what it adds, and the subscriptions (indexes
/// into [`DownloadProgress::keys`]) it counts toward.
#[derive(Clone, Debug, Default)]
struct Entry {
    total: u64,
    received: u64,
    groups: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct DownloadProgress {
    buckets: HashMap<String, Entry>,
    overall: Progress,
    /// The subscriptions of the target (request subscriptions first, then the
    /// checkpoint's default streams), each once.
    keys: Vec<StreamKey>,
    index: HashMap<StreamKey, u32>,
    /// Reason → index into `keys`.
    subs: Vec<u32>,
    defaults: Vec<u32>,
    groups: Vec<Progress>,
}

impl DownloadProgress {
    /// A new target checkpoint (answering a request with `subscriptions`):
    /// `at_last(bucket)` is each bucket's count at the last applied
    /// checkpoint. Ops received for buckets still in the target keep counting.
    pub fn retarget(
        &mut self,
        cp: &Checkpoint,
        subscriptions: &[StreamSubscription],
        at_last: impl Fn(&str) -> u64,
    ) {
        let mut received: HashMap<String, Entry> = std::mem::take(&mut self.buckets);
        self.keys.clear();
        self.index.clear();
        self.subs = subscriptions
            .iter()
            .map(|s| self.key_index(StreamKey::of(s)))
            .collect();
        self.defaults = cp
            .streams
            .iter()
            .flatten()
            .map(|s| self.key_index(StreamKey::new(&s.name, None)))
            .collect();
        self.groups = vec![Progress::default(); self.keys.len()];
        self.overall = Progress::default();
        self.buckets.reserve(cp.buckets.len());
        for b in &cp.buckets {
            let got = received.remove(&b.bucket).map_or(0, |e| e.received);
            self.insert(b, at_last(&b.bucket), got);
        }
    }

    /// A checkpoint diff: `removed` buckets leave, `updated` ones replace
    /// their earlier entry (their received ops keep counting).
    pub fn update(
        &mut self,
        updated: &[BucketChecksum],
        removed: &[String],
        at_last: impl Fn(&str) -> u64,
    ) {
        for name in removed {
            self.remove(name);
        }
        for b in updated {
            let got = self.remove(&b.bucket).map_or(0, |e| e.received);
            self.insert(b, at_last(&b.bucket), got);
        }
    }

    /// `n` ops arrived for `bucket`; false if the target does not list it.
    pub fn received(&mut self, bucket: &str, n: u64) -> bool {
        let Some(e) = self.buckets.get_mut(bucket) else {
            return false;
        };
        e.received += n;
        self.overall.downloaded += n;
        for g in &e.groups {
            self.groups[*g as usize].downloaded += n;
        }
        true
    }

    pub fn contains(&self, bucket: &str) -> bool {
        self.buckets.contains_key(bucket)
    }

    /// The target was applied: nothing is left to download.
    pub fn applied(&mut self) {
        for e in self.buckets.values_mut() {
            e.total = 0;
            e.received = 0;
        }
        self.overall = Progress::default();
        self.groups
            .iter_mut()
            .for_each(|g| *g = Progress::default());
    }

    /// A new stream starts: no target until its first checkpoint, which
    /// resumes every bucket after the ops already received, so those keep
    /// counting then.
    pub fn restart(&mut self) {
        for e in self.buckets.values_mut() {
            e.total = 0;
            e.groups.clear();
        }
        self.overall = Progress::default();
        self.keys.clear();
        self.index.clear();
        self.subs.clear();
        self.defaults.clear();
        self.groups.clear();
    }

    /// These buckets are downloaded again from their start.
    pub fn forget(&mut self, buckets: &[String]) {
        for b in buckets {
            self.remove(b);
        }
    }

    pub fn overall(&self) -> Progress {
        self.overall
    }

    /// Each subscription's progress, in the order of the request's
    /// subscriptions then the checkpoint's default streams.
    pub fn streams(&self) -> impl Iterator<Item = (&StreamKey, Progress)> {
        self.keys.iter().zip(self.groups.iter().copied())
    }

    fn key_index(&mut self, key: StreamKey) -> u32 {
        let next = self.keys.len() as u32;
        *self.index.entry(key.clone()).or_insert_with(|| {
            self.keys.push(key);
            next
        })
    }

    fn insert(&mut self, b: &BucketChecksum, at_last: u64, received: u64) {
        let total = b.count.unwrap_or(0).saturating_sub(at_last);
        let mut groups: Vec<u32> = b
            .subscriptions
            .iter()
            .flatten()
            .filter_map(|r| match r {
                BucketReason::Sub(i) => self.subs.get(*i as usize).copied(),
                BucketReason::Default(k) => self.defaults.get(*k as usize).copied(),
            })
            .collect();
        groups.sort_unstable();
        groups.dedup();
        self.overall.add(total, received);
        for g in &groups {
            self.groups[*g as usize].add(total, received);
        }
        self.buckets.insert(
            b.bucket.clone(),
            Entry {
                total,
                received,
                groups,
            },
        );
    }

    fn remove(&mut self, bucket: &str) -> Option<Entry> {
        let e = self.buckets.remove(bucket)?;
        self.overall.sub(e.total, e.received);
        for g in &e.groups {
            self.groups[*g as usize].sub(e.total, e.received);
        }
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cp(v: serde_json::Value) -> Checkpoint {
        serde_json::from_value(v).unwrap()
    }

    fn of(p: &DownloadProgress, name: &str, params: serde_json::Value) -> Progress {
        let key = StreamKey::new(name, Some(&params));
        p.streams()
            .find(|(k, _)| **k == key)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no progress for {key:?}"))
    }

    #[test]
    fn per_subscription_counts_from_checkpoint_counts_and_received_ops() {
        let subs: Vec<StreamSubscription> = serde_json::from_value(json!([
            {"stream": "list_todos", "parameters": {"list_id": "a"}},
            {"stream": "list_todos", "parameters": {"list_id": "b"}},
            // The default stream subscribed explicitly too: one key.
            {"stream": "my_lists", "parameters": null}]))
        .unwrap();
        let first = cp(json!({"last_op_id": "9", "buckets": [
            {"bucket": "todos[\"a\"]", "checksum": 0, "count": 10, "subscriptions": [{"sub": 0}]},
            {"bucket": "todos[\"b\"]", "checksum": 0, "count": 4, "subscriptions": [{"sub": 1}]},
            {"bucket": "lists[\"u\"]", "checksum": 0, "count": 5, "subscriptions": [{"default": 0}, {"sub": 2}]},
            {"bucket": "shared[]", "checksum": 0, "count": 2, "subscriptions": [{"sub": 0}, {"sub": 1}]}],
            "streams": [{"name": "my_lists", "is_default": true, "errors": []}]}));
        let mut p = DownloadProgress::default();
        // `a` had 6 ops at the last applied checkpoint.
        p.retarget(&first, &subs, |b| if b == "todos[\"a\"]" { 6 } else { 0 });
        assert_eq!(
            p.overall(),
            Progress {
                downloaded: 0,
                total: 15
            }
        );
        assert_eq!(of(&p, "list_todos", json!({"list_id": "a"})).total, 6);
        assert_eq!(of(&p, "list_todos", json!({"list_id": "b"})).total, 6);
        assert_eq!(of(&p, "my_lists", json!(null)).total, 5);
        assert_eq!(p.streams().count(), 3);

        assert!(p.received("todos[\"a\"]", 3));
        assert!(p.received("shared[]", 2));
        assert!(p.received("lists[\"u\"]", 1));
        assert!(!p.received("other[]", 1));
        assert_eq!(
            of(&p, "list_todos", json!({"list_id": "a"})),
            Progress {
                downloaded: 5,
                total: 6
            }
        );
        assert_eq!(
            of(&p, "list_todos", json!({"list_id": "b"})),
            Progress {
                downloaded: 2,
                total: 6
            }
        );
        assert_eq!(
            of(&p, "my_lists", json!(null)),
            Progress {
                downloaded: 1,
                total: 5
            }
        );
        assert_eq!(
            p.overall(),
            Progress {
                downloaded: 6,
                total: 15
            }
        );

        // A diff: `b` leaves, `a` grows by two; what `a` received still counts.
        let grown: Vec<BucketChecksum> = serde_json::from_value(json!([
            {"bucket": "todos[\"a\"]", "checksum": 0, "count": 12, "subscriptions": [{"sub": 0}]}]))
        .unwrap();
        p.update(&grown, &["todos[\"b\"]".to_string()], |b| {
            if b == "todos[\"a\"]" {
                6
            } else {
                0
            }
        });
        assert_eq!(
            of(&p, "list_todos", json!({"list_id": "a"})),
            Progress {
                downloaded: 5,
                total: 8
            }
        );
        assert_eq!(
            of(&p, "list_todos", json!({"list_id": "b"})),
            Progress {
                downloaded: 2,
                total: 2
            }
        );
        assert_eq!(
            p.overall(),
            Progress {
                downloaded: 6,
                total: 13
            }
        );

        // A new full checkpoint keeps the ops received for buckets it lists.
        p.retarget(&first, &subs, |_| 0);
        assert_eq!(of(&p, "list_todos", json!({"list_id": "a"})).downloaded, 5);
        // A reconnect: the ops received so far count toward the next target;
        // a bucket downloaded again from its start does not.
        p.restart();
        assert_eq!((p.overall(), p.streams().count()), (Progress::default(), 0));
        p.forget(&["shared[]".to_string()]);
        p.retarget(&first, &subs, |_| 0);
        assert_eq!(
            of(&p, "list_todos", json!({"list_id": "a"})),
            Progress {
                downloaded: 3,
                total: 12
            }
        );
        p.applied();
        assert_eq!(p.overall(), Progress::default());
        assert!(p.streams().all(|(_, g)| g == Progress::default()));
    }
}
