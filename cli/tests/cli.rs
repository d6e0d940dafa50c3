//! The `outpost` binary against an in-process HTTP(S) server on 127.0.0.1 that
//! replays canned NDJSON.

#[path = "../../client/tests/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::sync::Arc;
use support::{good_stream, serve_simple as serve, Reply, Seen, TestCa};

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

/// A fresh database path in its own temp dir: (dir, db path).
fn fresh_db(label: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("outpost-cli-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let _ = std::fs::remove_file(&db);
    (dir, db.to_str().unwrap().to_string())
}

/// `outpost sync --once` (plus `extra` arguments) off the test's runtime.
async fn sync_once(db: &str, endpoint: &str, extra: &[&str]) -> (bool, Value, String) {
    let args: Vec<String> = [
        "sync",
        "--db",
        db,
        "--endpoint",
        endpoint,
        "--token",
        "t",
        "--once",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    tokio::task::spawn_blocking(move || {
        outpost(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
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
    let (dir, db) = fresh_db("infer");
    let (ok, v, err) = sync_once(&db, &endpoint, &[]).await;
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
    let (dir, db) = fresh_db("schema");
    let (ok, v, err) = sync_once(&db, &endpoint, &[]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sync_over_https_with_ca_cert() {
    let ca = TestCa::new("outpost cli test CA");
    let (cert, key) = ca.server_cert();
    let body = good_stream();
    let server = support::serve_tls(
        Arc::new(move |s: &Seen| match s.path.as_str() {
            "/schema" => Reply::new(404, "{}"),
            _ => Reply::new(200, body.clone()),
        }),
        &cert,
        &key,
    )
    .await;
    let (dir, db) = fresh_db("tls");
    let ca_file = ca.write_pem(&dir, "ca.pem");
    let ep = server.endpoint.clone();
    assert!(ep.starts_with("https://"), "{ep}");

    // Without the CA the relay's certificate is refused, and the error says why.
    let (ok, _, err) = sync_once(&db, &ep, &["--attempts", "1"]).await;
    assert!(!ok);
    assert!(
        err.contains("certificate") && err.contains("--ca-cert"),
        "{err}"
    );
    assert!(server.requests("/sync/stream").is_empty());

    let (ok, v, err) = sync_once(&db, &ep, &["--ca-cert", ca_file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert_eq!(v, json!({"checkpoint": "2", "tables": {"todos": 2}}));
    assert_eq!(server.requests("/sync/stream").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sync_sends_stream_subscriptions() {
    let body = good_stream();
    let (endpoint, log) = serve(Arc::new(move |s: &Seen| match s.path.as_str() {
        "/schema" => (404, "{}".into()),
        _ => (200, body.clone()),
    }))
    .await;
    let (dir, db) = fresh_db("streams");
    let (ok, _, err) = sync_once(
        &db,
        &endpoint,
        &[
            "--stream",
            r#"list_todos:{"list_id":"a"}"#,
            "--stream",
            "my_lists",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let sent: Value = log
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.path == "/sync/stream")
        .map(|s| serde_json::from_str(&s.body).unwrap())
        .unwrap();
    assert_eq!(
        sent["streams"],
        json!({"include_defaults": true, "subscriptions": [
            {"stream": "list_todos", "parameters": {"list_id": "a"}, "override_priority": null},
            {"stream": "my_lists", "parameters": null, "override_priority": null}]})
    );
    let (ok, _, err) = sync_once(&db, &endpoint, &["--stream", "x:[1]"]).await;
    assert!(!ok);
    assert!(err.contains("must be a JSON object"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
