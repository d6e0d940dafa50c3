//! `POST /sync/stream`: order, paging, diffs, keepalives, shared reads, superseded checkpoints.

use super::*;
use crate::auth::dev_token;
use crate::auth::tests::SECRET;
use crate::routes::Limits;
use crate::testing::{FakeStore, Harness};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn initial_sync_orders_by_priority_pages_and_completes() {
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_ops_per_batch: 2,
            ..Limits::default()
        },
    );
    for i in 0..3 {
        h.store.put("low[]", &format!("l{i}"));
    }
    h.store.put("high[]", "h0");
    h.store.db.lock().unwrap().buckets[1].1 = Some(0);
    h.store.put("gone[]", "g0"); // in the client's request only: dropped below
    h.store
        .db
        .lock()
        .unwrap()
        .buckets
        .retain(|(b, _)| b != "gone[]");
    let body = json!({
        "buckets": [{"name": "low[]", "after": "1"}, {"name": "gone[]", "after": "5"}],
        "include_checksum": true, "raw_data": true, "client_id": "c1",
        "streams": {"include_defaults": true}, "app_metadata": {}
    });
    let res = call(
        &h,
        post_stream(Some(format!("Token {}", token())), body.to_string()),
    )
    .await;
    let mut lines = Lines::new(res);
    let got = lines.until_complete().await;
    let keys: Vec<&str> = got.iter().map(key).collect();
    assert_eq!(
        keys,
        [
            "checkpoint",
            "data",
            "partial_checkpoint_complete",
            "data",
            "checkpoint_complete"
        ]
    );
    let cp = &got[0]["checkpoint"];
    assert_eq!(cp["last_op_id"], "5");
    let low = cp["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bucket"] == "low[]")
        .unwrap();
    // Totals are sent signed, as the reference service does.
    assert!(low["checksum"].as_i64().unwrap() < 0, "{low}");
    assert_eq!(got[1]["data"]["bucket"], "high[]");
    assert_eq!(
        got[2]["partial_checkpoint_complete"],
        json!({"last_op_id": "5", "priority": 0})
    );
    // low[] resumes after the client's op 1: ops 2 and 3 in one page of 2.
    let d = &got[3]["data"];
    assert_eq!(d["bucket"], "low[]");
    assert_eq!(d["after"], "1");
    let ids: Vec<&str> = d["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["2", "3"]);
    assert_eq!(
        d["data"][0]["data"], r#"{"id":"l1"}"#,
        "raw_data: op data is a JSON string"
    );
    assert_eq!(got[4]["checkpoint_complete"]["last_op_id"], "5");
    assert_eq!(
        h.store.db.lock().unwrap().last_claims.as_ref().unwrap()["sub"],
        "u1"
    );
}

#[tokio::test]
async fn paging_marks_has_more_and_continues() {
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_ops_per_batch: 2,
            ..Limits::default()
        },
    );
    for i in 0..5 {
        h.store.put("b[]", &format!("r{i}"));
    }
    let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
    let got = Lines::new(res).until_complete().await;
    let data: Vec<&Value> = got.iter().filter_map(|l| l.get("data")).collect();
    assert_eq!(data.len(), 3);
    assert_eq!(
        data.iter()
            .map(|d| d["has_more"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(data[1]["after"], "2");
    assert_eq!(data[2]["next_after"], "5");
}

#[tokio::test]
async fn new_checkpoint_sends_diff_then_only_new_ops() {
    let h = harness();
    h.store.put("a[]", "x");
    h.store.put("b[]", "y");
    let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
    let mut lines = Lines::new(res);
    lines.until_complete().await;

    h.store.put("b[]", "z");
    h.store.put("c[]", "w");
    h.store
        .db
        .lock()
        .unwrap()
        .buckets
        .retain(|(b, _)| b != "a[]");
    h.announce();
    let got = lines.until_complete().await;
    let keys: Vec<&str> = got.iter().map(key).collect();
    assert_eq!(
        keys,
        ["checkpoint_diff", "data", "data", "checkpoint_complete"]
    );
    let diff = &got[0]["checkpoint_diff"];
    assert_eq!(diff["last_op_id"], "4");
    let updated: Vec<&str> = diff["updated_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucket"].as_str().unwrap())
        .collect();
    assert_eq!(updated, ["b[]", "c[]"]);
    assert_eq!(diff["removed_buckets"], json!(["a[]"]));
    assert_eq!(
        got[1]["data"]["after"], "2",
        "b[] continues from the last checkpoint"
    );
    assert_eq!(got[1]["data"]["data"].as_array().unwrap().len(), 1);
    assert_eq!(got[2]["data"]["after"], "0", "c[] is new");

    // Only the write checkpoint moves: a diff with nothing else, no data.
    h.store.db.lock().unwrap().write_checkpoint = Some(7);
    h.store.db.lock().unwrap().checkpoint += 1;
    h.announce();
    let got = lines.until_complete().await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0]["checkpoint_diff"],
        json!({"last_op_id": "5", "write_checkpoint": "7", "updated_buckets": [], "removed_buckets": []})
    );
}

#[tokio::test(start_paused = true)]
async fn keepalive_then_zero_at_token_expiry_ends_stream() {
    let h = harness();
    let t = dev_token(SECRET, "u1", 50, None).unwrap();
    let res = call(&h, post_stream(Some(format!("Token {t}")), "{}")).await;
    let mut lines = Lines::new(res);
    lines.wait = Duration::from_secs(3600); // paused time would fire a short one first
    lines.until_complete().await;
    // Paused time auto-advances: keepalives at 20 s and 40 s, the expiry
    // warning 20 s before expiry (30 s), then 0 at expiry (50 s).
    let mut rest = Vec::new();
    while let Some(l) = lines.next().await {
        rest.push(l);
    }
    let values: Vec<i64> = rest
        .iter()
        .map(|l| l["token_expires_in"].as_i64().unwrap())
        .collect();
    assert_eq!(values.len(), 4, "{rest:?}");
    assert!(values[..3].iter().all(|v| *v > 0), "{values:?}");
    assert_eq!(values[3], 0);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let h = harness();
    let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
    let mut lines = Lines::new(res);
    assert_eq!(lines.until_complete().await.len(), 2);
    assert_eq!(h.app.state().metrics.streams_open.get(), 1);
    h.stop.send(true).unwrap();
    assert_eq!(lines.next().await, None);
}

#[tokio::test(flavor = "current_thread")]
async fn slow_client_stalls_the_producer() {
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_ops_per_batch: 1,
            stream_buffer: 1,
            ..Limits::default()
        },
    );
    for i in 0..20 {
        h.store.put("b[]", &format!("r{i}"));
    }
    let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
    // On a single-threaded runtime, yielding lets the producer run until it blocks.
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    // The checkpoint line and the first page (sent together) fill the
    // buffer; one more page is read and waits to be sent, and the page
    // after it is read ahead (routes/page_read.rs); nothing beyond.
    assert_eq!(h.store.bucket_ops_calls.load(SeqCst), 3);
    let mut lines = Lines::new(res);
    let got = lines.until_complete().await;
    assert_eq!(got.iter().filter(|l| l.get("data").is_some()).count(), 20);
    assert_eq!(h.store.bucket_ops_calls.load(SeqCst), 21);
    let _ = Duration::ZERO;
}

/// Op ids of every data line for `bucket`, in order.
fn op_ids(lines: &[Value], bucket: &str) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.get("data"))
        .filter(|d| d["bucket"] == bucket)
        .flat_map(|d| d["data"].as_array().unwrap().iter())
        .map(|op| op["op_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn streams_advance_from_one_shared_read_per_checkpoint() {
    let h = harness();
    h.store.shared_changes.store(true, SeqCst);
    h.store.put("g[]", "a");
    h.store.put("g[]", "b");
    let mut streams = Vec::new();
    for _ in 0..20 {
        let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
        let mut lines = Lines::new(res);
        lines.until_complete().await;
        streams.push(lines);
    }
    let starts = h.store.sync_checkpoint_calls.load(SeqCst);
    let pages = h.store.bucket_ops_calls.load(SeqCst);
    assert_eq!((starts, pages), (20, 20));

    for round in 0..3u64 {
        h.store.put("g[]", &format!("c{round}"));
        h.announce();
        for lines in &mut streams {
            let got = lines.until_complete().await;
            let keys: Vec<&str> = got.iter().map(key).collect();
            assert_eq!(keys, ["checkpoint_diff", "data", "checkpoint_complete"]);
            assert_eq!(op_ids(&got, "g[]"), [3 + round]);
            assert_eq!(got[1]["data"]["after"], (2 + round).to_string());
            let diff = &got[0]["checkpoint_diff"];
            let expected: u32 = h
                .store
                .db
                .lock()
                .unwrap()
                .ops
                .iter()
                .map(|o| o.entry.checksum.0)
                .fold(0u32, u32::wrapping_add);
            assert_eq!(
                diff["updated_buckets"][0]["checksum"].as_i64().unwrap() as i32,
                expected as i32
            );
        }
    }
    let m = &h.app.state().metrics;
    assert_eq!(
        h.store.sync_checkpoint_calls.load(SeqCst),
        starts,
        "no per-stream query"
    );
    assert_eq!(
        h.store.changes_calls.load(SeqCst),
        3,
        "one shared read per checkpoint"
    );
    assert_eq!(
        h.store.bucket_ops_calls.load(SeqCst),
        pages + 3,
        "one page per checkpoint"
    );
    assert_eq!(m.states_shared.get(), 60);
}

#[tokio::test]
async fn changed_bucket_sets_fall_back_to_sync_checkpoint() {
    let h = harness();
    h.store.shared_changes.store(true, SeqCst);
    h.store.put("g[]", "a");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
        let mut lines = Lines::new(res);
        lines.until_complete().await;
        streams.push(lines);
    }
    // A bucket's first op: every user holds it now (the fake's rule), which
    // the shared read cannot know.
    h.store.put("new[]", "x");
    h.announce();
    for lines in &mut streams {
        let got = lines.until_complete().await;
        let diff = &got[0]["checkpoint_diff"];
        assert_eq!(diff["updated_buckets"][0]["bucket"], "new[]", "{got:?}");
        assert_eq!(op_ids(&got, "new[]"), [2]);
    }
    assert_eq!(h.store.sync_checkpoint_calls.load(SeqCst), 6);
    assert_eq!(h.app.state().metrics.states_shared.get(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_newer_checkpoint_supersedes_one_being_streamed() {
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_ops_per_batch: 2,
            stream_buffer: 1,
            ..Limits::default()
        },
    );
    for i in 0..10 {
        h.store.put("b[]", &format!("r{i}"));
    }
    let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
    let mut lines = Lines::new(res);
    let mut got = vec![lines.next().await.unwrap(), lines.next().await.unwrap()];
    assert_eq!(key(&got[0]), "checkpoint");
    assert_eq!(key(&got[1]), "data");
    h.store.put("b[]", "r10");
    h.store.put("c[]", "x");
    h.announce();
    got.extend(lines.until_complete().await);
    let keys: Vec<&str> = got.iter().map(key).collect();
    let diff_at = keys
        .iter()
        .position(|k| *k == "checkpoint_diff")
        .expect("a diff");
    assert!(
        !keys[..diff_at].contains(&"checkpoint_complete"),
        "checkpoint 10 must not complete once superseded: {keys:?}"
    );
    assert_eq!(got[diff_at]["checkpoint_diff"]["last_op_id"], "12");
    assert_eq!(
        got.last().unwrap()["checkpoint_complete"]["last_op_id"],
        "12"
    );
    assert_eq!(
        keys.iter().filter(|k| **k == "checkpoint_complete").count(),
        1
    );
    assert_eq!(op_ids(&got, "b[]"), (1..=11).collect::<Vec<u64>>());
    assert_eq!(op_ids(&got, "c[]"), [12]);
}

#[tokio::test]
async fn superseded_buckets_are_finished_even_when_unchanged() {
    let h = Harness::new(
        Arc::new(FakeStore::default()),
        Limits {
            max_ops_per_batch: 2,
            stream_buffer: 1,
            ..Limits::default()
        },
    );
    for i in 0..6 {
        h.store.put("b[]", &format!("r{i}"));
    }
    let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
    let mut lines = Lines::new(res);
    let mut got = vec![lines.next().await.unwrap(), lines.next().await.unwrap()];
    // A checkpoint that changes nothing for this user (write checkpoint of nobody).
    h.store.db.lock().unwrap().checkpoint += 1;
    h.announce();
    got.extend(lines.until_complete().await);
    let keys: Vec<&str> = got.iter().map(key).collect();
    assert_eq!(
        keys.iter().filter(|k| **k == "checkpoint_complete").count(),
        1
    );
    assert_eq!(op_ids(&got, "b[]"), (1..=6).collect::<Vec<u64>>());
    let done = got.last().unwrap()["checkpoint_complete"]["last_op_id"].clone();
    assert_eq!(done, "7", "checkpoint 6 was superseded: {keys:?}");
    let d = keys.iter().position(|k| *k == "checkpoint_diff").unwrap();
    assert_eq!(got[d]["checkpoint_diff"]["updated_buckets"], json!([]));
}

#[tokio::test]
async fn a_move_beyond_the_checkpoint_holds_back_its_completion() {
    let h = harness();
    h.store.put("a[]", "x");
    h.store.put("a[]", "y");
    {
        // Compaction turned op 1 into a MOVE superseded by op 3, which is
        // beyond the checkpoint (2) this stream starts at.
        let mut db = h.store.db.lock().unwrap();
        let first = &mut db.ops[0];
        first.entry.op = outpost_protocol::OpType::Move;
        first.entry.object_type = None;
        first.entry.object_id = None;
        first.entry.subkey = None;
        first.entry.data = None;
        first.target_op = Some(outpost_protocol::OpId(3));
    }
    let res = call(&h, post_stream(Some(format!("Token {}", token())), "{}")).await;
    let mut lines = Lines::new(res);
    assert_eq!(key(&lines.next().await.unwrap()), "checkpoint");
    assert_eq!(key(&lines.next().await.unwrap()), "data");
    h.store.put("a[]", "x");
    h.announce();
    let got = lines.until_complete().await;
    let keys: Vec<&str> = got.iter().map(key).collect();
    assert_eq!(
        keys,
        ["checkpoint_diff", "data", "checkpoint_complete"],
        "checkpoint 2 is never completed: {got:?}"
    );
    assert_eq!(got[2]["checkpoint_complete"]["last_op_id"], "3");
}
