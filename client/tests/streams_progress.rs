//! Per-stream download progress (`SyncStatus::streams[].progress`, PowerSync's
//! `SyncStreamStatus.progress`) against a scripted relay that holds each
//! stream open mid-download, so every figure is read at a known point:
//! each subscription counts its own buckets' ops (from the checkpoint's
//! counts and the ops received), a reconnect with a new subscription set
//! keeps what was received, and a completed checkpoint clears it.

mod support;

use bytes::Bytes;
use outpost_client::schema::Schema;
use outpost_client::sync::Progress;
use outpost_client::{
    Credentials, Database, SchemaMode, StaticConnector, SyncClient, SyncOptions, SyncStatus,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{put, stream, Reply, Seen};

const A: &str = "list_todos|0[\"a\"]";
const B: &str = "list_todos|0[\"b\"]";
const MINE: &str = "my_lists|0[\"u1\"]";

fn bucket(name: &str, checksum: u32, count: u64, reason: Value) -> Value {
    json!({"bucket": name, "checksum": checksum, "count": count, "priority": 3, "subscriptions": [reason]})
}

fn checkpoint(buckets: Vec<Value>) -> Value {
    json!({"checkpoint": {"last_op_id": "6", "buckets": buckets, "streams": [
        {"name": "my_lists", "is_default": true, "errors": []},
        {"name": "list_todos", "is_default": false, "errors": []}]}})
}

fn data(bucket: &str, ops: &[(u64, &str)]) -> Value {
    let ops: Vec<Value> = ops
        .iter()
        .map(|(op, id)| put(*op, id, id, *op as u32))
        .collect();
    json!({"data": {"bucket": bucket, "data": ops}})
}

/// The three answers, one per request: a's bucket is 3 ops (checksum
/// 1+2+3), b's 1 (6), my_lists' 2 (4+5).
fn answers() -> Vec<String> {
    let a = bucket(A, 6, 3, json!({"sub": 0}));
    let mine = bucket(MINE, 9, 2, json!({"default": 0}));
    let b = bucket(B, 6, 1, json!({"sub": 1}));
    vec![
        // Subscribed to a: two of its three ops, then held.
        stream(&[
            checkpoint(vec![a.clone(), mine.clone()]),
            data(A, &[(1, "t1"), (2, "t2")]),
        ]),
        // Subscribed to a and b: one of my_lists' ops, then held.
        stream(&[
            checkpoint(vec![a.clone(), b.clone(), mine.clone()]),
            data(MINE, &[(4, "m4")]),
        ]),
        // a, b and c (which brings nothing): the rest, complete.
        stream(&[
            checkpoint(vec![a, b, mine]),
            data(A, &[(3, "t3")]),
            data(B, &[(6, "t6")]),
            data(MINE, &[(5, "m5")]),
            json!({"checkpoint_complete": {"last_op_id": "6"}}),
        ]),
    ]
}

async fn until(db: &Database, what: &str, f: impl Fn(&SyncStatus) -> bool) -> SyncStatus {
    let mut rx = db.status();
    let got = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| f(s))).await;
    match got {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("timed out waiting for {what}: {:?}", db.status().borrow()),
    }
}

fn progress(s: &SyncStatus, name: &str, params: Value) -> Option<Progress> {
    s.for_stream(name, &params).and_then(|st| st.progress)
}

fn p(downloaded: u64, total: u64) -> Option<Progress> {
    Some(Progress { downloaded, total })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscription_reports_its_buckets_download_progress() {
    let answers = answers();
    let served = Arc::new(AtomicUsize::new(0));
    let n = served.clone();
    let server = support::serve(Arc::new(move |s: &Seen| {
        if s.path != "/sync/stream" {
            return Reply::new(404, "{}");
        }
        let i = n.fetch_add(1, Ordering::SeqCst).min(answers.len() - 1);
        Reply::chunks(vec![Bytes::from(answers[i].clone())], true)
    }))
    .await;
    let schema =
        Schema::from_json(r#"{"tables": [{"name": "todos", "columns": [{"name": "title", "type": "text"}, {"name": "done", "type": "integer"}]}]}"#)
            .unwrap();
    let db = Database::open_in_memory(SchemaMode::Fixed(schema)).unwrap();
    let a = db
        .sync_stream("list_todos", json!({"list_id": "a"}))
        .subscribe()
        .unwrap();
    let creds = Credentials {
        endpoint: server.endpoint.clone(),
        token: "tok".into(),
    };
    let options = SyncOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..SyncOptions::default()
    };
    let task =
        tokio::spawn(SyncClient::new(db.clone(), Arc::new(StaticConnector(creds))).run(options));

    let s = until(&db, "a's progress mid-download", |s| {
        progress(s, "list_todos", json!({"list_id": "a"})) == p(2, 3)
    })
    .await;
    assert_eq!(progress(&s, "my_lists", Value::Null), p(0, 2), "{s:?}");
    assert_eq!(s.progress, p(2, 5));
    assert!(s.downloading);

    // A new subscription reconnects; a's two ops are not sent again and
    // still count.
    let b = db
        .sync_stream("list_todos", json!({"list_id": "b"}))
        .subscribe()
        .unwrap();
    let s = until(&db, "b's progress after the reconnect", |s| {
        progress(s, "list_todos", json!({"list_id": "b"})) == p(0, 1)
            && progress(s, "my_lists", Value::Null) == p(1, 2)
    })
    .await;
    assert_eq!(
        progress(&s, "list_todos", json!({"list_id": "a"})),
        p(2, 3),
        "{s:?}"
    );
    assert_eq!(s.progress, p(3, 6));
    let second: Value = serde_json::from_str(&server.requests("/sync/stream")[1].body).unwrap();
    assert!(
        second["buckets"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": A, "after": "2"})),
        "{second}"
    );

    // The rest arrives and the checkpoint applies: no stream is downloading.
    let c = db
        .sync_stream("list_todos", json!({"list_id": "c"}))
        .subscribe()
        .unwrap();
    let s = until(&db, "the complete checkpoint", |s| {
        s.last_checkpoint.as_deref() == Some("6")
            && s.streams.iter().all(|st| st.progress.is_none())
    })
    .await;
    assert!(!s.downloading);
    assert!(a.status().unwrap().has_synced && b.status().unwrap().has_synced);
    assert_eq!(c.status().unwrap().buckets, 0);
    let rows = db.query("SELECT count(*) AS n FROM todos", &[]).unwrap();
    assert_eq!(rows[0]["n"], json!(6));
    task.abort();
}
