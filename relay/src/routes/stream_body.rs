//! The response body of `/sync/stream`: lines from the stream's task, as
//! they come, compressed when the client accepts it. Everything the task
//! has produced by the time the body is polled goes into one frame, and the
//! encoder is flushed after each frame: while the task is ahead (an initial
//! sync) frames hold many lines and compress well; once the stream has
//! caught up, each checkpoint reaches the client as soon as it is produced.

use crate::compress::{Encoder, Encoding};
use crate::metrics::Metrics;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Input gathered into one frame at most (bounds a frame's size).
const MAX_FRAME_INPUT: usize = 256 * 1024;

pub struct StreamBody {
    rx: mpsc::Receiver<Bytes>,
    /// `None` once finished.
    encoder: Option<Encoder>,
    metrics: Arc<Metrics>,
}

impl StreamBody {
    pub fn new(rx: mpsc::Receiver<Bytes>, encoding: Encoding, metrics: Arc<Metrics>) -> StreamBody {
        StreamBody {
            rx,
            encoder: Some(Encoder::new(encoding)),
            metrics,
        }
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        // Uncompressed, each chunk is a frame as it is: gathering them would
        // copy every byte of a download once more (hyper writes the queued
        // frames together anyway).
        if matches!(this.encoder, Some(Encoder::Identity)) {
            return match this.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => {
                    this.metrics.wire_bytes_sent.inc_by(b.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                Poll::Ready(None) => {
                    this.encoder = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
        let mut chunks = Vec::new();
        let mut size = 0;
        let mut ended = false;
        while size < MAX_FRAME_INPUT {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => {
                    size += b.len();
                    chunks.push(b);
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let Some(encoder) = this.encoder.as_mut() else {
            return Poll::Ready(None);
        };
        let mut out = if chunks.is_empty() {
            Bytes::new()
        } else {
            encoder.encode(&chunks)
        };
        if ended {
            let tail = this.encoder.take().expect("checked above").finish();
            out = [out, tail].concat().into();
        }
        if out.is_empty() {
            return if ended {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        this.metrics.wire_bytes_sent.inc_by(out.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(out))))
    }
}
