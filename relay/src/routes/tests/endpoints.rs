//! The JSON endpoints (`/crud`, write checkpoints) and CORS.

use super::*;
use crate::routes::Limits;
use crate::testing::{FakeStore, Harness};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::sync::Arc;

fn post_crud(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("/crud")
        .header("authorization", format!("Bearer {}", token()))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

fn crud_harness(limits: Limits) -> Harness {
    let mut h = Harness::new(Arc::new(FakeStore::default()), limits);
    h.set_write_role(Some("app_writer"));
    h
}

#[tokio::test]
async fn crud_is_disabled_without_write_role() {
    let h = harness();
    let res = call(&h, post_crud(r#"{"batch":[]}"#)).await;
    let desc = expect_error(res, StatusCode::NOT_IMPLEMENTED, "OUTPOST_NOT_IMPLEMENTED").await;
    assert!(desc.contains("OUTPOST_WRITE_ROLE"), "{desc}");
}

#[tokio::test]
async fn crud_applies_batches_and_names_refused_entries() {
    let h = crud_harness(Limits::default());
    let entry = json!({"op": "PUT", "type": "todos", "id": "1", "data": {"title": "x"}});
    let res = call(
        &h,
        post_crud(json!({"batch": [entry.clone(), entry.clone()]}).to_string()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_body(res).await, json!({"data": {"applied": 2}}));
    {
        let db = h.store.db.lock().unwrap();
        assert_eq!(db.crud.len(), 1);
        assert_eq!(db.crud[0].0, "app_writer");
        assert_eq!(db.last_claims.as_ref().unwrap()["sub"], "u1");
    }

    // The store refuses entry 1: 403 naming it.
    let denied = json!({"op": "DELETE", "type": "denied", "id": "9"});
    let res = call(
        &h,
        post_crud(json!({"batch": [entry.clone(), denied]}).to_string()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let v = json_body(res).await;
    assert_eq!(v["error"]["code"], "OUTPOST_CRUD_DENIED");
    assert_eq!(v["error"]["entry"]["index"], 1);
    assert_eq!(v["error"]["entry"]["id"], "9");
    assert!(
        v["error"]["description"]
            .as_str()
            .unwrap()
            .starts_with("entry 1 (denied id \"9\")"),
        "{v}"
    );

    // A malformed entry is refused before the database: 400 naming it.
    let bad = json!({"op": "UPSERT", "type": "todos", "id": "2"});
    let res = call(
        &h,
        post_crud(json!({"batch": [entry.clone(), bad]}).to_string()),
    )
    .await;
    let desc = expect_error(res, StatusCode::BAD_REQUEST, "OUTPOST_BAD_REQUEST").await;
    assert!(desc.starts_with("entry 1 (todos id \"2\")"), "{desc}");
    assert_eq!(h.store.db.lock().unwrap().crud.len(), 1);

    let res = call(&h, post_crud("{\"batch\": [")).await;
    expect_error(res, StatusCode::BAD_REQUEST, "OUTPOST_BAD_REQUEST").await;
}

#[tokio::test]
async fn crud_batch_limits_are_413() {
    let h = crud_harness(Limits {
        max_crud_entries: 2,
        max_body_bytes: 4096,
        ..Limits::default()
    });
    let entry = json!({"op": "DELETE", "type": "todos", "id": "1"});
    let res = call(
        &h,
        post_crud(json!({"batch": [entry.clone(), entry.clone(), entry.clone()]}).to_string()),
    )
    .await;
    expect_error(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        "OUTPOST_PAYLOAD_TOO_LARGE",
    )
    .await;
    let big = json!({"batch": [{"op": "PUT", "type": "todos", "id": "1", "data": {"t": "x".repeat(5000)}}]});
    let res = call(&h, post_crud(big.to_string())).await;
    expect_error(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        "OUTPOST_PAYLOAD_TOO_LARGE",
    )
    .await;
    assert!(h.store.db.lock().unwrap().crud.is_empty());
}

#[tokio::test]
async fn write_checkpoint_counts_up_with_or_without_client_id() {
    let h = harness();
    let get = |q: &str| {
        Request::get(format!("/write-checkpoint2.json{q}"))
            .header("authorization", format!("Token {}", token()))
            .body(Full::default())
            .unwrap()
    };
    let res = call(&h, get("?client_id=c%201")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        json_body(res).await,
        json!({"data": {"write_checkpoint": "1"}})
    );
    let res = call(&h, get("?client_id=c1")).await;
    assert_eq!(
        json_body(res).await,
        json!({"data": {"write_checkpoint": "2"}})
    );
    // Optional, as in PowerSync.
    let res = call(&h, get("")).await;
    assert_eq!(
        json_body(res).await,
        json!({"data": {"write_checkpoint": "3"}})
    );
    let res = call(
        &h,
        Request::get("/write-checkpoint2.json?client_id=c")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

fn post_checkpoint_request(body: Value) -> Request<Full<Bytes>> {
    Request::post("/sync/checkpoint-request")
        .header("authorization", format!("Bearer {}", token()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn checkpoint_requests_keep_the_largest_id() {
    let h = harness();
    let ask = |id: Value| {
        post_checkpoint_request(json!({"client_id": "c1", "checkpoint_request_id": id}))
    };
    let res = call(&h, ask(json!("7"))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        json_body(res).await,
        json!({"data": {"checkpoint_request_id": "7"}})
    );
    // Stale: the stored id comes back.
    let res = call(&h, ask(json!(4))).await;
    assert_eq!(json_body(res).await["data"]["checkpoint_request_id"], "7");
    for bad in [
        json!("0"),
        json!(-3),
        json!("9223372036854775808"),
        json!(null),
    ] {
        let res = call(&h, ask(bad.clone())).await;
        expect_error(res, StatusCode::BAD_REQUEST, "OUTPOST_BAD_REQUEST").await;
    }
    let res = call(&h, post_checkpoint_request(json!({"client_id": "c1"}))).await;
    expect_error(res, StatusCode::BAD_REQUEST, "OUTPOST_BAD_REQUEST").await;
    let res = call(
        &h,
        Request::get("/sync/checkpoint-request")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

fn preflight(path: &str, origin: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("OPTIONS")
        .uri(path)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "Authorization, Content-Type, X-User-Agent",
        )
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn cors_preflights_are_answered_on_client_paths_only() {
    let h = harness();
    for path in crate::routes::cors::CLIENT_PATHS {
        let res = call(&h, preflight(path, "https://app.example.com")).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let hd = |n: &str| {
            res.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        };
        assert_eq!(hd("access-control-allow-origin").as_deref(), Some("*"));
        let allowed = hd("access-control-allow-headers").unwrap();
        for want in ["authorization", "content-type", "x-user-agent"] {
            assert!(allowed.contains(want), "{path}: {allowed}");
        }
        assert!(hd("access-control-allow-methods").unwrap().contains("post"));
    }
    for path in ["/health", "/metrics"] {
        let res = call(&h, preflight(path, "https://app.example.com")).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert!(res.headers().get("access-control-allow-origin").is_none());
    }
    // A real request from a page: answered with the header, errors too.
    let req = Request::get("/schema")
        .header("origin", "https://app.example.com")
        .body(Full::default())
        .unwrap();
    let res = call(&h, req).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn cors_origin_lists_allow_only_their_origins() {
    let mut h = harness();
    h.set_cors(&["https://app.example.com"]);
    let res = call(&h, preflight("/sync/stream", "https://app.example.com")).await;
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(res.headers()["vary"].to_str().unwrap().contains("origin"));
    let res = call(&h, preflight("/sync/stream", "https://other.example.com")).await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
}
