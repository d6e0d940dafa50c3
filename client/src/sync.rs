//! The sync state machine: stream lines in, instructions out. No IO here.
//!
//! The machine decides *what* happens (which buckets to delete, when a checkpoint is
//! complete, what to request on reconnect); [`crate::store::Store::execute`] carries
//! out the database instructions and feeds results back through
//! [`SyncState::sync_local_done`]; the async driver carries out the network ones.
//! The checksum and gate rules are plain functions ([`failed_buckets`], [`gate_open`])
//! so they can be tested without SQLite.

use crate::error::{Error, Result};
use crate::progress::DownloadProgress;
pub use crate::progress::Progress;
use crate::stream_key::StreamKey;
use outpost_protocol::{
    BucketRequest, Checkpoint, Checksum, DataLine, OpId, StreamsRequest, SyncLine, SyncRequest,
};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Where the local database stands in one bucket (read from `ps_buckets` at start).
#[derive(Clone, Debug, PartialEq)]
pub struct BucketPosition {
    pub name: String,
    pub last_op: OpId,
    /// The bucket's op count at the last applied checkpoint (for progress).
    pub count_at_last: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Instruction {
    /// Close the current stream (if any) and open one with this request.
    EstablishStream(SyncRequest),
    /// Store a data line's ops in the bucket's oplog.
    SaveData(DataLine),
    /// Forget these buckets' ops; rows only they held disappear at the next apply.
    DeleteBuckets(Vec<String>),
    /// Validate checksums and, if valid and the gate allows, apply the checkpoint
    /// (only buckets with priority `<= p` for a partial one).
    SyncLocal {
        checkpoint: Checkpoint,
        priority: Option<i32>,
    },
    /// The token is about to expire (or did): get new credentials and reconnect.
    FetchCredentials { expired: bool },
}

/// What the database adapter reports back after a [`Instruction::SyncLocal`].
#[derive(Clone, Debug, PartialEq)]
pub enum SyncLocalOutcome {
    Applied,
    /// These buckets' local checksums disagree with the checkpoint; nothing was applied.
    ChecksumFailed(Vec<String>),
    /// Valid, but a local write has not round-tripped yet; retry after upload.
    Blocked,
}

#[derive(Debug)]
pub struct SyncState {
    client_id: String,
    parameters: Map<String, Value>,
    /// Sync Streams subscriptions sent with every request (None: defaults only).
    streams: Option<StreamsRequest>,
    positions: BTreeMap<String, BucketPosition>,
    target: Option<Checkpoint>,
    /// A complete checkpoint the gate held back.
    blocked: bool,
    applied: Option<OpId>,
    progress: DownloadProgress,
}

impl SyncState {
    pub fn new(
        client_id: String,
        parameters: Map<String, Value>,
        positions: Vec<BucketPosition>,
    ) -> SyncState {
        SyncState {
            client_id,
            parameters,
            streams: None,
            positions: positions.into_iter().map(|p| (p.name.clone(), p)).collect(),
            target: None,
            blocked: false,
            applied: None,
            progress: DownloadProgress::default(),
        }
    }

    /// Sets the Sync Streams subscriptions the next request carries; the
    /// caller restarts the stream (as PowerSync's clients do) for a change
    /// to take effect. Buckets both sets share keep their position.
    pub fn set_streams(&mut self, streams: Option<StreamsRequest>) {
        self.streams = streams;
    }

    pub fn streams(&self) -> Option<&StreamsRequest> {
        self.streams.as_ref()
    }

    /// Begins (or restarts) a stream. Stream-scoped state is dropped: the server
    /// always opens with a full checkpoint.
    pub fn start(&mut self) -> Vec<Instruction> {
        self.target = None;
        self.blocked = false;
        self.progress.restart();
        vec![Instruction::EstablishStream(self.request())]
    }

    /// The request that resumes every known bucket from its last stored op.
    pub fn request(&self) -> SyncRequest {
        SyncRequest {
            buckets: self
                .positions
                .values()
                .map(|p| BucketRequest {
                    name: p.name.clone(),
                    after: p.last_op,
                })
                .collect(),
            include_checksum: true,
            raw_data: true,
            client_id: Some(self.client_id.clone()),
            parameters: Some(self.parameters.clone()),
            streams: self.streams.clone(),
        }
    }

    pub fn target(&self) -> Option<&Checkpoint> {
        self.target.as_ref()
    }

    /// The last checkpoint fully applied during this session.
    pub fn applied(&self) -> Option<OpId> {
        self.applied
    }

    pub fn progress(&self) -> Progress {
        self.progress.overall()
    }

    /// Download progress per Sync Streams subscription of the target
    /// checkpoint (its buckets' ops), keyed as the subscription bookkeeping
    /// keys them.
    pub fn stream_progress(&self) -> impl Iterator<Item = (&StreamKey, Progress)> {
        self.progress.streams()
    }

    pub fn handle_line(&mut self, line: SyncLine) -> Result<Vec<Instruction>> {
        match line {
            SyncLine::Checkpoint(cp) => {
                let listed: HashSet<&str> = cp.buckets.iter().map(|b| b.bucket.as_str()).collect();
                let removed: Vec<String> = self
                    .positions
                    .keys()
                    .filter(|name| !listed.contains(name.as_str()))
                    .cloned()
                    .collect();
                let positions = &self.positions;
                let subs = self.streams.as_ref().map_or(&[][..], |s| &s.subscriptions);
                self.progress.retarget(&cp, subs, |b| {
                    positions.get(b).map_or(0, |p| p.count_at_last)
                });
                self.set_target(cp);
                Ok(self.delete(removed))
            }
            SyncLine::CheckpointDiff(diff) => {
                let Some(mut cp) = self.target.take() else {
                    return Err(Error::Protocol(
                        "checkpoint_diff before any checkpoint".into(),
                    ));
                };
                let positions = &self.positions;
                self.progress
                    .update(&diff.updated_buckets, &diff.removed_buckets, |b| {
                        positions.get(b).map_or(0, |p| p.count_at_last)
                    });
                // Sets: a connection may hold 100,000 buckets.
                let gone: HashSet<&str> = diff
                    .removed_buckets
                    .iter()
                    .chain(diff.updated_buckets.iter().map(|u| &u.bucket))
                    .map(String::as_str)
                    .collect();
                cp.buckets.retain(|b| !gone.contains(b.bucket.as_str()));
                cp.buckets.extend(diff.updated_buckets);
                cp.last_op_id = diff.last_op_id;
                cp.write_checkpoint = diff.write_checkpoint;
                self.set_target(cp);
                let removed = diff
                    .removed_buckets
                    .into_iter()
                    .filter(|b| self.positions.contains_key(b))
                    .collect();
                Ok(self.delete(removed))
            }
            SyncLine::Data(data) => {
                let Some(cp) = &self.target else {
                    return Err(Error::Protocol(format!(
                        "data for bucket {:?} before any checkpoint",
                        data.bucket
                    )));
                };
                if !self.progress.contains(&data.bucket) {
                    return Err(Error::Protocol(format!(
                        "data for bucket {:?}, which is not in checkpoint {}",
                        data.bucket, cp.last_op_id
                    )));
                }
                let last = data.data.iter().map(|op| op.op_id).max();
                let pos = self
                    .positions
                    .entry(data.bucket.clone())
                    .or_insert_with(|| BucketPosition {
                        name: data.bucket.clone(),
                        last_op: OpId(0),
                        count_at_last: 0,
                    });
                if let Some(last) = last {
                    pos.last_op = pos.last_op.max(last);
                }
                self.progress.received(&data.bucket, data.data.len() as u64);
                Ok(vec![Instruction::SaveData(data)])
            }
            SyncLine::CheckpointComplete(c) => {
                let cp = self.expect_target(c.last_op_id, "checkpoint_complete")?;
                Ok(vec![Instruction::SyncLocal {
                    checkpoint: cp,
                    priority: None,
                }])
            }
            SyncLine::PartialCheckpointComplete(c) => {
                let cp = self.expect_target(c.last_op_id, "partial_checkpoint_complete")?;
                Ok(vec![Instruction::SyncLocal {
                    checkpoint: cp,
                    priority: Some(c.priority),
                }])
            }
            SyncLine::TokenExpiresIn(s) if s <= 0 => {
                Ok(vec![Instruction::FetchCredentials { expired: true }])
            }
            SyncLine::TokenExpiresIn(s) if s <= 30 => {
                Ok(vec![Instruction::FetchCredentials { expired: false }])
            }
            SyncLine::TokenExpiresIn(_) => Ok(vec![]),
        }
    }

    /// Feeds back the result of a [`Instruction::SyncLocal`].
    pub fn sync_local_done(
        &mut self,
        priority: Option<i32>,
        outcome: &SyncLocalOutcome,
    ) -> Vec<Instruction> {
        match outcome {
            SyncLocalOutcome::Applied => {
                if priority.is_none() {
                    self.blocked = false;
                    if let Some(cp) = &self.target {
                        self.applied = Some(cp.last_op_id);
                        for b in &cp.buckets {
                            if let Some(p) = self.positions.get_mut(&b.bucket) {
                                p.count_at_last = b.count.unwrap_or(p.count_at_last);
                            }
                        }
                    }
                    self.progress.applied();
                }
                vec![]
            }
            SyncLocalOutcome::Blocked => {
                if priority.is_none() {
                    self.blocked = true;
                }
                vec![]
            }
            SyncLocalOutcome::ChecksumFailed(buckets) => {
                self.progress.forget(buckets);
                for b in buckets {
                    // Kept at 0 rather than dropped so the re-request is explicit.
                    self.positions.insert(
                        b.clone(),
                        BucketPosition {
                            name: b.clone(),
                            last_op: OpId(0),
                            count_at_last: 0,
                        },
                    );
                }
                let mut out = vec![Instruction::DeleteBuckets(buckets.clone())];
                out.extend(self.start());
                out
            }
        }
    }

    /// The upload queue drained and a write checkpoint was stored: a checkpoint
    /// held back by the gate may apply now.
    pub fn upload_completed(&mut self) -> Vec<Instruction> {
        match (&self.target, self.blocked) {
            (Some(cp), true) => vec![Instruction::SyncLocal {
                checkpoint: cp.clone(),
                priority: None,
            }],
            _ => vec![],
        }
    }

    fn set_target(&mut self, cp: Checkpoint) {
        self.target = Some(cp);
        self.blocked = false;
    }

    fn delete(&mut self, buckets: Vec<String>) -> Vec<Instruction> {
        if buckets.is_empty() {
            return vec![];
        }
        for b in &buckets {
            self.positions.remove(b);
        }
        vec![Instruction::DeleteBuckets(buckets)]
    }

    fn expect_target(&self, last_op_id: OpId, what: &str) -> Result<Checkpoint> {
        match &self.target {
            None => Err(Error::Protocol(format!("{what} before any checkpoint"))),
            Some(cp) if cp.last_op_id != last_op_id => Err(Error::Protocol(format!(
                "{what} for {last_op_id}, but the current checkpoint is {}",
                cp.last_op_id
            ))),
            Some(cp) => Ok(cp.clone()),
        }
    }
}

/// The buckets (with priority `<= priority`, or all) whose local checksum
/// (`add_checksum + op_checksum`) differs from the checkpoint's. A bucket with no
/// local state counts as zero.
pub fn failed_buckets(
    cp: &Checkpoint,
    priority: Option<i32>,
    local: &HashMap<String, Checksum>,
) -> Vec<String> {
    cp.buckets
        .iter()
        .filter(|b| priority.is_none_or(|p| b.priority_or_default() <= p))
        .filter(|b| local.get(&b.bucket).copied().unwrap_or(Checksum::ZERO) != b.checksum)
        .map(|b| b.bucket.clone())
        .collect()
}

/// Whether a validated checkpoint may be applied (read-your-own-writes gate).
/// `target` is the write checkpoint requested after the last upload (`i64::MAX`
/// while a write is pending and none was requested yet).
pub fn gate_open(
    priority: Option<i32>,
    crud_empty: bool,
    target: Option<OpId>,
    checkpoint_write: Option<OpId>,
) -> bool {
    if priority == Some(0) {
        return true;
    }
    if !crud_empty {
        return false;
    }
    match target {
        None => true,
        Some(t) => checkpoint_write.is_some_and(|w| w >= t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::BucketChecksum;

    fn line(s: &str) -> SyncLine {
        SyncLine::parse(s).unwrap().unwrap()
    }

    fn machine(positions: &[(&str, u64)]) -> SyncState {
        SyncState::new(
            "c1".into(),
            Map::new(),
            positions
                .iter()
                .map(|(n, o)| BucketPosition {
                    name: n.to_string(),
                    last_op: OpId(*o),
                    count_at_last: 0,
                })
                .collect(),
        )
    }

    #[test]
    fn start_requests_stored_positions() {
        let mut m = machine(&[("a[]", 5), ("b[]", 9)]);
        let out = m.start();
        let [Instruction::EstablishStream(req)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            serde_json::to_value(req).unwrap(),
            serde_json::json!({"buckets":[{"name":"a[]","after":"5"},{"name":"b[]","after":"9"}],
                "include_checksum":true,"raw_data":true,"client_id":"c1","parameters":{}})
        );
    }

    #[test]
    fn diff_before_checkpoint_is_a_protocol_error() {
        let mut m = machine(&[]);
        let err = m
            .handle_line(line(r#"{"checkpoint_diff":{"last_op_id":"3","updated_buckets":[],"removed_buckets":[]}}"#))
            .unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
        assert!(m
            .handle_line(line(r#"{"checkpoint_complete":{"last_op_id":"3"}}"#))
            .is_err());
        assert!(m
            .handle_line(line(r#"{"data":{"bucket":"a[]","data":[]}}"#))
            .is_err());
    }

    #[test]
    fn checkpoint_drops_unlisted_buckets_and_diff_drops_removed() {
        let mut m = machine(&[("a[]", 5), ("old[]", 2)]);
        m.start();
        let out = m
            .handle_line(line(r#"{"checkpoint":{"last_op_id":"10","buckets":[{"bucket":"a[]","checksum":1},{"bucket":"b[]","checksum":2}]}}"#))
            .unwrap();
        assert_eq!(out, vec![Instruction::DeleteBuckets(vec!["old[]".into()])]);
        let out = m
            .handle_line(line(r#"{"checkpoint_diff":{"last_op_id":"12","write_checkpoint":"4","updated_buckets":[{"bucket":"b[]","checksum":7}],"removed_buckets":["a[]"]}}"#))
            .unwrap();
        assert_eq!(out, vec![Instruction::DeleteBuckets(vec!["a[]".into()])]);
        let cp = m.target().unwrap();
        assert_eq!(cp.last_op_id, OpId(12));
        assert_eq!(cp.write_checkpoint, Some(OpId(4)));
        assert_eq!(
            cp.buckets,
            vec![BucketChecksum {
                bucket: "b[]".into(),
                checksum: Checksum(7),
                count: None,
                priority: None,
                subscriptions: None,
            }]
        );
        assert_eq!(m.request().buckets, vec![]);
    }

    #[test]
    fn complete_must_match_the_target() {
        let mut m = machine(&[]);
        m.handle_line(line(r#"{"checkpoint":{"last_op_id":"10","buckets":[]}}"#))
            .unwrap();
        assert!(m
            .handle_line(line(r#"{"checkpoint_complete":{"last_op_id":"9"}}"#))
            .is_err());
        let out = m
            .handle_line(line(
                r#"{"partial_checkpoint_complete":{"last_op_id":"10","priority":1}}"#,
            ))
            .unwrap();
        assert!(matches!(
            &out[..],
            [Instruction::SyncLocal {
                priority: Some(1),
                ..
            }]
        ));
    }

    #[test]
    fn checksum_failure_rerequests_bucket_from_zero() {
        let mut m = machine(&[("a[]", 5), ("b[]", 7)]);
        m.start();
        let out = m.sync_local_done(None, &SyncLocalOutcome::ChecksumFailed(vec!["a[]".into()]));
        assert_eq!(out[0], Instruction::DeleteBuckets(vec!["a[]".into()]));
        let Instruction::EstablishStream(req) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(
            req.buckets,
            vec![
                BucketRequest {
                    name: "a[]".into(),
                    after: OpId(0)
                },
                BucketRequest {
                    name: "b[]".into(),
                    after: OpId(7)
                }
            ]
        );
    }

    #[test]
    fn blocked_checkpoint_retries_after_upload() {
        let mut m = machine(&[]);
        m.handle_line(line(r#"{"checkpoint":{"last_op_id":"10","buckets":[]}}"#))
            .unwrap();
        assert!(m.upload_completed().is_empty());
        m.sync_local_done(None, &SyncLocalOutcome::Blocked);
        assert!(matches!(
            &m.upload_completed()[..],
            [Instruction::SyncLocal { priority: None, .. }]
        ));
    }

    /// A resume holding 100,000 buckets: the checkpoint, a diff and every
    /// data line are handled by lookups, not scans per bucket (which took
    /// minutes here).
    #[test]
    fn a_hundred_thousand_buckets_resume_without_scans() {
        const N: u64 = 100_000;
        let names: Vec<String> = (0..N).map(|i| format!("b[\"{i}\"]")).collect();
        let mut m = SyncState::new(
            "c1".into(),
            Map::new(),
            names
                .iter()
                .map(|n| BucketPosition {
                    name: n.clone(),
                    last_op: OpId(1),
                    count_at_last: 1,
                })
                .collect(),
        );
        m.start();
        let bucket = |n: &String, count: u64| BucketChecksum {
            bucket: n.clone(),
            checksum: Checksum(0),
            count: Some(count),
            priority: None,
            subscriptions: Some(vec![outpost_protocol::BucketReason::Default(0)]),
        };
        let started = std::time::Instant::now();
        let cp = Checkpoint {
            last_op_id: OpId(N + 1),
            write_checkpoint: None,
            buckets: names.iter().map(|n| bucket(n, 2)).collect(),
            streams: None,
        };
        assert_eq!(m.handle_line(SyncLine::Checkpoint(cp)).unwrap(), vec![]);
        assert_eq!(
            m.progress(),
            Progress {
                downloaded: 0,
                total: N
            }
        );
        let diff = outpost_protocol::CheckpointDiff {
            last_op_id: OpId(N + 2),
            write_checkpoint: None,
            updated_buckets: names[..1000].iter().map(|n| bucket(n, 3)).collect(),
            removed_buckets: names[N as usize - 1000..].to_vec(),
        };
        let out = m.handle_line(SyncLine::CheckpointDiff(diff)).unwrap();
        assert!(matches!(&out[..], [Instruction::DeleteBuckets(b)] if b.len() == 1000));
        for (i, n) in names[..N as usize - 1000].iter().enumerate() {
            let line = format!(
                r#"{{"data":{{"bucket":{},"data":[{{"op_id":"{}","op":"PUT","object_type":"t","object_id":"x","checksum":0,"data":"{{}}"}}]}}}}"#,
                serde_json::to_string(n).unwrap(),
                i + 2
            );
            m.handle_line(SyncLine::parse(&line).unwrap().unwrap())
                .unwrap();
        }
        assert_eq!(
            m.progress(),
            Progress {
                downloaded: N - 1000,
                total: N
            }
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn token_expiry() {
        let mut m = machine(&[]);
        assert_eq!(
            m.handle_line(SyncLine::TokenExpiresIn(3600)).unwrap(),
            vec![]
        );
        assert_eq!(
            m.handle_line(SyncLine::TokenExpiresIn(0)).unwrap(),
            vec![Instruction::FetchCredentials { expired: true }]
        );
    }

    #[test]
    fn checksum_and_gate_rules() {
        let cp: Checkpoint = serde_json::from_str(
            r#"{"last_op_id":"1","buckets":[{"bucket":"a","checksum":-1,"priority":1},{"bucket":"b","checksum":3}]}"#,
        )
        .unwrap();
        let mut local = HashMap::new();
        local.insert("a".to_string(), Checksum(u32::MAX));
        assert_eq!(failed_buckets(&cp, None, &local), vec!["b".to_string()]);
        assert!(failed_buckets(&cp, Some(1), &local).is_empty());

        assert!(gate_open(None, true, None, None));
        assert!(!gate_open(None, false, None, None));
        assert!(gate_open(Some(0), false, None, None));
        assert!(!gate_open(None, true, Some(OpId(5)), Some(OpId(4))));
        assert!(gate_open(None, true, Some(OpId(5)), Some(OpId(5))));
        assert!(!gate_open(Some(2), true, Some(OpId(5)), None));
    }
}
