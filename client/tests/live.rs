//! The async side against an in-process HTTP server on 127.0.0.1 that replays
//! canned NDJSON: stream decoding, request shape, uploads, errors; plus live queries.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outpost_client::schema::{Column, ColumnType, Schema, Table};
use outpost_client::{Credentials, Database, Error, SchemaMode, StaticConnector, SyncOptions};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    auth: String,
    body: String,
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// Serves `handler` on an ephemeral loopback port; returns the endpoint and the request log.
async fn serve(handler: Arc<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(vec![]));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    let log = log.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let seen = Seen {
                            method,
                            path,
                            auth,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        };
                        log.lock().unwrap().push(seen.clone());
                        let (status, body) = handler(&seen);
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-ndjson")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), log)
}

fn schema() -> Schema {
    Schema::new(vec![Table::new(
        "todos",
        vec![
            Column::new("title", ColumnType::Text),
            Column::new("done", ColumnType::Integer),
        ],
    )])
}

fn put(op: u64, id: &str, title: &str, cs: u32) -> Value {
    json!({"op_id": op.to_string(), "op": "PUT", "object_type": "todos", "object_id": id, "subkey": "s",
           "checksum": cs, "data": json!({"id": id, "title": title, "done": 0}).to_string()})
}

fn stream(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
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

fn good_stream() -> String {
    stream(&[
        json!({"checkpoint": {"last_op_id": "2", "buckets": [{"bucket": "b[]", "checksum": 3, "count": 2}]}}),
        json!({"token_expires_in": 3600}),
        json!({"unknown_future_line": {}}),
        json!({"data": {"bucket": "b[]", "data": [put(1, "t1", "one", 1), put(2, "t2", "two", 2)]}}),
        json!({"checkpoint_complete": {"last_op_id": "2"}}),
    ])
}

#[tokio::test]
async fn syncs_once_over_http() {
    let body = good_stream();
    let (endpoint, log) = serve(Arc::new(move |_: &Seen| (200, body.clone()))).await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    let cp = db.connect(connector(&endpoint), once()).await.unwrap();
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
    db.connect(connector(&endpoint), once()).await.unwrap();
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
    let err = db.connect(connector(&endpoint), once()).await.unwrap_err();
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
        db.connect(connector(&endpoint), once()).await.unwrap();
        let err = db.connect(connector(&endpoint), once()).await.unwrap_err();
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
        db.connect(connector(&endpoint), options),
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
        db.connect(connector(&endpoint), options),
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
        db.connect(connector(&endpoint), options),
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

fn outpost(args: &[&str]) -> (bool, Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        out.status.success(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sync_query_exec_status() {
    let body = good_stream();
    // A relay without `GET /schema` (404): views are inferred from the data.
    let (endpoint, log) = serve(Arc::new(move |s: &Seen| match s.path.as_str() {
        "/schema" => (
            404,
            r#"{"error":{"code":"PSYNC_S1404","status":404,"description":"not found"}}"#.into(),
        ),
        _ => (200, body.clone()),
    }))
    .await;
    let dir = std::env::temp_dir().join(format!("outpost-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let _ = std::fs::remove_file(&db);
    let db = db.to_str().unwrap().to_string();
    let ep = endpoint.clone();
    let dbc = db.clone();
    let (ok, v, err) = tokio::task::spawn_blocking(move || {
        outpost(&[
            "sync",
            "--db",
            &dbc,
            "--endpoint",
            &ep,
            "--token",
            "t",
            "--once",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(v, json!({"checkpoint": "2", "tables": {"todos": 2}}));
    assert!(!err.contains("warning"), "{err}");
    let paths: Vec<String> = log.lock().unwrap().iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths[..2], ["/schema", "/sync/stream"]);

    // Views were inferred from the synced rows.
    let (ok, v, err) = outpost(&[
        "query",
        "--db",
        &db,
        "SELECT id, title, done FROM todos ORDER BY id",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        v,
        json!([{"id":"t1","title":"one","done":0},{"id":"t2","title":"two","done":0}])
    );

    let (ok, v, err) = outpost(&[
        "exec",
        "--db",
        &db,
        "UPDATE todos SET done = 1 WHERE id = 't1'",
    ]);
    assert!(ok, "{err}");
    assert_eq!(v, json!({"changes": 1, "upload_queue": 1}));

    let (ok, v, _) = outpost(&["status", "--db", &db]);
    assert!(ok);
    assert_eq!(v["last_checkpoint"], "2");
    assert_eq!(v["upload_queue"], 1);
    assert_eq!(v["buckets"][0]["name"], "b[]");

    let (ok, _, err) = outpost(&["query", "--db", &db, "SELECT * FROM nope"]);
    assert!(!ok);
    assert!(err.contains("no such table"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sync_uses_the_relays_schema() {
    let body = good_stream();
    // The relay's schema declares a column no synced row has yet, and a table with
    // no rows: both exist as soon as the schema is installed; `done` is typed REAL.
    let schema = json!({"tables": [
        {"name": "todos", "columns": [
            {"name": "title", "type": "text"},
            {"name": "done", "type": "real"},
            {"name": "due", "type": "text"}]},
        {"name": "lists", "columns": [{"name": "name", "type": "text"}]}]});
    let (endpoint, log) = serve(Arc::new(move |s: &Seen| match s.path.as_str() {
        "/schema" => (200, json!({"data": schema}).to_string()),
        _ => (200, body.clone()),
    }))
    .await;
    let dir = std::env::temp_dir().join(format!("outpost-cli-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let _ = std::fs::remove_file(&db);
    let db = db.to_str().unwrap().to_string();
    let (ep, dbc) = (endpoint.clone(), db.clone());
    let (ok, v, err) = tokio::task::spawn_blocking(move || {
        outpost(&[
            "sync",
            "--db",
            &dbc,
            "--endpoint",
            &ep,
            "--token",
            "t",
            "--once",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        v,
        json!({"checkpoint": "2", "tables": {"lists": 0, "todos": 2}})
    );
    let auth = log.lock().unwrap()[0].auth.clone();
    assert_eq!(auth, "Token t", "GET /schema is authenticated");

    let (ok, v, err) = outpost(&[
        "query",
        "--db",
        &db,
        "SELECT id, title, done, due, typeof(done) AS t FROM todos ORDER BY id LIMIT 1",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        v,
        json!([{"id": "t1", "title": "one", "done": 0.0, "due": null, "t": "real"}])
    );
    let (ok, v, err) = outpost(&["query", "--db", &db, "SELECT count(*) AS n FROM lists"]);
    assert!(ok, "{err}");
    assert_eq!(v, json!([{"n": 0}]));
    let _ = std::fs::remove_dir_all(&dir);
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
    let http = outpost_client::transport::Http::new();
    assert_eq!(
        outpost_client::connector::fetch_relay_schema(&http, &creds)
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
    let e = outpost_client::connector::fetch_relay_schema(&http, &creds)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Schema(_)), "{e}");
}
