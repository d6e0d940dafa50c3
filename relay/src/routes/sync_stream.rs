//! `POST /sync/stream`: the NDJSON sync stream.
//!
//! The first `sync_checkpoint` runs before the response starts, so a database
//! failure is a plain 500 rather than a 200 that ends at once. After that a
//! task per stream produces lines into a bounded channel that the response
//! body drains: a slow client fills the channel, the task waits on `send`,
//! and nothing more is read from the database for it, which bounds memory.

use super::{authenticate, check_content_length, read_json, AppState, ResBody};
use crate::auth::{now_secs, Claims};
use crate::listener::Announced;
use crate::metrics::GaugeGuard;
use crate::store::CheckpointState;
use crate::sync::{diff, page, priority_groups};
use crate::Error;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use outpost_protocol::{
    BucketChecksum, Checkpoint, CheckpointComplete, OpId, PartialCheckpointComplete, SyncLine,
    SyncRequest,
};
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResBody>, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let claims = authenticate(&state, &req)?;
    check_content_length(&req, state.limits.max_body_bytes)?;
    let request: SyncRequest = read_json(req.into_body(), state.limits.max_body_bytes).await?;
    let params = Value::Object(request.parameters.clone().unwrap_or_default());
    let client_id = request.client_id.clone().unwrap_or_default();

    // Mark the current checkpoint seen before reading: anything announced
    // from here on wakes the stream, so nothing falls between the two.
    let mut checkpoints = state.checkpoints.clone();
    checkpoints.borrow_and_update();
    let initial = state
        .store
        .sync_checkpoint(&claims.raw, &params, &client_id)
        .await?;

    let (tx, rx) = mpsc::channel(state.limits.stream_buffer.max(1));
    let afters: HashMap<String, OpId> = request
        .buckets
        .iter()
        .map(|b| (b.name.clone(), b.after))
        .collect();
    let stream = Stream {
        state: state.clone(),
        tx,
        claims,
        params,
        client_id,
        afters,
    };
    tokio::spawn(stream.run(initial, checkpoints));

    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(ChannelBody { rx }.boxed())
        .expect("static response parts are valid"))
}

/// The response body: lines from the stream's task, as they come.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Why a stream stopped without an error.
#[derive(Debug)]
enum End {
    ClientGone,
    TokenExpired,
    Shutdown,
}

enum Stop {
    End(End),
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Failed(e)
    }
}

struct Stream {
    state: Arc<AppState>,
    tx: mpsc::Sender<Bytes>,
    claims: Claims,
    params: Value,
    client_id: String,
    /// Per bucket, the op id the client has everything up to.
    afters: HashMap<String, OpId>,
}

impl Stream {
    async fn run(mut self, initial: CheckpointState, checkpoints: watch::Receiver<Announced>) {
        let state = self.state.clone();
        state.metrics.streams_total.fetch_add(1, Relaxed);
        let _open = GaugeGuard::new(&state.metrics.streams_open);
        let sub = self.claims.sub.clone();
        match self.drive(initial, checkpoints).await {
            Stop::End(end) => tracing::debug!(sub, ?end, "sync stream ended"),
            // The status line is long gone; ending the body makes the client reconnect.
            Stop::Failed(e) => tracing::error!(sub, error = %e, "sync stream failed"),
        }
    }

    async fn drive(
        &mut self,
        initial: CheckpointState,
        mut checkpoints: watch::Receiver<Announced>,
    ) -> Stop {
        // Buckets the client holds but the checkpoint lacks are dropped by the client.
        self.afters
            .retain(|name, _| initial.buckets.iter().any(|b| &b.bucket == name));
        let line = SyncLine::Checkpoint(Checkpoint {
            last_op_id: initial.checkpoint,
            write_checkpoint: initial.write_checkpoint,
            buckets: initial.buckets.clone(),
        });
        if let Err(s) = self.send(&line).await {
            return s;
        }
        if let Err(s) = self.send_data(initial.checkpoint, &initial.buckets).await {
            return s;
        }
        let mut last = initial;

        let keepalive_every = self.state.limits.keepalive;
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + keepalive_every,
            keepalive_every,
        );
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expires_in = (self.claims.exp - now_secs() as i64).max(0) as u64;
        let expiry = tokio::time::sleep(Duration::from_secs(expires_in));
        tokio::pin!(expiry);
        let mut shutdown = self.state.shutdown.clone();

        loop {
            tokio::select! {
                changed = checkpoints.changed() => {
                    if changed.is_err() {
                        return Stop::End(End::Shutdown);
                    }
                    let announced = *checkpoints.borrow_and_update();
                    if announced.checkpoint <= last.checkpoint.0 {
                        continue;
                    }
                    match self.advance(&last, announced.at).await {
                        Ok(Some(next)) => last = next,
                        Ok(None) => {}
                        Err(s) => return s,
                    }
                }
                _ = keepalive.tick() => {
                    let left = (self.claims.exp - now_secs() as i64).max(0);
                    if let Err(s) = self.send(&SyncLine::TokenExpiresIn(left)).await {
                        return s;
                    }
                }
                _ = &mut expiry => {
                    let _ = self.send(&SyncLine::TokenExpiresIn(0)).await;
                    return Stop::End(End::TokenExpired);
                }
                _ = crate::stopped(&mut shutdown) => return Stop::End(End::Shutdown),
                _ = self.tx.closed() => return Stop::End(End::ClientGone),
            }
        }
    }

    /// Reads the user's view at the newest checkpoint and sends what changed.
    /// Returns the new view, or `None` if the database answered with nothing newer.
    async fn advance(
        &mut self,
        last: &CheckpointState,
        announced_at: Instant,
    ) -> Result<Option<CheckpointState>, Stop> {
        let next = self
            .state
            .store
            .sync_checkpoint(&self.claims.raw, &self.params, &self.client_id)
            .await?;
        if next.checkpoint <= last.checkpoint {
            return Ok(None);
        }
        if let Some(d) = diff(last, &next) {
            for removed in &d.removed_buckets {
                self.afters.remove(removed);
            }
            let updated = d.updated_buckets.clone();
            self.send(&SyncLine::CheckpointDiff(d)).await?;
            self.send_data(next.checkpoint, &updated).await?;
            self.state
                .metrics
                .observe_checkpoint_lag(announced_at.elapsed());
        }
        Ok(Some(next))
    }

    /// Data lines for `buckets` up to checkpoint `cp`, by priority group, then
    /// `partial_checkpoint_complete` between groups and `checkpoint_complete`.
    async fn send_data(&mut self, cp: OpId, buckets: &[BucketChecksum]) -> Result<(), Stop> {
        let groups = priority_groups(buckets);
        let max_ops = self.state.limits.max_ops_per_batch.max(1);
        let count = groups.len();
        for (i, (priority, group)) in groups.into_iter().enumerate() {
            let mut pending: Vec<(String, OpId)> = group
                .iter()
                .map(|b| {
                    (
                        b.bucket.clone(),
                        self.afters.get(&b.bucket).copied().unwrap_or_default(),
                    )
                })
                .filter(|(_, after)| *after < cp)
                .collect();
            while !pending.is_empty() {
                let names: Vec<String> = pending.iter().map(|(b, _)| b.clone()).collect();
                let afters: Vec<OpId> = pending.iter().map(|(_, a)| *a).collect();
                let rows = self
                    .state
                    .store
                    .bucket_ops(&names, &afters, cp, max_ops)
                    .await?;
                let page = page(&pending, rows, max_ops)?;
                for line in page.lines {
                    if let Some(next) = line.next_after {
                        self.afters.insert(line.bucket.clone(), next);
                    }
                    self.state
                        .metrics
                        .ops_sent
                        .fetch_add(line.data.len() as u64, Relaxed);
                    self.send(&SyncLine::Data(line)).await?;
                }
                pending = page.remaining;
            }
            for b in &group {
                let after = self.afters.entry(b.bucket.clone()).or_default();
                *after = (*after).max(cp);
            }
            if i + 1 < count {
                self.send(&SyncLine::PartialCheckpointComplete(
                    PartialCheckpointComplete {
                        last_op_id: cp,
                        priority,
                    },
                ))
                .await?;
            }
        }
        self.send(&SyncLine::CheckpointComplete(CheckpointComplete {
            last_op_id: cp,
        }))
        .await
    }

    async fn send(&self, line: &SyncLine) -> Result<(), Stop> {
        let text = line.to_ndjson();
        let len = text.len() as u64;
        self.tx
            .send(Bytes::from(text))
            .await
            .map_err(|_| Stop::End(End::ClientGone))?;
        self.state.metrics.lines_sent.fetch_add(1, Relaxed);
        self.state.metrics.bytes_sent.fetch_add(len, Relaxed);
        Ok(())
    }
}
