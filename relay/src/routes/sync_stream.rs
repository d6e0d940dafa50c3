//! `POST /sync/stream`: the NDJSON sync stream.
//!
//! The first `sync_checkpoint` runs before the response starts, so a database
//! failure is a plain 500 rather than a 200 that ends at once. After that a
//! task per stream produces lines into a bounded channel that the response
//! body drains: a slow client fills the channel, the task waits on `send`,
//! and nothing more is read from the database for it, which bounds memory.

use super::page_read::PageRead;
use super::stream_body::StreamBody;
use super::{
    authenticate, check_content_length, read_json_streamed, AppState, CloseConnection, ResBody,
};
use crate::auth::{now_secs, Claims};
use crate::compress::Encoding;
use crate::listener::Announced;
use crate::metrics::GaugeGuard;
use crate::store::CheckpointState;
use crate::sync::{apply_changes, Download, Progress, Step};
use crate::Error;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use outpost_protocol::{
    BucketChecksum, Checkpoint, CheckpointComplete, OpId, PartialCheckpointComplete, SyncLine,
    SyncRequest,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResBody>, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Noted first: the barrier covers whatever committed before the request.
    let fresh = state.freshness.arrived();
    let claims = authenticate(&state, &req).await?;
    check_content_length(&req, state.limits.max_sync_body_bytes)?;
    let close = req.extensions().get::<CloseConnection>().cloned();
    let encoding = if state.compression {
        Encoding::negotiate(
            req.headers()
                .get(http::header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        )
    } else {
        Encoding::Identity
    };
    let request: SyncRequest = read_json_streamed(
        req.into_body(),
        state.limits.max_sync_body_bytes,
        state.limits.read_timeout,
    )
    .await?;
    state.freshness.reached(fresh, &state.metrics).await;
    let params = Value::Object(request.parameters.unwrap_or_default());
    let client_id = request.client_id.unwrap_or_default();
    let streams = request
        .streams
        .map(|s| serde_json::to_value(s).expect("stream requests serialize"))
        .unwrap_or(Value::Null);

    // Mark the current checkpoint seen before reading: anything announced
    // from here on wakes the stream, so nothing falls between the two.
    let mut checkpoints = state.checkpoints.clone();
    checkpoints.borrow_and_update();
    let initial = state
        .store
        .sync_checkpoint(&claims.raw, &params, &client_id, &streams)
        .await?;

    let (tx, rx) = mpsc::channel(state.limits.stream_buffer.max(1));
    // Moved, not copied: a resume can list 100,000 buckets.
    let progress = Progress::new(request.buckets.into_iter().map(|b| (b.name, b.after)));
    let stream = Stream {
        state: state.clone(),
        tx,
        claims,
        params,
        client_id,
        streams,
        progress,
        close,
        pending: Vec::new(),
        pending_lines: 0,
    };
    tokio::spawn(stream.run(initial, checkpoints));

    let mut res = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .header(http::header::CACHE_CONTROL, "no-cache")
        // Tells nginx-like proxies not to buffer the stream.
        .header("x-accel-buffering", "no")
        .header(http::header::VARY, "accept-encoding");
    if let Some(e) = encoding.header() {
        res = res.header(http::header::CONTENT_ENCODING, e);
    }
    Ok(res
        .body(StreamBody::new(rx, encoding, state.metrics.clone()).boxed())
        .expect("static response parts are valid"))
}

/// Why a stream stopped without an error.
#[derive(Debug)]
enum End {
    ClientGone,
    TokenExpired,
    Shutdown,
    /// The client took no line for [`Limits::send_timeout`](super::Limits).
    Stalled,
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
    /// The request's Sync Streams subscriptions, as JSON for the database.
    streams: Value,
    /// What the client has, and what a superseded checkpoint left unfinished.
    progress: Progress,
    /// Closes the stream's connection (set by the server; absent in router tests).
    close: Option<CloseConnection>,
    /// Lines queued by [`Stream::queue`], sent as one chunk by [`Stream::flush`].
    pending: Vec<u8>,
    pending_lines: u64,
}

/// How sending a checkpoint's data ended.
#[derive(Debug, PartialEq)]
enum Sent {
    /// Every op and `checkpoint_complete`.
    Complete,
    /// A newer checkpoint was announced first (or compaction moved an op
    /// beyond it); no `checkpoint_complete` was sent and [`Stream::progress`]
    /// names what is left.
    Superseded,
}

/// The keepalive sent this long before the token expires, so that clients
/// fetch a new token in time (PowerSync clients react to small values).
const EXPIRY_WARNING: Duration = Duration::from_secs(20);

/// Queued lines past this size are sent at once (a page of a big download
/// goes out as it comes; coalescing is for the small lines of a live update).
const COALESCE_BYTES: usize = 64 * 1024;

impl Stream {
    async fn run(mut self, initial: CheckpointState, checkpoints: watch::Receiver<Announced>) {
        let state = self.state.clone();
        state.metrics.streams_total.inc();
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
        self.progress.start(&initial);
        let line = SyncLine::Checkpoint(Checkpoint {
            last_op_id: initial.checkpoint,
            write_checkpoint: initial.write_checkpoint,
            buckets: initial.buckets.clone(),
            streams: initial.streams.clone(),
        });
        if let Err(s) = self.queue(&line).await {
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
            if announced.checkpoint <= last.checkpoint.0 && !self.progress.has_incomplete() {
                return Ok(());
            }
            let next = self
                .next_state(last, OpId(announced.checkpoint.max(last.checkpoint.0)))
                .await?;
            if next.checkpoint <= last.checkpoint {
                return Ok(());
            }
            let Some(d) = self.progress.diff(last, &next) else {
                *last = next;
                continue;
            };
            let to_send = self.progress.advance(&d, &next);
            self.queue(&SyncLine::CheckpointDiff(d)).await?;
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
            && state.metrics.streams_open.get().max(0) as u64
                >= state.limits.shared_changes_min_streams
        {
            let changes = state
                .fanout
                .changes_since(last.checkpoint, at_least)
                .await?;
            if let Some(next) =
                changes.and_then(|c| apply_changes(last, &c, &self.claims.sub, &self.client_id))
            {
                state.metrics.states_shared.inc();
                return Ok(next);
            }
        }
        state.metrics.sync_checkpoints.inc();
        Ok(state
            .store
            .sync_checkpoint(
                &self.claims.raw,
                &self.params,
                &self.client_id,
                &self.streams,
            )
            .await?)
    }

    /// Data lines for `buckets` up to checkpoint `cp`, by priority group, then
    /// `partial_checkpoint_complete` between groups and `checkpoint_complete`
    /// (see [`Download`]). Stops early, without completing, when a newer
    /// checkpoint is announced while more remains to send. `shared`: read
    /// pages through the process-wide cache (streams advancing together ask
    /// the same pages).
    async fn send_data(
        &mut self,
        cp: OpId,
        buckets: &[BucketChecksum],
        checkpoints: &watch::Receiver<Announced>,
        shared: bool,
    ) -> Result<Sent, Stop> {
        let max_ops = self.state.limits.max_ops_per_batch.max(1);
        let mut download = Download::new(cp, buckets, max_ops);
        let superseded = || checkpoints.borrow().checkpoint > cp.0;
        let mut fetched = false;
        // The page after the one being sent, read meanwhile (see `PageRead`).
        let mut ahead: Option<PageRead> = None;
        let mut step = download.next(&mut self.progress, superseded());
        loop {
            match step {
                Step::Fetch { buckets, afters } => {
                    // The checkpoint line waits for the first page (the
                    // client needs both); data never waits for a later read.
                    if fetched {
                        self.flush().await?;
                    }
                    fetched = true;
                    let read = ahead.take().unwrap_or_else(|| {
                        PageRead::start(&self.state, buckets, afters, cp, max_ops, shared)
                    });
                    let lines = download.page(&mut self.progress, read.rows().await?)?;
                    // What follows this page is known now: when it is another
                    // page, it is read while this one goes out. (A newer
                    // checkpoint announced while the lines are sent is
                    // noticed after the next page instead of before it.)
                    step = download.next(&mut self.progress, superseded());
                    if let Step::Fetch { buckets, afters } = &step {
                        ahead = Some(PageRead::start(
                            &self.state,
                            buckets.clone(),
                            afters.clone(),
                            cp,
                            max_ops,
                            shared,
                        ));
                    }
                    for line in lines {
                        self.state.metrics.ops_sent.inc_by(line.data.len() as u64);
                        // One allocation for the line instead of the ~15
                        // doublings (and copies) of a 200 kB line from empty.
                        self.pending.reserve(line_size(&line));
                        self.queue(&SyncLine::Data(line)).await?;
                    }
                }
                Step::Partial(priority) => {
                    self.send(&SyncLine::PartialCheckpointComplete(
                        PartialCheckpointComplete {
                            last_op_id: cp,
                            priority,
                        },
                    ))
                    .await?;
                    step = download.next(&mut self.progress, superseded());
                }
                Step::Complete => {
                    self.send(&SyncLine::CheckpointComplete(CheckpointComplete {
                        last_op_id: cp,
                    }))
                    .await?;
                    return Ok(Sent::Complete);
                }
                Step::Superseded => {
                    self.flush().await?;
                    return Ok(Sent::Superseded);
                }
            }
        }
    }

    /// Sends one line now (with whatever is queued before it).
    async fn send(&mut self, line: &SyncLine) -> Result<(), Stop> {
        self.queue(line).await?;
        self.flush().await
    }

    /// Queues a line; the lines of one checkpoint (its diff, a small page,
    /// `checkpoint_complete`) then reach the socket in one write, which is
    /// most of what a write fanned out to many streams costs the relay
    /// (CONTRIBUTING.md, "Sync Streams: the rename and the fan-out").
    async fn queue(&mut self, line: &SyncLine) -> Result<(), Stop> {
        serde_json::to_writer(&mut self.pending, line).expect("sync lines always serialize");
        self.pending.push(b'\n');
        self.pending_lines += 1;
        if self.pending.len() >= COALESCE_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the queued lines as one chunk.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.pending);
        let lines = std::mem::take(&mut self.pending_lines);
        let len = text.len() as u64;
        let started = std::time::Instant::now();
        let mut shutdown = self.state.shutdown.clone();
        tokio::select! {
            sent = self.tx.send(Bytes::from(text)) => {
                sent.map_err(|_| Stop::End(End::ClientGone))?;
            }
            _ = tokio::time::sleep(self.state.limits.send_timeout) => {
                // A reader that stopped reading holds a slot and a task:
                // end both. Its connection goes too, or the bytes already
                // queued for it would keep the socket open.
                self.state.metrics.streams_stalled.inc();
                if let Some(close) = &self.close {
                    close.0.notify_one();
                }
                return Err(Stop::End(End::Stalled));
            }
            _ = crate::stopped(&mut shutdown) => return Err(Stop::End(End::Shutdown)),
        }
        self.state.metrics.observe_send(started.elapsed());
        self.state.metrics.lines_sent.inc_by(lines);
        self.state.metrics.bytes_sent.inc_by(len);
        Ok(())
    }
}

/// About the serialized size of a data line: its texts, a quarter more for
/// the escaping of `data` (JSON inside JSON), and each op's keys and numbers.
fn line_size(line: &outpost_protocol::DataLine) -> usize {
    let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    line.bucket.len()
        + 96
        + line
            .data
            .iter()
            .map(|o| {
                len(&o.data) * 5 / 4 + len(&o.object_type) + len(&o.object_id) + len(&o.subkey) + 96
            })
            .sum::<usize>()
}
