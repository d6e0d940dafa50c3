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
use crate::sync::{apply_changes, diff, page, priority_groups};
use crate::Error;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use outpost_protocol::{
    BucketChecksum, Checkpoint, CheckpointComplete, CheckpointDiff, OpId,
    PartialCheckpointComplete, SyncLine, SyncRequest,
};
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResBody>, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let claims = authenticate(&state, &req).await?;
    check_content_length(&req, state.limits.max_body_bytes)?;
    let request: SyncRequest = read_json(
        req.into_body(),
        state.limits.max_body_bytes,
        state.limits.read_timeout,
    )
    .await?;
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
        incomplete: Vec::new(),
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
    /// Buckets of the last checkpoint line whose data was cut short because
    /// a newer checkpoint superseded it: sent with the next one.
    incomplete: Vec<String>,
}

/// How sending a checkpoint's data ended.
#[derive(Debug, PartialEq)]
enum Sent {
    /// Every op and `checkpoint_complete`.
    Complete,
    /// A newer checkpoint was announced first; no `checkpoint_complete` was
    /// sent and [`Stream::incomplete`] names what is left.
    Superseded,
}

/// The keepalive sent this long before the token expires, so that clients
/// fetch a new token in time (PowerSync clients react to small values).
const EXPIRY_WARNING: Duration = Duration::from_secs(20);

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
        let buckets = initial.buckets.clone();
        let sent = match self
            .send_data(initial.checkpoint, &buckets, &checkpoints, false)
            .await
        {
            Ok(sent) => sent,
            Err(s) => return s,
        };
        let mut last = initial;
        if sent == Sent::Superseded {
            // A newer checkpoint may have been announced before this stream
            // subscribed; move on now rather than at the next announcement.
            if let Err(s) = self.catch_up(&mut last, &mut checkpoints).await {
                return s;
            }
        }

        let keepalive_every = self.state.limits.keepalive;
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + keepalive_every,
            keepalive_every,
        );
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expires_in = Duration::from_secs((self.claims.exp - now_secs() as i64).max(0) as u64);
        let expiry = tokio::time::sleep(expires_in);
        tokio::pin!(expiry);
        let warning = tokio::time::sleep(expires_in.saturating_sub(EXPIRY_WARNING));
        tokio::pin!(warning);
        let mut warned = expires_in <= EXPIRY_WARNING;
        let mut shutdown = self.state.shutdown.clone();

        loop {
            tokio::select! {
                changed = checkpoints.changed() => {
                    if changed.is_err() {
                        return Stop::End(End::Shutdown);
                    }
                    if let Err(s) = self.catch_up(&mut last, &mut checkpoints).await {
                        return s;
                    }
                }
                _ = keepalive.tick() => {
                    let left = (self.claims.exp - now_secs() as i64).max(0);
                    if let Err(s) = self.send(&SyncLine::TokenExpiresIn(left)).await {
                        return s;
                    }
                }
                _ = &mut warning, if !warned => {
                    warned = true;
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

    /// Moves the client from `last` to the newest announced checkpoint,
    /// through as many checkpoints as are announced meanwhile.
    async fn catch_up(
        &mut self,
        last: &mut CheckpointState,
        checkpoints: &mut watch::Receiver<Announced>,
    ) -> Result<(), Stop> {
        loop {
            let announced = *checkpoints.borrow_and_update();
            if announced.checkpoint <= last.checkpoint.0 && self.incomplete.is_empty() {
                return Ok(());
            }
            let next = self
                .next_state(last, OpId(announced.checkpoint.max(last.checkpoint.0)))
                .await?;
            if next.checkpoint <= last.checkpoint {
                return Ok(());
            }
            let d = diff(last, &next);
            if d.is_none() && self.incomplete.is_empty() {
                *last = next;
                continue;
            }
            // A superseded checkpoint's unfinished buckets go out with this
            // one even when their checksum did not change.
            let d = d.unwrap_or_else(|| CheckpointDiff {
                last_op_id: next.checkpoint,
                write_checkpoint: next.write_checkpoint,
                updated_buckets: Vec::new(),
                removed_buckets: Vec::new(),
            });
            for removed in &d.removed_buckets {
                self.afters.remove(removed);
            }
            let mut to_send = d.updated_buckets.clone();
            for name in std::mem::take(&mut self.incomplete) {
                if to_send.iter().any(|b| b.bucket == name) {
                    continue;
                }
                if let Some(b) = next.buckets.iter().find(|b| b.bucket == name) {
                    to_send.push(b.clone());
                }
            }
            self.send(&SyncLine::CheckpointDiff(d)).await?;
            let sent = self
                .send_data(next.checkpoint, &to_send, checkpoints, true)
                .await?;
            if sent == Sent::Complete {
                self.state
                    .metrics
                    .observe_checkpoint_lag(announced.at.elapsed());
            }
            *last = next;
        }
    }

    /// The user's view at a checkpoint of at least `at_least` (when the
    /// database has it): derived from the shared [`Changes`] when that is
    /// sound, else from this stream's own `sync_checkpoint`.
    async fn next_state(
        &self,
        last: &CheckpointState,
        at_least: OpId,
    ) -> Result<CheckpointState, Stop> {
        let state = &self.state;
        if last.rules_version.is_some()
            && state.metrics.streams_open.load(Relaxed) >= state.limits.shared_changes_min_streams
        {
            let changes = state
                .fanout
                .changes_since(last.checkpoint, at_least, last.rules_version)
                .await?;
            if let Some(next) =
                changes.and_then(|c| apply_changes(last, &c, &self.claims.sub, &self.client_id))
            {
                state.metrics.states_shared.fetch_add(1, Relaxed);
                return Ok(next);
            }
        }
        state.metrics.sync_checkpoints.fetch_add(1, Relaxed);
        Ok(state
            .store
            .sync_checkpoint(&self.claims.raw, &self.params, &self.client_id)
            .await?)
    }

    /// Data lines for `buckets` up to checkpoint `cp`, by priority group, then
    /// `partial_checkpoint_complete` between groups and `checkpoint_complete`.
    /// Stops early, without completing, when a newer checkpoint is announced
    /// while more remains to send. `shared`: read pages through the
    /// process-wide cache (streams advancing together ask the same pages).
    async fn send_data(
        &mut self,
        cp: OpId,
        buckets: &[BucketChecksum],
        checkpoints: &watch::Receiver<Announced>,
        shared: bool,
    ) -> Result<Sent, Stop> {
        let groups = priority_groups(buckets);
        let max_ops = self.state.limits.max_ops_per_batch.max(1);
        let count = groups.len();
        let superseded = || checkpoints.borrow().checkpoint > cp.0;
        // Compaction rewrote an op we sent into a MOVE/CLEAR whose superseding
        // op lies beyond `cp`: checksums would match but rows would not, so
        // `cp` must not be completed; the next checkpoint carries the rest.
        let mut beyond = false;
        for (i, (priority, group)) in groups.iter().enumerate() {
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
                // A page holds at most `max_ops` ops, so asking for more buckets
                // than that per query only ships names that cannot be answered.
                let asked = pending.len().min(max_ops as usize);
                let names: Vec<String> = pending[..asked].iter().map(|(b, _)| b.clone()).collect();
                let afters: Vec<OpId> = pending[..asked].iter().map(|(_, a)| *a).collect();
                let rows = if shared {
                    self.state
                        .fanout
                        .bucket_ops(&names, &afters, cp, max_ops)
                        .await?
                        .as_ref()
                        .clone()
                } else {
                    self.state
                        .store
                        .bucket_ops(&names, &afters, cp, max_ops)
                        .await?
                };
                let mut page = page(&pending[..asked], rows, max_ops)?;
                page.remaining.extend(pending[asked..].iter().cloned());
                beyond |= page.max_target.is_some_and(|t| t > cp);
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
                let more = !pending.is_empty() || i + 1 < count;
                if more && superseded() {
                    self.incomplete = pending.into_iter().map(|(b, _)| b).collect();
                    for (_, later) in &groups[i + 1..] {
                        self.incomplete
                            .extend(later.iter().map(|b| b.bucket.clone()));
                    }
                    return Ok(Sent::Superseded);
                }
            }
            for b in group {
                let after = self.afters.entry(b.bucket.clone()).or_default();
                *after = (*after).max(cp);
            }
            if beyond {
                self.incomplete = groups[i + 1..]
                    .iter()
                    .flat_map(|(_, later)| later.iter().map(|b| b.bucket.clone()))
                    .collect();
                return Ok(Sent::Superseded);
            }
            if i + 1 < count {
                self.send(&SyncLine::PartialCheckpointComplete(
                    PartialCheckpointComplete {
                        last_op_id: cp,
                        priority: *priority,
                    },
                ))
                .await?;
            }
        }
        self.send(&SyncLine::CheckpointComplete(CheckpointComplete {
            last_op_id: cp,
        }))
        .await?;
        Ok(Sent::Complete)
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
