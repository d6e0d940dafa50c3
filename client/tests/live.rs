//! The async side against an in-process HTTP server on 127.0.0.1 that replays
//! canned NDJSON: stream decoding, request shape, uploads, errors; plus live queries.

use outpost_client::schema::{Column, ColumnType, Schema, Table};
use outpost_client::{
    Credentials, Database, Error, SchemaMode, StaticConnector, SyncClient, SyncOptions,
};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;

use support::{good_stream, put, serve_simple as serve, stream, Seen};

fn schema() -> Schema {
    Schema::new(vec![Table::new(
        "todos",
        vec![
            Column::new("title", ColumnType::Text),
            Column::new("done", ColumnType::Integer),
        ],
    )])
}

fn once() -> SyncOptions {
    SyncOptions {
        once: true,
        max_attempts: Some(1),
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..SyncOptions::default()
    }
}

fn connector(endpoint: &str) -> Arc<StaticConnector> {
    Arc::new(StaticConnector(Credentials {
        endpoint: endpoint.to_string(),
        token: "tok123".into(),
    }))
}

#[tokio::test]
async fn syncs_once_over_http() {
    let body = good_stream();
    let (endpoint, log) = serve(Arc::new(move |_: &Seen| (200, body.clone()))).await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    let cp = SyncClient::new(db.clone(), connector(&endpoint))
        .run(once())
        .await
        .unwrap();
    assert_eq!(cp.as_deref(), Some("2"));
    let rows = db
        .query("SELECT id, title FROM todos ORDER BY id", &[])
        .unwrap();
    assert_eq!(
        Value::Array(rows.into_iter().map(Value::Object).collect()),
        json!([{"id":"t1","title":"one"},{"id":"t2","title":"two"}])
    );

    let req = log.lock().unwrap()[0].clone();
    assert_eq!(
        (req.method.as_str(), req.path.as_str(), req.auth.as_str()),
        ("POST", "/sync/stream", "Token tok123")
    );
    let body: Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(body["include_checksum"], true);
    assert_eq!(body["raw_data"], true);
    assert_eq!(body["buckets"], json!([]));
    assert!(body["client_id"].as_str().unwrap().len() >= 32);
    let status = db.status().borrow().clone();
    assert_eq!(status.last_checkpoint.as_deref(), Some("2"));

    // A second connection resumes from the stored position.
    SyncClient::new(db.clone(), connector(&endpoint))
        .run(once())
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&log.lock().unwrap()[1].body).unwrap();
    assert_eq!(body["buckets"], json!([{"name": "b[]", "after": "2"}]));
}

#[tokio::test]
async fn http_error_is_reported_and_nothing_changes() {
    let (endpoint, _) = serve(Arc::new(|_: &Seen| {
        (
            401,
            r#"{"error":{"code":"PSYNC_S2101","status":401,"description":"bad token"}}"#.into(),
        )
    }))
    .await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    let err = SyncClient::new(db.clone(), connector(&endpoint))
        .run(once())
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert!(err.to_string().contains("bad token"), "{err}");
    assert!(db
        .status()
        .borrow()
        .last_error
        .as_deref()
        .unwrap()
        .contains("401"));
}

#[tokio::test]
async fn corrupt_or_truncated_stream_leaves_last_good_checkpoint() {
    for tail in [
        "{\"data\": {\"bucket\": tru\n",
        "{\"checkpoint_complete\": {\"last_op_id\": \"3\"",
    ] {
        let good = good_stream();
        let tail_s = tail.to_string();
        let calls = Arc::new(Mutex::new(0));
        let handler = move |_: &Seen| {
            let mut n = calls.lock().unwrap();
            *n += 1;
            if *n == 1 {
                return (200, good.clone());
            }
            let bad = stream(&[
                json!({"checkpoint_diff": {"last_op_id": "3", "updated_buckets": [{"bucket": "b[]", "checksum": 10}]}}),
                json!({"data": {"bucket": "b[]", "data": [put(3, "t3", "three", 7)]}}),
            ]) + &tail_s;
            (200, bad)
        };
        let (endpoint, _) = serve(Arc::new(handler)).await;
        let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
        SyncClient::new(db.clone(), connector(&endpoint))
            .run(once())
            .await
            .unwrap();
        let err = SyncClient::new(db.clone(), connector(&endpoint))
            .run(once())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Line(_) | Error::Transport(_) | Error::Protocol(_)
            ),
            "{err}"
        );
        let n = db.query("SELECT count(*) AS n FROM todos", &[]).unwrap();
        assert_eq!(n[0]["n"], 2, "{tail}");
    }
}

#[tokio::test]
async fn uploads_queue_then_requests_write_checkpoint() {
    let (endpoint, log) = serve(Arc::new(|seen: &Seen| {
        if seen.path == "/crud" {
            (200, "{}".into())
        } else if seen.path.starts_with("/write-checkpoint2.json") {
            (200, r#"{"data":{"write_checkpoint":"5"}}"#.into())
        } else {
            // The checkpoint carries the write checkpoint the upload asked for.
            (200, stream(&[
                json!({"checkpoint": {"last_op_id": "2", "write_checkpoint": "5", "buckets": [{"bucket": "b[]", "checksum": 3}]}}),
                json!({"data": {"bucket": "b[]", "data": [put(1, "t1", "one", 1), put(2, "local1", "mine", 2)]}}),
                json!({"checkpoint_complete": {"last_op_id": "2"}}),
            ]))
        }
    }))
    .await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    let changed = db
        .execute(
            "INSERT INTO todos(id, title, done) VALUES (?1, ?2, 0)",
            &[json!("local1"), json!("mine")],
        )
        .unwrap();
    assert_eq!(changed, 1, "rows written through a view are counted");
    assert_eq!(db.status().borrow().upload_pending, 1);
    let options = SyncOptions {
        max_attempts: Some(50),
        ..once()
    };
    let cp = tokio::time::timeout(
        Duration::from_secs(20),
        SyncClient::new(db.clone(), connector(&endpoint)).run(options),
    )
    .await
    .expect("sync finished")
    .unwrap();
    assert_eq!(cp.as_deref(), Some("2"));
    let log = log.lock().unwrap().clone();
    let crud = log.iter().find(|s| s.path == "/crud").expect("uploaded");
    assert_eq!(crud.method, "POST");
    let body: Value = serde_json::from_str(&crud.body).unwrap();
    assert_eq!(body["batch"][0]["op"], "PUT");
    assert_eq!(body["batch"][0]["id"], "local1");
    assert!(log
        .iter()
        .any(|s| s.path.starts_with("/write-checkpoint2.json?client_id=")));
    assert_eq!(db.with_store(|s| s.crud_count()).unwrap(), 0);
    assert_eq!(
        db.query("SELECT count(*) AS n FROM todos", &[]).unwrap()[0]["n"],
        2
    );
}

#[tokio::test]
async fn refused_write_is_set_aside_and_the_rest_uploads() {
    // The relay refuses the batch's second entry (403, as for an RLS violation);
    // the batch rolled back, so the first transaction must be sent again alone.
    let (endpoint, log) = serve(Arc::new(|seen: &Seen| {
        if seen.path == "/crud" {
            let body: Value = serde_json::from_str(&seen.body).unwrap();
            if body["batch"].as_array().unwrap().len() > 1 {
                return (403, json!({"error": {"code": "OUTPOST_FORBIDDEN", "status": 403,
                    "description": "entry 1 (todos id \"bad\"): forbidden by row-level security",
                    "entry": {"index": 1, "op": "PUT", "type": "todos", "id": "bad"}}}).to_string());
            }
            (200, r#"{"data":{"applied":1}}"#.into())
        } else if seen.path.starts_with("/write-checkpoint2.json") {
            (200, r#"{"data":{"write_checkpoint":"5"}}"#.into())
        } else {
            (200, stream(&[
                json!({"checkpoint": {"last_op_id": "2", "write_checkpoint": "5", "buckets": [{"bucket": "b[]", "checksum": 3}]}}),
                json!({"data": {"bucket": "b[]", "data": [put(1, "t1", "one", 1), put(2, "good", "mine", 2)]}}),
                json!({"checkpoint_complete": {"last_op_id": "2"}}),
            ]))
        }
    }))
    .await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    db.execute(
        "INSERT INTO todos(id, title, done) VALUES ('good', 'mine', 0)",
        &[],
    )
    .unwrap();
    db.execute(
        "INSERT INTO todos(id, title, done) VALUES ('bad', 'nope', 0)",
        &[],
    )
    .unwrap();
    assert_eq!(db.status().borrow().upload_pending, 2);
    let options = SyncOptions {
        max_attempts: Some(50),
        ..once()
    };
    let cp = tokio::time::timeout(
        Duration::from_secs(20),
        SyncClient::new(db.clone(), connector(&endpoint)).run(options),
    )
    .await
    .expect("a refused write must not wedge the queue")
    .unwrap();
    assert_eq!(cp.as_deref(), Some("2"));
    let bodies: Vec<Value> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/crud")
        .map(|s| serde_json::from_str(&s.body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[1]["batch"][0]["id"], "good");
    let status = db.status().borrow().clone();
    assert_eq!(status.upload_pending, 0);
    let rejected = status.last_rejected.expect("the rejection is reported");
    assert!(
        rejected.contains("bad") && rejected.contains("403"),
        "{rejected}"
    );
    // The refused row is set aside and the server's state replaced the optimistic one.
    assert_eq!(
        db.query("SELECT id FROM todos ORDER BY id", &[]).unwrap(),
        db.query("SELECT 'good' AS id UNION ALL SELECT 't1'", &[])
            .unwrap()
    );
    let kept = db
        .query(
            "SELECT status, json_extract(data, '$.id') AS id, reason FROM ps_crud_rejected",
            &[],
        )
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["status"], 403);
    assert_eq!(kept[0]["id"], "bad");
    assert!(kept[0]["reason"]
        .as_str()
        .unwrap()
        .contains("row-level security"));
}

#[tokio::test]
async fn too_large_batches_are_split_and_a_too_large_transaction_is_refused() {
    // The relay accepts at most 2 entries per request (413 beyond that).
    let (endpoint, log) = serve(Arc::new(|seen: &Seen| {
        if seen.path == "/crud" {
            let body: Value = serde_json::from_str(&seen.body).unwrap();
            if body["batch"].as_array().unwrap().len() > 2 {
                return (413, json!({"error": {"code": "OUTPOST_TOO_LARGE", "status": 413,
                    "description": "at most 2 entries per batch"}}).to_string());
            }
            (200, r#"{"data":{"applied":1}}"#.into())
        } else if seen.path.starts_with("/write-checkpoint2.json") {
            (200, r#"{"data":{"write_checkpoint":"5"}}"#.into())
        } else {
            (200, stream(&[
                json!({"checkpoint": {"last_op_id": "1", "write_checkpoint": "5", "buckets": [{"bucket": "b[]", "checksum": 1}]}}),
                json!({"data": {"bucket": "b[]", "data": [put(1, "t1", "one", 1)]}}),
                json!({"checkpoint_complete": {"last_op_id": "1"}}),
            ]))
        }
    }))
    .await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    // Three one-row transactions (together too large), then one three-row
    // transaction (too large on its own).
    for id in ["a", "b", "c"] {
        db.execute(
            &format!("INSERT INTO todos(id, title, done) VALUES ('{id}', 'x', 0)"),
            &[],
        )
        .unwrap();
    }
    db.execute_batch(
        "INSERT INTO todos(id, title, done) VALUES ('big1', 'x', 0);
         INSERT INTO todos(id, title, done) VALUES ('big2', 'x', 0);
         INSERT INTO todos(id, title, done) VALUES ('big3', 'x', 0);",
    )
    .unwrap();
    let options = SyncOptions {
        max_attempts: Some(50),
        ..once()
    };
    let cp = tokio::time::timeout(
        Duration::from_secs(20),
        SyncClient::new(db.clone(), connector(&endpoint)).run(options),
    )
    .await
    .expect("a too-large batch must not wedge the queue")
    .unwrap();
    assert_eq!(cp.as_deref(), Some("1"));
    let uploaded: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/crud")
        .filter_map(|s| {
            let body: Value = serde_json::from_str(&s.body).unwrap();
            let batch = body["batch"].as_array().unwrap().clone();
            (batch.len() <= 2).then(|| {
                batch
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
        })
        .flatten()
        .collect();
    assert_eq!(
        uploaded,
        ["a", "b", "c"],
        "the small transactions went up in smaller batches"
    );
    let status = db.status().borrow().clone();
    assert_eq!(status.upload_pending, 0);
    assert!(status.last_rejected.expect("reported").contains("413"));
    let kept = db
        .query("SELECT DISTINCT status FROM ps_crud_rejected", &[])
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["status"], 413);
}

#[tokio::test]
async fn watch_wakes_on_relevant_writes_only() {
    let schema = Schema::new(vec![
        Table::new("todos", vec![Column::new("title", ColumnType::Text)]),
        Table::new("lists", vec![Column::new("name", ColumnType::Text)]),
    ]);
    let db = Database::open_in_memory(SchemaMode::Fixed(schema)).unwrap();
    let mut w = db.watch("SELECT count(*) AS n FROM todos", &[]).unwrap();
    assert!(w.tables().contains("ps_data__todos"), "{:?}", w.tables());
    assert!(!w.tables().contains("ps_data__lists"));
    assert_eq!(w.next().await.unwrap()[0]["n"], 0);

    db.execute("INSERT INTO lists(id, name) VALUES ('l', 'x')", &[])
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_millis(200), w.next()).await;
    assert!(woke.is_err(), "an unrelated write must not wake the watch");

    // A burst of writes is coalesced into one fresh result.
    for i in 0..5 {
        db.execute(
            "INSERT INTO todos(id, title) VALUES (?1, 't')",
            &[json!(format!("t{i}"))],
        )
        .unwrap();
    }
    let rows = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows[0]["n"], 5);
}

#[tokio::test]
async fn relay_schema_missing_or_bad() {
    let (endpoint, _) = serve(Arc::new(|s: &Seen| match s.path.as_str() {
        "/schema" => (501, "{}".into()),
        _ => (404, String::new()),
    }))
    .await;
    let creds = Credentials {
        endpoint,
        token: "t".into(),
    };
    let http = outpost_client::Http::new();
    assert_eq!(
        outpost_client::net::connector::fetch_relay_schema(&http, &creds)
            .await
            .unwrap(),
        None
    );
    let (endpoint, _) = serve(Arc::new(|_: &Seen| {
        (200, r#"{"tables":[{"name":"ps_x","columns":[]}]}"#.into())
    }))
    .await;
    let creds = Credentials {
        endpoint,
        token: "t".into(),
    };
    let e = outpost_client::net::connector::fetch_relay_schema(&http, &creds)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Schema(_)), "{e}");
}
