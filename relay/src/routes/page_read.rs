//! One page of `bucket_ops` read in a task of its own, so that a download's
//! next page is read from Postgres while the stream task serializes and
//! sends the current one. Without it the two took turns: the relay waited
//! for the backend, then the backend for the relay, and a first sync's wall
//! time was their sum (CONTRIBUTING.md, "Relay streaming").
//!
//! Only one page per stream is ever in flight, the one the stream would
//! read next anyway, so memory stays bounded by two pages per stream and a
//! stream holds at most one pooled connection at a time, as before.

use super::AppState;
use crate::store::OpRow;
use crate::Error;
use outpost_protocol::OpId;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// A page being read; dropping it (the stream ended) cancels the read.
pub struct PageRead(JoinHandle<Result<Vec<OpRow>, Error>>);

impl PageRead {
    /// Starts reading `bucket_ops(buckets, afters, checkpoint, max_ops)`,
    /// through the process-wide cache when `shared`.
    pub fn start(
        state: &Arc<AppState>,
        buckets: Vec<String>,
        afters: Vec<OpId>,
        checkpoint: OpId,
        max_ops: u32,
        shared: bool,
    ) -> PageRead {
        let state = state.clone();
        PageRead(tokio::spawn(async move {
            if shared {
                // The cache keeps its copy for the other streams.
                Ok(state
                    .fanout
                    .bucket_ops(&buckets, &afters, checkpoint, max_ops)
                    .await?
                    .as_ref()
                    .clone())
            } else {
                state
                    .store
                    .bucket_ops(&buckets, &afters, checkpoint, max_ops)
                    .await
            }
        }))
    }

    /// The page's rows (or the read's error).
    pub async fn rows(mut self) -> Result<Vec<OpRow>, Error> {
        match (&mut self.0).await {
            Ok(rows) => rows,
            // The read panicked: let the stream task fail the same way.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Unavailable("page read cancelled".into())),
        }
    }
}

impl Drop for PageRead {
    fn drop(&mut self) {
        self.0.abort();
    }
}
