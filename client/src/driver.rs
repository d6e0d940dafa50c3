//! The async sync loop: credentials → stream → state machine → store, with
//! reconnects (exponential backoff + jitter) and a concurrent upload task.

use crate::connector::{request_write_checkpoint, Connector};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::store::Effect;
use crate::sync::{Instruction, Progress, SyncState};
use crate::transport::{Http, SyncStream};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncStatus {
    pub connected: bool,
    /// Between a checkpoint and its application.
    pub downloading: bool,
    pub progress: Option<Progress>,
    pub last_checkpoint: Option<String>,
    pub last_synced_at: Option<String>,
    pub upload_pending: u64,
    pub uploading: bool,
    pub last_error: Option<String>,
    /// The last local write the server refused for good (moved to `ps_crud_rejected`).
    pub last_rejected: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Client parameters sent with the stream request (`request.parameters()`).
    pub parameters: Map<String, Value>,
    /// Return after the first fully applied checkpoint.
    pub once: bool,
    /// Give up after this many consecutive failed attempts (`None`: never).
    pub max_attempts: Option<u32>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            parameters: Map::new(),
            once: false,
            max_attempts: None,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
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

enum Iteration {
    /// A full checkpoint was applied and `once` was asked.
    Done(String),
    /// Reconnect at once (stream ended, or credentials must be refreshed).
    Reconnect,
}

impl Database {
    /// Syncs until an unrecoverable error, `max_attempts` consecutive failures, or
    /// (with `once`) the first applied checkpoint, whose op id is returned.
    pub async fn connect<C: Connector>(
        &self,
        connector: Arc<C>,
        options: SyncOptions,
    ) -> Result<Option<String>> {
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // Aborted when `connect` returns *or* its future is dropped (the app
        // stops syncing by dropping or aborting it): no orphaned uploader.
        let uploader = AbortOnDrop(tokio::spawn(upload_loop(
            self.clone(),
            connector.clone(),
            done_tx,
            options.clone(),
        )));
        let http = Http::new();
        let mut failures = 0u32;
        let result = loop {
            match self
                .iteration(&*connector, &http, &options, &mut done_rx)
                .await
            {
                Ok(Iteration::Done(cp)) => break Ok(Some(cp)),
                Ok(Iteration::Reconnect) => {
                    failures = 0;
                    // A server that ends streams at once must not make us spin.
                    tokio::time::sleep(options.min_backoff).await;
                }
                Err(e) => {
                    self.set_status(|s| {
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
        self.set_status(|s| s.connected = false);
        result
    }

    async fn iteration<C: Connector>(
        &self,
        connector: &C,
        http: &Http,
        options: &SyncOptions,
        upload_done: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> Result<Iteration> {
        let creds = connector.fetch_credentials().await?;
        let mut machine: SyncState =
            self.with_store(|s| s.sync_state(options.parameters.clone()))?;
        let Some(Instruction::EstablishStream(mut request)) = machine.start().pop() else {
            unreachable!("start always asks for a stream");
        };
        'connect: loop {
            let mut stream: SyncStream = http.sync_stream(&creds, &request).await?;
            self.set_status(|s| s.connected = true);
            loop {
                let instructions = tokio::select! {
                    line = stream.next_line() => match line? {
                        None => return Ok(Iteration::Reconnect),
                        Some(line) => {
                            let mut batch = machine.handle_line(line)?;
                            // A client slower than the stream finds more lines waiting:
                            // store them together.
                            while batch_open(&batch) {
                                match stream.next_line_ready()? {
                                    Some(line) => batch.extend(machine.handle_line(line)?),
                                    None => break,
                                }
                            }
                            batch
                        }
                    },
                    Some(()) = upload_done.recv() => machine.upload_completed(),
                };
                let effects = self.with_store(|s| s.execute(&mut machine, instructions))?;
                let progress = machine.progress();
                self.set_status(|s| {
                    s.progress = Some(progress);
                    s.downloading = machine.target().is_some()
                        && machine.applied() != machine.target().map(|c| c.last_op_id);
                });
                for effect in effects {
                    match effect {
                        Effect::Applied {
                            checkpoint,
                            priority,
                        } => {
                            let cp = checkpoint.to_string();
                            if priority.is_none() {
                                let synced = self.with_store(|s| s.kv("last_synced_at"))?;
                                self.set_status(|s| {
                                    s.downloading = false;
                                    s.last_checkpoint = Some(cp.clone());
                                    s.last_synced_at = synced;
                                    s.last_error = None;
                                });
                                if options.once {
                                    return Ok(Iteration::Done(cp));
                                }
                            }
                        }
                        Effect::Blocked { .. } => {}
                        Effect::ChecksumFailed(buckets) => {
                            self.set_status(|s| {
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

    fn set_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        self.status_sender().send_modify(f);
    }
}

/// Uploads whenever the queue changes (and once at start), retrying with backoff.
async fn upload_loop<C: Connector>(
    db: Database,
    connector: Arc<C>,
    done: tokio::sync::mpsc::UnboundedSender<()>,
    options: SyncOptions,
) {
    let mut failures = 0u32;
    loop {
        let pending = db
            .with_store(|s| Ok((s.crud_count()?, s.kv("target_op")?)))
            .ok();
        let needs = pending
            .is_some_and(|(n, t)| n > 0 || t.as_deref() == Some(crate::connector::PENDING_TARGET));
        if needs {
            db.set_status(|s| s.uploading = true);
            let r = connector.upload_data(&db).await;
            let r = match r {
                // A custom upload_data may not ask for a write checkpoint; make sure one is asked.
                Ok(()) => match connector.fetch_credentials().await {
                    Ok(c) => request_write_checkpoint(&db, &Http::new(), &c).await,
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
