//! Reading a sync stream ahead of the store: a task receives, decompresses,
//! splits and decodes lines while the previous batch is being stored, so the
//! relay keeps streaming and decoding overlaps SQLite's work.
//!
//! Without it the driver stopped reading during every store step: the relay
//! then waited on TCP backpressure, and a first sync took the relay's time
//! plus the client's instead of the longer of the two (CONTRIBUTING.md,
//! "Where a first sync spends its time in the client").
//!
//! Memory stays bounded: at most [`AHEAD`] decoded batches wait in the
//! channel, each up to [`MAX_BATCH_BYTES`] of line text, plus the one being
//! decoded and the one being stored.

use crate::error::Result;
use crate::net::lines::parse_line;
use crate::net::transport::SyncStream;
use outpost_protocol::SyncLine;
use tokio::sync::mpsc;

/// Data lines already received are decoded (and then stored) together, up to
/// about this many bytes of line text (about 30,000 ops of 250 bytes).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Decoded batches that may wait for the store.
pub const AHEAD: usize = 2;

/// Whether more received lines may join a batch of undecoded `texts`: only
/// data lines batch, up to [`MAX_BATCH_BYTES`].
pub fn text_batch_open(texts: &[String]) -> bool {
    texts.iter().all(|t| t.starts_with("{\"data\""))
        && texts.iter().map(String::len).sum::<usize>() < MAX_BATCH_BYTES
}

/// Decoded lines, in stream order. A batch holds data lines, possibly
/// followed by one other line.
pub type Batch = Vec<SyncLine>;

/// A stream read ahead by a task; dropping it stops the task (and closes the stream).
pub struct Prefetch {
    rx: mpsc::Receiver<Result<Option<Batch>>>,
    /// An error or the end, taken from the channel by [`Prefetch::ready`].
    held: Option<Result<Option<Batch>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Prefetch {
    pub fn start(stream: SyncStream) -> Prefetch {
        let (tx, rx) = mpsc::channel(AHEAD);
        let task = tokio::spawn(read_ahead(stream, tx));
        Prefetch {
            rx,
            held: None,
            task,
        }
    }

    /// The next batch; `Ok(None)` when the server ended the stream cleanly.
    /// After an error or the end, the stream is done.
    pub async fn next(&mut self) -> Result<Option<Batch>> {
        if let Some(r) = self.held.take() {
            return r;
        }
        match self.rx.recv().await {
            Some(r) => r,
            None => Ok(None),
        }
    }

    /// A batch already decoded, if any (does not wait). An error or the end
    /// of the stream stays queued for [`Prefetch::next`].
    pub fn ready(&mut self) -> Option<Batch> {
        if self.held.is_some() {
            return None;
        }
        match self.rx.try_recv() {
            Ok(Ok(Some(b))) => Some(b),
            Ok(other) => {
                self.held = Some(other);
                None
            }
            Err(_) => None,
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_ahead(mut stream: SyncStream, tx: mpsc::Sender<Result<Option<Batch>>>) {
    loop {
        let texts = match collect(&mut stream).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                let _ = tx.send(Ok(None)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        // Decoding 8 MB of JSON takes tens of milliseconds: not on the runtime.
        let decoded = match tokio::task::spawn_blocking(move || decode(&texts)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let failed = decoded.is_err();
        if tx.send(decoded.map(Some)).await.is_err() || failed {
            return;
        }
    }
}

/// The next line and those already received after it that may join its batch.
async fn collect(stream: &mut SyncStream) -> Result<Option<Vec<String>>> {
    let Some(text) = stream.next_text().await? else {
        return Ok(None);
    };
    let mut texts = vec![text];
    while text_batch_open(&texts) {
        match stream.next_text_ready()? {
            Some(t) => texts.push(t),
            None => break,
        }
    }
    Ok(Some(texts))
}

fn decode(texts: &[String]) -> Result<Batch> {
    let mut out = Vec::with_capacity(texts.len());
    for text in texts {
        if let Some(line) = parse_line(text)? {
            out.push(line);
        }
    }
    Ok(out)
}

/// Whether a decoded batch holds only data lines (so another may join it).
pub fn all_data(batch: &[SyncLine]) -> bool {
    batch.iter().all(|l| matches!(l, SyncLine::Data(_)))
}
