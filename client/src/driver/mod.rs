//! The sync driver on top of everything: [`SyncClient`] ties a [`Database`] to a
//! [`Connector`]: credentials → stream → state machine → store, with reconnects
//! (exponential backoff + jitter) and a concurrent upload task.
//!
//! Sync Streams: the request carries the database's requested subscriptions
//! ([`crate::subscriptions`]); when that set changes (a subscribe, the last
//! handle of one with TTL 0, an expiry) the stream is reopened with the new
//! body, resuming every bucket held (nothing is downloaded twice); each
//! checkpoint's per-stream answer goes to [`crate::SyncStatus::streams`]
//! ([`streams`]).
//!
//! Store work runs on tokio's blocking pool ([`Database::with_store_blocking`]):
//! applying a large checkpoint takes seconds of SQLite time, during which the
//! async runtime keeps serving live queries, uploads and timers. The stream is
//! read and decoded ahead meanwhile ([`crate::net::prefetch`]).

mod streams;

use crate::db::Database;
use crate::error::{Error, Result};
use crate::net::connector::{request_write_checkpoint, Connector, PENDING_TARGET};
use crate::net::prefetch::{all_data, Batch, Prefetch};
use crate::net::transport::{Http, SyncStream, TransportOptions};
use crate::store::Effect;
use crate::streams::SubscribeOptions;
use crate::subscriptions::SyncStreamSubscription;
use crate::sync::{Instruction, SyncState};
use outpost_protocol::{StreamSubscription, StreamsRequest, SyncLine};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Client parameters sent with the stream request (`request.parameters()`,
    /// `connection.parameter(k)` in streams).
    pub parameters: Map<String, Value>,
    /// Sync Streams subscriptions held while `run` runs (stored like
    /// [`Database::sync_stream`]'s, so they linger for `stream_ttl` after),
    /// and `include_defaults`. The request carries these and the database's
    /// other requested subscriptions; with none at all and `streams` None,
    /// it has no `streams` field (default streams only).
    pub streams: Option<StreamsRequest>,
    /// The TTL of the subscriptions in `streams` (default: one day).
    pub stream_ttl: Option<Duration>,
    /// Return after the first fully applied checkpoint.
    pub once: bool,
    /// Give up after this many consecutive failed attempts (`None`: never).
    pub max_attempts: Option<u32>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Timeouts and trusted CAs for every request to the relay.
    pub transport: TransportOptions,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            parameters: Map::new(),
            streams: None,
            stream_ttl: None,
            once: false,
            max_attempts: None,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            transport: TransportOptions::default(),
        }
    }
}

impl SyncOptions {
    /// Subscribes to a Sync Stream with these parameters (a JSON object or
    /// null) for the run, keeping the default streams (see [`SyncOptions::streams`]).
    pub fn subscribe(mut self, stream: &str, parameters: Value) -> SyncOptions {
        self.streams
            .get_or_insert_with(StreamsRequest::default)
            .subscriptions
            .push(StreamSubscription {
                stream: stream.to_string(),
                parameters: (!parameters.is_null()).then_some(parameters),
                override_priority: None,
            });
        self
    }
}

/// Parses `NAME` or `NAME:{json parameters}` (the CLI's `--stream`).
pub fn parse_stream_arg(arg: &str) -> Result<StreamSubscription> {
    let (name, params) = match arg.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (arg, None),
    };
    if name.is_empty() {
        return Err(Error::Schema(format!(
            "--stream {arg:?}: expected NAME or NAME:{{json}}"
        )));
    }
    let parameters = match params {
        None => None,
        Some(p) => match serde_json::from_str::<Value>(p) {
            Ok(v @ Value::Object(_)) => Some(v),
            Ok(Value::Null) => None,
            _ => {
                return Err(Error::Schema(format!(
                    "--stream {arg:?}: the parameters must be a JSON object"
                )))
            }
        },
    };
    Ok(StreamSubscription {
        stream: name.to_string(),
        parameters,
        override_priority: None,
    })
}

/// The delay before reconnect attempt `attempt` (1-based): doubling from `min`,
/// capped at `max`, with jitter in the upper half so a fleet does not reconnect in step.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    let half = base / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Data lines already received are stored together, in one SQLite transaction,
/// up to about this many ops (bounding the memory of decoded lines held at once).
pub const MAX_BATCH_OPS: usize = 50_000;

/// Whether more lines that are ready may join a batch that has produced
/// `instructions`: only data lines batch, up to [`MAX_BATCH_OPS`].
pub fn batch_open(instructions: &[Instruction]) -> bool {
    let mut ops = 0;
    for i in instructions {
        match i {
            Instruction::SaveData(d) => ops += d.data.len(),
            _ => return false,
        }
    }
    ops < MAX_BATCH_OPS
}

/// Ops in the data lines of a batch.
fn data_ops(batch: &[SyncLine]) -> usize {
    batch
        .iter()
        .map(|l| match l {
            SyncLine::Data(d) => d.data.len(),
            _ => 0,
        })
        .sum()
}

/// What one step of the loop hands to the blocking pool.
enum Work {
    /// Decoded stream lines to feed to the machine.
    Lines(Batch),
    /// Instructions the machine already produced.
    Instructions(Vec<Instruction>),
    /// The subscriptions changed, or one expired: maybe a new request.
    Streams,
}

enum Iteration {
    /// A full checkpoint was applied and `once` was asked.
    Done(String),
    /// Reconnect at once (stream ended, or credentials must be refreshed).
    Reconnect,
}

/// Keeps a [`Database`] in sync through a [`Connector`]:
/// `SyncClient::new(db, connector).run(options)`.
pub struct SyncClient<C: Connector> {
    db: Database,
    connector: Arc<C>,
}

impl<C: Connector> SyncClient<C> {
    pub fn new(db: Database, connector: Arc<C>) -> SyncClient<C> {
        SyncClient { db, connector }
    }

    /// Syncs until an unrecoverable error, `max_attempts` consecutive failures, or
    /// (with `once`) the first applied checkpoint, whose op id is returned.
    /// Dropping the future stops syncing (and the upload task with it).
    pub async fn run(self, options: SyncOptions) -> Result<Option<String>> {
        let http = Http::with_options(&options.transport)?;
        let db = &self.db;
        let _held = self.hold_option_streams(&options)?;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // Aborted when `run` returns *or* its future is dropped (the app
        // stops syncing by dropping or aborting it): no orphaned uploader.
        let uploader = AbortOnDrop(tokio::spawn(upload_loop(
            db.clone(),
            self.connector.clone(),
            http.clone(),
            done_tx,
            options.clone(),
        )));
        let mut failures = 0u32;
        let result = loop {
            match self.iteration(&http, &options, &mut done_rx).await {
                Ok(Iteration::Done(cp)) => break Ok(Some(cp)),
                Ok(Iteration::Reconnect) => {
                    failures = 0;
                    // A server that ends streams at once must not make us spin.
                    tokio::time::sleep(options.min_backoff).await;
                }
                Err(e) => {
                    db.set_status(|s| {
                        s.connected = false;
                        s.downloading = false;
                        s.last_error = Some(e.to_string());
                    });
                    failures += 1;
                    if options.max_attempts.is_some_and(|m| failures >= m) {
                        break Err(e);
                    }
                    tokio::time::sleep(backoff(failures, options.min_backoff, options.max_backoff))
                        .await;
                }
            }
        };
        drop(uploader);
        db.set_status(|s| s.connected = false);
        result
    }

    /// Subscribes to the streams of `options` for the run.
    fn hold_option_streams(&self, options: &SyncOptions) -> Result<Vec<SyncStreamSubscription>> {
        let subs = options.streams.iter().flat_map(|s| &s.subscriptions);
        subs.map(|s| {
            let opts = SubscribeOptions {
                ttl: options.stream_ttl,
                priority: s.override_priority,
            };
            let params = s.parameters.clone().unwrap_or(Value::Null);
            self.db.sync_stream(&s.stream, params).subscribe_with(opts)
        })
        .collect()
    }

    async fn iteration(
        &self,
        http: &Http,
        options: &SyncOptions,
        upload_done: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> Result<Iteration> {
        let db = &self.db;
        let creds = self.connector.fetch_credentials().await?;
        let parameters = options.parameters.clone();
        let mut machine: SyncState = db
            .with_store_blocking(move |s| s.sync_state(parameters))
            .await?;
        let include_defaults = options.streams.as_ref().map(|s| s.include_defaults);
        let (subscribed, next_expiry) = streams::current(db, include_defaults).await?;
        // An absolute deadline: lines arriving meanwhile must not postpone it.
        let mut expiry_at = next_expiry.map(|d| tokio::time::Instant::now() + d);
        machine.set_streams(subscribed);
        let Some(Instruction::EstablishStream(mut request)) = machine.start().pop() else {
            unreachable!("start always asks for a stream");
        };
        'connect: loop {
            let stream: SyncStream = http.sync_stream(&creds, &request).await?;
            db.set_status(|s| s.connected = true);
            // The checkpoint whose per-stream answer was recorded last.
            let mut resolved: Option<(outpost_protocol::OpId, usize)> = None;
            // Lines are received and decoded ahead while a batch is stored.
            let mut lines = Prefetch::start(stream);
            loop {
                let work = tokio::select! {
                    batch = lines.next() => match batch? {
                        None => return Ok(Iteration::Reconnect),
                        Some(mut batch) => {
                            // A client slower than the stream finds more batches
                            // waiting: store them together.
                            while all_data(&batch) && data_ops(&batch) < MAX_BATCH_OPS {
                                match lines.ready() {
                                    Some(more) => batch.extend(more),
                                    None => break,
                                }
                            }
                            Work::Lines(batch)
                        }
                    },
                    Some(()) = upload_done.recv() => Work::Instructions(machine.upload_completed()),
                    _ = db.streams_changed().notified() => Work::Streams,
                    _ = streams::sleep_until(expiry_at) => Work::Streams,
                };
                if let Work::Streams = work {
                    let (subscribed, next) = streams::current(db, include_defaults).await?;
                    expiry_at = next.map(|d| tokio::time::Instant::now() + d);
                    if subscribed.as_ref() != machine.streams() {
                        machine.set_streams(subscribed);
                        let Some(Instruction::EstablishStream(r)) = machine.start().pop() else {
                            unreachable!("start always asks for a stream");
                        };
                        request = r;
                        continue 'connect;
                    }
                    continue;
                }
                // The store is locked for the storing only.
                let db2 = db.clone();
                let step = tokio::task::spawn_blocking(move || {
                    let mut machine = machine;
                    let instructions = match work {
                        Work::Instructions(i) => i,
                        Work::Streams => unreachable!("handled above"),
                        Work::Lines(batch) => {
                            let mut out = vec![];
                            for line in batch {
                                out.extend(machine.handle_line(line)?);
                            }
                            out
                        }
                    };
                    let effects = db2.with_store(|s| s.execute(&mut machine, instructions))?;
                    Ok::<_, Error>((machine, effects))
                });
                let (m, effects) = match step.await {
                    Ok(r) => r?,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                };
                machine = m;
                let progress = machine.progress();
                let downloading = machine.target().is_some()
                    && machine.applied() != machine.target().map(|c| c.last_op_id);
                db.set_status(|s| {
                    s.progress = Some(progress);
                    s.downloading = downloading;
                });
                let target = machine.target().map(|c| (c.last_op_id, c.buckets.len()));
                if target.is_some() && target != resolved {
                    resolved = target;
                    if let Some(cp) = machine.target() {
                        streams::resolve(db, machine.streams(), cp).await?;
                    }
                }
                streams::progress(db, &machine, downloading);
                for effect in effects {
                    match effect {
                        Effect::Applied {
                            checkpoint,
                            priority,
                        } => {
                            streams::applied(db, priority).await?;
                            let cp = checkpoint.to_string();
                            if priority.is_none() {
                                let synced =
                                    db.with_store_blocking(|s| s.kv("last_synced_at")).await?;
                                db.set_status(|s| {
                                    s.downloading = false;
                                    s.last_checkpoint = Some(cp.clone());
                                    s.last_synced_at = synced;
                                    s.last_error = None;
                                });
                                if options.once {
                                    return Ok(Iteration::Done(cp));
                                }
                                // After a first download, the op log's index
                                // is built now that its rows are visible
                                // (`--once` leaves it to the next change).
                                db.with_store_blocking(|s| s.finish_bulk()).await?;
                            }
                        }
                        Effect::Blocked { .. } => {}
                        Effect::ChecksumFailed(buckets) => {
                            db.set_status(|s| {
                                s.last_error = Some(Error::ChecksumMismatch(buckets).to_string())
                            });
                        }
                        Effect::Io(Instruction::EstablishStream(r)) => {
                            request = r;
                            continue 'connect;
                        }
                        Effect::Io(Instruction::FetchCredentials { .. }) => {
                            return Ok(Iteration::Reconnect)
                        }
                        Effect::Io(other) => unreachable!("not an IO instruction: {other:?}"),
                    }
                }
            }
        }
    }
}

/// Uploads whenever the queue changes (and once at start), retrying with backoff.
async fn upload_loop<C: Connector>(
    db: Database,
    connector: Arc<C>,
    http: Http,
    done: tokio::sync::mpsc::UnboundedSender<()>,
    options: SyncOptions,
) {
    let mut failures = 0u32;
    loop {
        let pending = db
            .with_store_blocking(|s| Ok((s.crud_count()?, s.kv("target_op")?)))
            .await
            .ok();
        let needs = pending.is_some_and(|(n, t)| n > 0 || t.as_deref() == Some(PENDING_TARGET));
        if needs {
            db.set_status(|s| s.uploading = true);
            let r = connector.upload_data(&db, &http).await;
            let r = match r {
                // A custom upload_data may not ask for a write checkpoint; make sure one is asked.
                Ok(()) => match connector.fetch_credentials().await {
                    Ok(c) => request_write_checkpoint(&db, &http, &c).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            db.set_status(|s| s.uploading = false);
            match r {
                Ok(()) => {
                    failures = 0;
                    let _ = done.send(());
                }
                Err(e) => {
                    failures += 1;
                    db.set_status(|s| s.last_error = Some(format!("upload: {e}")));
                    tokio::time::sleep(backoff(failures, options.min_backoff, options.max_backoff))
                        .await;
                    continue;
                }
            }
        }
        // Writes by other processes on the same file (`outpost exec`) fire no hook here: poll too.
        tokio::select! {
            _ = db.crud_changed().notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_arguments_and_subscribe() {
        let s = parse_stream_arg(r#"list_todos:{"list_id":"a"}"#).unwrap();
        assert_eq!(s.stream, "list_todos");
        assert_eq!(s.parameters, Some(serde_json::json!({"list_id": "a"})));
        let s = parse_stream_arg("my_lists").unwrap();
        assert_eq!((s.stream.as_str(), s.parameters), ("my_lists", None));
        for bad in ["", ":{}", "x:[1]", "x:{nope"] {
            assert!(parse_stream_arg(bad).is_err(), "{bad}");
        }
        let o = SyncOptions::default()
            .subscribe("a", serde_json::json!({"k": 1}))
            .subscribe("b", Value::Null);
        let streams = o.streams.unwrap();
        assert!(streams.include_defaults);
        assert_eq!(streams.subscriptions.len(), 2);
        assert_eq!(streams.subscriptions[1].parameters, None);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            let d1 = backoff(1, min, max);
            assert!(d1 >= Duration::from_millis(50) && d1 <= min, "{d1:?}");
            let d3 = backoff(3, min, max);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            assert!(backoff(30, min, max) <= max);
        }
    }
}
