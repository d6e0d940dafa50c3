//! An in-memory [`Store`] with the semantics of the extension's SQL API, for
//! tests of the router, the stream and the ticker without Postgres.

use crate::auth::{tests::SECRET, Verifier};
use crate::listener::Announced;
use crate::metrics::Metrics;
use crate::routes::{app, App, AppState, Limits};
use crate::store::{
    Changes, CheckpointState, CrudOutcome, CrudRejection, OpRow, RejectKind, ReplicaStatus, Store,
};
use crate::Error;
use futures_util::future::BoxFuture;
use outpost_protocol::{BucketChecksum, Checksum, OpId, OpType, OplogEntry};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Semaphore};

#[derive(Default)]
pub struct FakeDb {
    pub checkpoint: u64,
    pub write_checkpoint: Option<u64>,
    /// (bucket, priority)
    pub buckets: Vec<(String, Option<i32>)>,
    pub ops: Vec<OpRow>,
    pub last_claims: Option<Value>,
    /// Applied `/crud` batches: (role, entries).
    pub crud: Vec<(String, Vec<Value>)>,
}

#[derive(Default)]
pub struct FakeStore {
    pub db: Mutex<FakeDb>,
    pub fail: AtomicBool,
    pub bucket_ops_calls: AtomicU64,
    pub sync_checkpoint_calls: AtomicU64,
    pub changes_calls: AtomicU64,
    /// When false, `changes_since` answers `None` (a store that cannot say).
    pub shared_changes: AtomicBool,
    pub ticks: AtomicU64,
    pub compactions: AtomicU64,
    /// When set, each tick waits for one permit: lets tests hold a tick in flight.
    pub tick_gate: Option<Arc<Semaphore>>,
}

impl FakeStore {
    /// Appends a PUT to `bucket` at the next op id and publishes it as the checkpoint.
    pub fn put(&self, bucket: &str, id: &str) -> u64 {
        let mut db = self.db.lock().unwrap();
        db.checkpoint += 1;
        let op_id = db.checkpoint;
        if !db.buckets.iter().any(|(b, _)| b == bucket) {
            db.buckets.push((bucket.into(), None));
        }
        db.ops.push(OpRow {
            bucket: bucket.into(),
            entry: OplogEntry {
                op_id: OpId(op_id),
                op: OpType::Put,
                object_type: Some("todos".into()),
                object_id: Some(id.into()),
                subkey: Some("s".into()),
                // Large values make signed vs unsigned totals visible on the wire.
                checksum: Checksum(u32::MAX - op_id as u32),
                data: Some(format!(r#"{{"id":"{id}"}}"#)),
            },
            target_op: None,
        });
        op_id
    }

    fn fail_check(&self) -> Result<(), Error> {
        if self.fail.load(SeqCst) {
            return Err(Error::Decode(
                "secret internal detail: relation outpost.x".into(),
            ));
        }
        Ok(())
    }
}

impl Store for FakeStore {
    fn sync_checkpoint<'a>(
        &'a self,
        claims: &'a Value,
        _params: &'a Value,
        _client_id: &'a str,
        _streams: &'a Value,
    ) -> BoxFuture<'a, Result<CheckpointState, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            self.sync_checkpoint_calls.fetch_add(1, SeqCst);
            let mut db = self.db.lock().unwrap();
            db.last_claims = Some(claims.clone());
            let cp = db.checkpoint;
            let buckets = db
                .buckets
                .iter()
                .map(|(name, priority)| {
                    let ops: Vec<&OpRow> = db
                        .ops
                        .iter()
                        .filter(|o| *o.bucket == **name && o.entry.op_id.0 <= cp)
                        .collect();
                    BucketChecksum {
                        bucket: name.clone(),
                        checksum: ops.iter().map(|o| o.entry.checksum).sum(),
                        count: Some(ops.len() as u64),
                        priority: *priority,
                        subscriptions: None,
                    }
                })
                .collect();
            Ok(CheckpointState {
                checkpoint: OpId(cp),
                write_checkpoint: db.write_checkpoint.map(OpId),
                buckets,
                rules_version: Some(1),
                streams: None,
            })
        })
    }

    fn bucket_ops<'a>(
        &'a self,
        buckets: &'a [String],
        afters: &'a [OpId],
        checkpoint: OpId,
        max_ops: u32,
    ) -> BoxFuture<'a, Result<Vec<OpRow>, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            self.bucket_ops_calls.fetch_add(1, SeqCst);
            let db = self.db.lock().unwrap();
            let mut out = Vec::new();
            for (b, after) in buckets.iter().zip(afters) {
                let mut ops: Vec<&OpRow> = db
                    .ops
                    .iter()
                    .filter(|o| {
                        *o.bucket == **b && o.entry.op_id > *after && o.entry.op_id <= checkpoint
                    })
                    .collect();
                ops.sort_by_key(|o| o.entry.op_id);
                out.extend(ops.into_iter().cloned());
            }
            out.truncate(max_ops as usize);
            Ok(out)
        })
    }

    /// Bucket sets never change here, except that a bucket with its first
    /// op joins every user's set: then the answer says they may have.
    fn changes_since(&self, since: OpId) -> BoxFuture<'_, Result<Option<Changes>, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            self.changes_calls.fetch_add(1, SeqCst);
            if !self.shared_changes.load(SeqCst) {
                return Ok(None);
            }
            let db = self.db.lock().unwrap();
            let mut buckets: HashMap<String, (Checksum, u64)> = HashMap::new();
            for o in db.ops.iter().filter(|o| o.entry.op_id > since) {
                buckets.entry(o.bucket.to_string()).or_default();
            }
            let mut new_bucket = false;
            for (name, v) in buckets.iter_mut() {
                let ops: Vec<&OpRow> = db.ops.iter().filter(|o| *o.bucket == **name).collect();
                new_bucket |= ops.iter().all(|o| o.entry.op_id > since);
                *v = (ops.iter().map(|o| o.entry.checksum).sum(), ops.len() as u64);
            }
            Ok(Some(Changes {
                since,
                checkpoint: OpId(db.checkpoint),
                rules_version: Some(1),
                membership_fixed: !new_bucket,
                buckets,
                write_checkpoints: db
                    .write_checkpoint
                    .map(|w| (("u1".to_string(), String::new()), OpId(w)))
                    .into_iter()
                    .collect(),
            }))
        })
    }

    fn request_write_checkpoint<'a>(
        &'a self,
        _user_id: &'a str,
        _client_id: &'a str,
    ) -> BoxFuture<'a, Result<OpId, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            let mut db = self.db.lock().unwrap();
            let n = db.write_checkpoint.unwrap_or(0) + 1;
            db.write_checkpoint = Some(n);
            Ok(OpId(n))
        })
    }

    /// One sequence per store, as the extension keeps one per (user, client).
    fn request_checkpoint<'a>(
        &'a self,
        _user_id: &'a str,
        _client_id: &'a str,
        request_id: i64,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            let mut db = self.db.lock().unwrap();
            let n = db.write_checkpoint.unwrap_or(0).max(request_id as u64);
            db.write_checkpoint = Some(n);
            Ok(n)
        })
    }

    fn compact(&self) -> BoxFuture<'_, Result<i64, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            self.compactions.fetch_add(1, SeqCst);
            Ok(0)
        })
    }

    fn tick(&self) -> BoxFuture<'_, Result<OpId, Error>> {
        Box::pin(async move {
            if let Some(gate) = &self.tick_gate {
                gate.acquire().await.expect("gate open").forget();
            }
            self.ticks.fetch_add(1, SeqCst);
            self.fail_check()?;
            Ok(OpId(self.db.lock().unwrap().checkpoint))
        })
    }

    fn checkpoint(&self) -> BoxFuture<'_, Result<OpId, Error>> {
        Box::pin(async move { Ok(OpId(self.db.lock().unwrap().checkpoint)) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.fail_check() })
    }

    /// A standby that fails with the others when `fail` is set.
    fn replica_status(&self) -> BoxFuture<'_, Result<ReplicaStatus, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            Ok(ReplicaStatus {
                checkpoint: OpId(self.db.lock().unwrap().checkpoint),
                in_recovery: Some(true),
            })
        })
    }

    fn client_schema(&self) -> BoxFuture<'_, Result<Value, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            Ok(
                serde_json::json!({"tables": [{"name": "todos", "columns": [{"name": "title", "type": "text"}]}]}),
            )
        })
    }

    /// Records the batch; an entry whose type is `"denied"` is refused.
    fn apply_crud<'a>(
        &'a self,
        role: &'a str,
        claims: &'a Value,
        entries: &'a [Value],
    ) -> BoxFuture<'a, Result<CrudOutcome, Error>> {
        Box::pin(async move {
            self.fail_check()?;
            if let Some(index) = entries.iter().position(|e| e["type"] == "denied") {
                return Ok(CrudOutcome::Rejected(CrudRejection {
                    index,
                    kind: RejectKind::Denied,
                    message: "permission denied".into(),
                }));
            }
            let mut db = self.db.lock().unwrap();
            db.last_claims = Some(claims.clone());
            db.crud.push((role.to_string(), entries.to_vec()));
            Ok(CrudOutcome::Applied(entries.len()))
        })
    }
}

/// A router over `store`, plus the senders a running relay's listener and
/// shutdown would own.
pub struct Harness {
    pub app: App,
    pub store: Arc<FakeStore>,
    pub checkpoints: watch::Sender<Announced>,
    pub stop: watch::Sender<bool>,
}

impl Harness {
    pub fn new(store: Arc<FakeStore>, limits: Limits) -> Harness {
        let (checkpoints, cp_rx) = watch::channel(Announced::initial());
        let cp_rx_fresh = cp_rx.clone();
        let (stop, stop_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let state = AppState {
            verifier: Verifier::new(Some(SECRET), None, vec![]).unwrap(),
            store: store.clone(),
            checkpoints: cp_rx,
            shutdown: stop_rx,
            fanout: crate::fanout::Fanout::new(store.clone(), metrics.clone()),
            metrics,
            limits,
            write_role: None,
            cors: crate::routes::cors::layer(&["*".into()]).unwrap(),
            compression: true,
            liveness: {
                let l = crate::liveness::Liveness::new(false);
                l.set_listener(true);
                Arc::new(l)
            },
            freshness: crate::freshness::Freshness::Announced {
                checkpoints: cp_rx_fresh,
                wait: std::time::Duration::ZERO,
            },
        };
        Harness {
            app: app(state),
            store,
            checkpoints,
            stop,
        }
    }

    /// Rebuilds the router with `/crud` enabled (or not) for `role`.
    pub fn set_write_role(&mut self, role: Option<&str>) {
        let cors = self.app.state().cors.clone();
        self.rebuild(role.map(str::to_string), cors);
    }

    /// Rebuilds the router with CORS restricted to `origins`.
    pub fn set_cors(&mut self, origins: &[&str]) {
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        let role = self.app.state().write_role.clone();
        self.rebuild(role, crate::routes::cors::layer(&origins).unwrap());
    }

    fn rebuild(&mut self, write_role: Option<String>, cors: tower_http::cors::CorsLayer) {
        let s = self.app.state();
        let state = AppState {
            verifier: Verifier::new(Some(SECRET), None, vec![]).unwrap(),
            store: self.store.clone(),
            checkpoints: s.checkpoints.clone(),
            shutdown: s.shutdown.clone(),
            fanout: crate::fanout::Fanout::new(self.store.clone(), s.metrics.clone()),
            metrics: s.metrics.clone(),
            limits: s.limits.clone(),
            write_role,
            cors,
            compression: s.compression,
            liveness: s.liveness.clone(),
            freshness: s.freshness.clone(),
        };
        self.app = app(state);
    }

    /// What the listener does on `NOTIFY outpost_checkpoint`.
    pub fn announce(&self) {
        let cp = self.store.db.lock().unwrap().checkpoint;
        crate::listener::publish(&self.checkpoints, &self.app.state().metrics, cp);
    }
}
