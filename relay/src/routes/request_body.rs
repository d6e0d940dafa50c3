//! Request bodies: size limits, read timeouts, and JSON parsing. Small bodies
//! are read into one buffer and parsed; a sync request that may be large (a
//! resume listing 100,000 buckets is ~10 MB) is parsed as it arrives, so the
//! relay holds the frames in flight and the parsed request, never the whole
//! text beside it.

use crate::Error;
use bytes::{Buf, Bytes};
use http::Request;
use http_body_util::BodyExt;
use std::io::{BufReader, Read};
use std::time::Duration;
use tokio::sync::mpsc;

/// Bodies up to this declared length are buffered: handing a few kilobytes
/// to a blocking thread costs more than parsing them in place.
const STREAM_PARSE_ABOVE: u64 = 64 * 1024;

/// Frames queued between the connection and the parser.
const FRAMES_IN_FLIGHT: usize = 8;

/// Reads a JSON body of at most `limit` bytes within `timeout` (413 beyond the
/// size, 408 beyond the time: a client trickling its body must not hold a
/// connection and a task forever; 400 if malformed).
pub(super) async fn read_json<B, T>(body: B, limit: usize, timeout: Duration) -> Result<T, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: serde::de::DeserializeOwned,
{
    let bytes = tokio::time::timeout(timeout, read_body(body, limit))
        .await
        .map_err(|_| Error::RequestTimeout)??;
    serde_json::from_slice(&bytes).map_err(malformed)
}

/// As [`read_json`], with the same limits and errors, but a body that is not
/// declared small is parsed on a blocking thread while its frames arrive.
pub(super) async fn read_json_streamed<B, T>(
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<T, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let declared = body.size_hint().exact();
    if declared.is_some_and(|n| n <= STREAM_PARSE_ABOVE) {
        return read_json(body, limit, timeout).await;
    }
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    let parser = tokio::task::spawn_blocking(move || {
        let frames = FrameReader {
            rx,
            current: Bytes::new(),
        };
        serde_json::from_reader::<_, T>(BufReader::with_capacity(64 * 1024, frames))
    });
    let pumped = tokio::time::timeout(timeout, pump(body, limit, tx))
        .await
        .map_err(|_| Error::RequestTimeout)
        .and_then(|r| r);
    // The sender is gone (pump owned it): the parser sees the end of the body
    // and returns, whether the body was complete or cut short.
    let parsed = parser
        .await
        .map_err(|e| Error::Unavailable(format!("request parser failed: {e}")))?;
    pumped?;
    parsed.map_err(malformed)
}

/// Forwards the body's data frames to the parser, counting them against the
/// limit. A parser that stopped (malformed JSON) ends the pump early.
async fn pump<B>(body: B, limit: usize, tx: mpsc::Sender<Bytes>) -> Result<(), Error>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut total = 0usize;
    loop {
        // Bound first so that nothing of the body's (possibly not `Send`)
        // error type lives across the send below.
        let data = match body.frame().await {
            None => break,
            Some(frame) => frame.map_err(unreadable)?.into_data().ok(),
        };
        if let Some(data) = data {
            total = total.saturating_add(data.len());
            if total > limit {
                return Err(Error::PayloadTooLarge);
            }
            if tx.send(data).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// The parser's side of the channel, as a byte stream.
struct FrameReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for FrameReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while !self.current.has_remaining() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.remaining());
        self.current.copy_to_slice(&mut buf[..n]);
        Ok(n)
    }
}

/// The body in one buffer, sized from its declared length: each frame is
/// copied in and dropped as it arrives.
async fn read_body<B>(body: B, limit: usize) -> Result<Vec<u8>, Error>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let hint = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(hint.min(limit));
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(unreadable)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(Error::PayloadTooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// A declared length over the limit is refused before reading anything.
pub(super) fn check_content_length<B>(req: &Request<B>, limit: usize) -> Result<(), Error> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(Error::PayloadTooLarge),
        _ => Ok(()),
    }
}

fn malformed(e: serde_json::Error) -> Error {
    Error::BadRequest(format!("malformed JSON body: {e}"))
}

fn unreadable<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> Error {
    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
    Error::BadRequest(format!("cannot read request body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use serde_json::Value;

    type Chunks = Vec<Result<Frame<Bytes>, std::io::Error>>;
    type Frames = stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>;

    /// A body of unknown length (chunked), in frames of `frame` bytes.
    fn chunked(text: &str, frame: usize) -> StreamBody<Frames> {
        let frames: Chunks = text
            .as_bytes()
            .chunks(frame)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(stream::iter(frames))
    }

    fn big_request(buckets: usize) -> String {
        let list: Vec<String> = (0..buckets)
            .map(|i| format!(r#"{{"name":"b{i}","after":"{i}"}}"#))
            .collect();
        format!(r#"{{"buckets":[{}],"client_id":"c"}}"#, list.join(","))
    }

    #[tokio::test]
    async fn a_large_body_in_small_frames_parses_as_a_whole() {
        let text = big_request(20_000);
        assert!(text.len() as u64 > STREAM_PARSE_ABOVE);
        let v: Value = read_json_streamed(chunked(&text, 1000), 1 << 24, Duration::from_secs(10))
            .await
            .expect("parses");
        assert_eq!(v["buckets"].as_array().unwrap().len(), 20_000);
        assert_eq!(v["buckets"][19_999]["name"], "b19999");
        assert_eq!(v["client_id"], "c");
    }

    #[tokio::test]
    async fn over_the_limit_is_413_even_without_a_declared_length() {
        let text = big_request(20_000);
        let err =
            read_json_streamed::<_, Value>(chunked(&text, 4096), 100_000, Duration::from_secs(10))
                .await
                .unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge), "{err:?}");
    }

    #[tokio::test]
    async fn malformed_json_is_400_and_names_the_problem() {
        let mut text = big_request(5_000);
        text.insert_str(70_000, "}}}");
        let err =
            read_json_streamed::<_, Value>(chunked(&text, 512), 1 << 24, Duration::from_secs(10))
                .await
                .unwrap_err();
        match err {
            Error::BadRequest(m) => assert!(m.contains("malformed JSON"), "{m}"),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_truncated_body_is_400() {
        let text = big_request(5_000);
        let cut = &text[..text.len() - 10];
        let err =
            read_json_streamed::<_, Value>(chunked(cut, 2048), 1 << 24, Duration::from_secs(10))
                .await
                .unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_408() {
        let head = stream::iter(vec![Ok::<_, std::io::Error>(Frame::data(
            Bytes::from_static(b"{\"buckets\":["),
        ))]);
        let body = StreamBody::new(head.chain(stream::pending()));
        let err = read_json_streamed::<_, Value>(body, 1 << 24, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RequestTimeout), "{err:?}");
    }
}
