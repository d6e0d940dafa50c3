//! Router tests: requests go straight into the service, no socket, no
//! Postgres. This file has the helpers and the request-level checks
//! (routing, auth, bodies, errors); [`endpoints`] the JSON endpoints and
//! CORS; [`stream`] the sync stream's content; [`stream_wire`] its
//! encodings and stalled clients.

mod endpoints;
mod stream;
mod stream_wire;

use super::Limits;
use crate::auth::tests::{alg_none_token, hs256, SECRET};
use crate::auth::{dev_token, now_secs};
use crate::testing::{FakeStore, Harness};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::Service;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

pub(super) type Res = http::Response<super::ResBody>;

pub(super) fn token() -> String {
    dev_token(SECRET, "u1", 3600, None).unwrap()
}

pub(super) fn harness() -> Harness {
    Harness::new(Arc::new(FakeStore::default()), Limits::default())
}

pub(super) async fn call(h: &Harness, req: Request<Full<Bytes>>) -> Res {
    h.app.call(req).await.unwrap()
}

pub(super) fn post_stream(auth: Option<String>, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/sync/stream").header("content-type", "application/json");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Full::new(body.into())).unwrap()
}

pub(super) async fn json_body(res: Res) -> Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

pub(super) async fn expect_error(res: Res, status: StatusCode, code: &str) -> String {
    assert_eq!(res.status(), status);
    let v = json_body(res).await;
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["status"], status.as_u16());
    v["error"]["description"].as_str().unwrap().to_string()
}

/// Reads NDJSON lines; `None` at the end of the stream.
pub(super) struct Lines {
    body: super::ResBody,
    buf: Vec<u8>,
    /// A missing line fails the test instead of hanging it.
    pub(super) wait: Duration,
}

impl Lines {
    pub(super) fn new(res: Res) -> Lines {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/x-ndjson");
        Lines {
            body: res.into_body(),
            buf: Vec::new(),
            wait: Duration::from_secs(10),
        }
    }

    pub(super) async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                // Every line must also parse as the shared wire type.
                let text = std::str::from_utf8(&line).unwrap().trim_end();
                outpost_protocol::SyncLine::parse(text).unwrap().unwrap();
                return Some(serde_json::from_str(text).unwrap());
            }
            let frame = tokio::time::timeout(self.wait, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no line within {:?}", self.wait));
            match frame {
                Some(f) => self.buf.extend_from_slice(&f.unwrap().into_data().unwrap()),
                None => {
                    assert!(self.buf.is_empty(), "stream ended mid-line");
                    return None;
                }
            }
        }
    }

    /// Lines up to and including the next `checkpoint_complete`.
    pub(super) async fn until_complete(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(l) = self.next().await {
            let done = l.get("checkpoint_complete").is_some();
            out.push(l);
            if done {
                return out;
            }
        }
        panic!("stream ended before checkpoint_complete: {out:?}");
    }
}

pub(super) fn key(line: &Value) -> &str {
    line.as_object().unwrap().keys().next().unwrap()
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_405() {
    let h = harness();
    let res = call(&h, Request::get("/nope").body(Full::default()).unwrap()).await;
    expect_error(res, StatusCode::NOT_FOUND, "OUTPOST_NOT_FOUND").await;
    let res = call(
        &h,
        Request::get("/sync/stream").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn bad_tokens_get_401_psync_s2101() {
    let h = harness();
    let now = now_secs();
    let claims = |iat: u64, exp: u64| json!({"sub": "u1", "iat": iat, "exp": exp});
    let cases = [
        (None, "missing authorization header"),
        (
            Some(format!(
                "Token {}",
                hs256(SECRET, &claims(now - 7200, now - 3600))
            )),
            "token expired",
        ),
        (
            Some(format!(
                "Token {}",
                hs256("wrong-secret", &claims(now, now + 60))
            )),
            "invalid signature",
        ),
        (
            Some(format!("Token {}", alg_none_token(&claims(now, now + 60)))),
            "unsupported algorithm",
        ),
        (Some("Token garbage".to_string()), "malformed"),
    ];
    for (auth, reason) in cases {
        let res = call(&h, post_stream(auth, "{}")).await;
        let desc = expect_error(res, StatusCode::UNAUTHORIZED, "PSYNC_S2101").await;
        assert!(desc.contains(reason), "{desc:?} should mention {reason:?}");
    }
    // Auth comes first: nothing reached the database.
    assert!(h.store.db.lock().unwrap().last_claims.is_none());
}

#[tokio::test]
async fn malformed_json_is_400_and_oversize_413() {
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_sync_body_bytes: 64,
            ..Limits::default()
        },
    );
    let res = call(
        &h,
        post_stream(Some(format!("Token {}", token())), "{\"buckets\": ["),
    )
    .await;
    expect_error(res, StatusCode::BAD_REQUEST, "OUTPOST_BAD_REQUEST").await;
    let res = call(
        &h,
        post_stream(Some(format!("Token {}", token())), r#"{"buckets": 3}"#),
    )
    .await;
    expect_error(res, StatusCode::BAD_REQUEST, "OUTPOST_BAD_REQUEST").await;

    let big = format!(r#"{{"client_id":"{}"}}"#, "x".repeat(100));
    let res = call(
        &h,
        post_stream(Some(format!("Token {}", token())), big.clone()),
    )
    .await;
    expect_error(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        "OUTPOST_PAYLOAD_TOO_LARGE",
    )
    .await;
    // Also when the length is declared up front.
    let mut req = post_stream(Some(format!("Token {}", token())), big);
    req.headers_mut()
        .insert("content-length", "100000".parse().unwrap());
    let res = call(&h, req).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn sync_bodies_have_their_own_limit() {
    // A resume lists every bucket: far more than a `/crud` body may hold.
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_body_bytes: 64,
            ..Limits::default()
        },
    );
    let buckets: Vec<_> = (0..1000)
        .map(|i| json!({"name": format!("b[{i}]"), "after": "0"}))
        .collect();
    let body = json!({"buckets": buckets, "client_id": "c"}).to_string();
    let res = call(&h, post_stream(Some(format!("Token {}", token())), body)).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn database_errors_are_500_without_details() {
    let h = harness();
    h.store.fail.store(true, SeqCst);
    let res = call(&h, post_stream(Some(format!("Bearer {}", token())), "{}")).await;
    let desc = expect_error(res, StatusCode::INTERNAL_SERVER_ERROR, "OUTPOST_INTERNAL").await;
    assert_eq!(desc, "internal error");
    let res = call(&h, Request::get("/health").body(Full::default()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn health_metrics_and_schema() {
    let h = harness();
    let res = call(&h, Request::get("/health").body(Full::default()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_body(res).await, json!({"status": "ok"}));
    let res = call(&h, Request::get("/metrics").body(Full::default()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("# TYPE outpost_relay_streams_open gauge"));
    let res = call(&h, Request::get("/schema").body(Full::default()).unwrap()).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "PSYNC_S2101").await;
    let req = Request::get("/schema")
        .header("authorization", format!("Bearer {}", token()))
        .body(Full::default())
        .unwrap();
    let res = call(&h, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_body(res).await["tables"][0]["name"], "todos");
}

#[tokio::test]
async fn health_is_503_naming_what_is_down() {
    let h = harness();
    let health = || Request::get("/health").body(Full::default()).unwrap();
    assert_eq!(call(&h, health()).await.status(), StatusCode::OK);
    h.app.state().liveness.set_listener(false);
    let res = call(&h, health()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        json_body(res).await,
        json!({"status": "unavailable", "problems": ["LISTEN connection down"]})
    );
    h.store.fail.store(true, SeqCst);
    let v = json_body(call(&h, health()).await).await;
    assert_eq!(
        v["problems"],
        json!(["database unavailable", "LISTEN connection down"])
    );
    h.app.state().liveness.set_listener(true);
    h.store.fail.store(false, SeqCst);
    assert_eq!(call(&h, health()).await.status(), StatusCode::OK);
}
