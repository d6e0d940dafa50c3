//! `POST /sync/stream` on the wire: content encodings, and clients that stop reading.

use super::*;
use crate::routes::Limits;
use crate::testing::{FakeStore, Harness};
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn streams_are_compressed_as_accepted_and_decode_to_the_same_lines() {
    use std::io::Read;
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_ops_per_batch: 3,
            ..Limits::default()
        },
    );
    for i in 0..10 {
        h.store.put("b[]", &format!("row{i}"));
    }
    let mut plain = None;
    for (accept, encoding) in [
        (None, None),
        (Some("gzip"), Some("gzip")),
        (Some("zstd, gzip"), Some("zstd")),
    ] {
        let mut req = post_stream(Some(format!("Token {}", token())), "{}");
        if let Some(a) = accept {
            req.headers_mut()
                .insert("accept-encoding", a.parse().unwrap());
        }
        let res = call(&h, req).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        assert_eq!(
            res.headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            encoding
        );
        // Everything up to checkpoint_complete arrives before the stream ends;
        // end it to read the whole body.
        let mut body = res.into_body();
        let mut wire = Vec::new();
        loop {
            let frame = tokio::time::timeout(
                Duration::from_secs(10),
                http_body_util::BodyExt::frame(&mut body),
            )
            .await
            .unwrap();
            let Some(frame) = frame else { break };
            wire.extend_from_slice(&frame.unwrap().into_data().unwrap());
            let decoded = decode(encoding, &wire);
            if String::from_utf8_lossy(&decoded).contains("checkpoint_complete") {
                break;
            }
        }
        let text = String::from_utf8(decode(encoding, &wire)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first().map(|l| &l[..14]), Some("{\"checkpoint\":"));
        match &plain {
            None => plain = Some(text.clone()),
            Some(p) => assert_eq!(&text, p, "{encoding:?} decodes to the plain stream"),
        }
    }

    fn decode(encoding: Option<&str>, wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        let mut reader: Box<dyn Read + '_> = match encoding {
            None => Box::new(wire),
            Some("gzip") => Box::new(flate2::read::GzDecoder::new(wire)),
            Some(_) => Box::new(zstd::stream::read::Decoder::new(wire).unwrap()),
        };
        // A stream still open decodes up to its last flush.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_ops_per_batch: 1,
            stream_buffer: 1,
            send_timeout: Duration::from_secs(30),
            ..Limits::default()
        },
    );
    for i in 0..5 {
        h.store.put("b[]", &format!("r{i}"));
    }
    let close = crate::routes::CloseConnection(Arc::new(tokio::sync::Notify::new()));
    let mut req = post_stream(Some(format!("Token {}", token())), "{}");
    req.extensions_mut().insert(close.clone());
    // The response is held but never read.
    let res = call(&h, req).await;
    let metrics = h.app.state().metrics.clone();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(metrics.streams_stalled.get(), 0, "not before the timeout");
    assert_eq!(metrics.streams_open.get(), 1);
    // Paused time moves on to the send timeout; the stream gives up, says
    // so, and asks the server to close the connection.
    tokio::time::timeout(Duration::from_secs(5), close.0.notified())
        .await
        .expect("the connection is told to close");
    assert_eq!(metrics.streams_stalled.get(), 1);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.streams_open.get(), 0, "the stream task ended");
    drop(res);
}
