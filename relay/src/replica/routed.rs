//! [`RoutedStore`]: the sync path's reads (`sync_checkpoint`,
//! `changes_since`, `bucket_ops`, `client_schema`) go to the standby in
//! rotation; everything that writes or must see the latest state (ticks,
//! compaction, write checkpoints, checkpoint requests, `/crud`, the
//! listener's `checkpoint()`, `/health`'s ping) goes to the primary.
//!
//! A page of ops up to checkpoint `N` is read on the standby only when it is
//! known to show `N` (a stream may hold a checkpoint read from another
//! standby before a switch); otherwise, and when a read on the standby
//! fails (it went away, a recovery conflict cancelled the query), the read
//! is done on the primary, which has every checkpoint, and counted in
//! `outpost_relay_replica_fallback_reads_total`. Reads are idempotent, so
//! retrying one is always safe.

use super::Replicas;
use crate::metrics::Metrics;
use crate::store::{Changes, CheckpointState, CrudOutcome, OpRow, Store};
use crate::Error;
use futures_util::future::BoxFuture;
use outpost_protocol::OpId;
use serde_json::Value;
use std::sync::Arc;

pub struct RoutedStore {
    primary: Arc<dyn Store>,
    replicas: Arc<Replicas>,
    metrics: Arc<Metrics>,
}

impl RoutedStore {
    pub fn new(primary: Arc<dyn Store>, replicas: Arc<Replicas>, metrics: Arc<Metrics>) -> Self {
        RoutedStore {
            primary,
            replicas,
            metrics,
        }
    }

    /// Runs `read` on the standby that shows `needs`, else (or when that
    /// fails) on the primary. Returns which standby answered.
    async fn read<'a, T>(
        &'a self,
        needs: OpId,
        read: impl Fn(&'a dyn Store) -> BoxFuture<'a, Result<T, Error>>,
    ) -> Result<(T, Option<usize>), Error> {
        if let Some(t) = self.replicas.target() {
            if let Some(m) = self.replicas.target_for(needs.0) {
                match read(m.store.as_ref()).await {
                    Ok(v) => return Ok((v, Some(t))),
                    Err(e) => {
                        tracing::warn!(replica = %m.name, error = %e, "read on standby failed; reading from the primary");
                        self.replicas.trouble.notify_one();
                    }
                }
            }
        }
        if !self.replicas.members.is_empty() {
            self.metrics.replica_fallback_reads.inc();
        }
        Ok((read(self.primary.as_ref()).await?, None))
    }

    fn observe(&self, served_by: Option<usize>, checkpoint: OpId) {
        if let Some(m) = served_by.and_then(|i| self.replicas.members.get(i)) {
            m.observe(checkpoint.0);
        }
    }
}

impl Store for RoutedStore {
    fn sync_checkpoint<'a>(
        &'a self,
        claims: &'a Value,
        params: &'a Value,
        client_id: &'a str,
        streams: &'a Value,
    ) -> BoxFuture<'a, Result<CheckpointState, Error>> {
        Box::pin(async move {
            let (state, by) = self
                .read(OpId(0), |s| {
                    s.sync_checkpoint(claims, params, client_id, streams)
                })
                .await?;
            self.observe(by, state.checkpoint);
            Ok(state)
        })
    }

    fn changes_since(&self, since: OpId) -> BoxFuture<'_, Result<Option<Changes>, Error>> {
        Box::pin(async move {
            let (changes, by) = self.read(OpId(0), |s| s.changes_since(since)).await?;
            if let Some(c) = &changes {
                self.observe(by, c.checkpoint);
            }
            Ok(changes)
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
            Ok(self
                .read(checkpoint, |s| {
                    s.bucket_ops(buckets, afters, checkpoint, max_ops)
                })
                .await?
                .0)
        })
    }

    fn client_schema(&self) -> BoxFuture<'_, Result<Value, Error>> {
        Box::pin(async move { Ok(self.read(OpId(0), |s| s.client_schema()).await?.0) })
    }

    fn request_write_checkpoint<'a>(
        &'a self,
        user_id: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<OpId, Error>> {
        self.primary.request_write_checkpoint(user_id, client_id)
    }

    fn request_checkpoint<'a>(
        &'a self,
        user_id: &'a str,
        client_id: &'a str,
        request_id: i64,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        self.primary
            .request_checkpoint(user_id, client_id, request_id)
    }

    fn tick(&self) -> BoxFuture<'_, Result<OpId, Error>> {
        self.primary.tick()
    }

    fn compact(&self) -> BoxFuture<'_, Result<i64, Error>> {
        self.primary.compact()
    }

    fn checkpoint(&self) -> BoxFuture<'_, Result<OpId, Error>> {
        self.primary.checkpoint()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.primary.ping()
    }

    fn apply_crud<'a>(
        &'a self,
        role: &'a str,
        claims: &'a Value,
        entries: &'a [Value],
    ) -> BoxFuture<'a, Result<CrudOutcome, Error>> {
        self.primary.apply_crud(role, claims, entries)
    }
}
