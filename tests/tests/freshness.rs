//! Freshness at connect: the first checkpoint a stream completes includes
//! every transaction committed before the relay received the request, and
//! the barrier that ensures it is shared (many connects, a few ticks).
//!
//! - `outpost sync --once` (the CLI binary) right after each of many commits
//!   always has the row;
//! - raw streams opened right after each of many commits always carry it;
//! - hundreds of streams opened at once after a commit all carry it, for a
//!   handful of ticks (the relay's `outpost_relay_ticks_total`).

mod faults_support;

use faults_support::{binary, TempDb};
use outpost_tests::relay::{Relay, SyncStream};
use outpost_tests::TestDb;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};

fn setup(label: &str) -> TestDb {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY, owner text NOT NULL);")
        .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner FROM items WHERE owner = bucket.owner
"],
    )
    .unwrap();
    db
}

fn insert(c: &mut postgres::Client, id: i32) {
    c.execute("INSERT INTO items VALUES ($1, 'u1')", &[&id])
        .unwrap();
}

/// The object ids a fresh stream received up to its first `checkpoint_complete`.
fn ids_until_complete(s: &mut SyncStream) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for l in s.until("checkpoint_complete") {
        if let Some(ops) = l["data"]["data"].as_array() {
            for op in ops {
                if op["op"] == "PUT" {
                    ids.insert(op["object_id"].as_str().unwrap().to_string());
                }
            }
        }
    }
    ids
}

fn fresh_request() -> Value {
    json!({"buckets": [], "include_checksum": true, "raw_data": true, "client_id": "c1"})
}

#[test]
fn sync_once_right_after_a_commit_has_the_row() {
    let db = setup("fresh_cli");
    let mut c = db.connect();
    let relay = Relay::start(&db);
    let token = relay.token("u1", 600);
    let file = TempDb::new("fresh_cli");
    let path = file.0.to_str().unwrap().to_string();
    let outpost = binary("outpost");
    for i in 1..=25 {
        insert(&mut c, i);
        let out = Command::new(&outpost)
            .args([
                "sync",
                "--once",
                "--db",
                &path,
                "--endpoint",
                &relay.url,
                "--token",
                &token,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run outpost");
        assert!(
            out.status.success(),
            "sync --once: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        });
        assert_eq!(
            report["tables"]["items"],
            json!(i),
            "sync --once after commit {i} missed it: {report}"
        );
    }
}

#[test]
fn a_stream_opened_right_after_a_commit_carries_it() {
    let db = setup("fresh_stream");
    let mut c = db.connect();
    let relay = Relay::start(&db);
    let token = relay.token("u1", 600);
    for i in 1..=100 {
        insert(&mut c, i);
        let mut s = relay.stream(&token, &fresh_request());
        let ids = ids_until_complete(&mut s);
        assert!(
            ids.contains(&i.to_string()),
            "the first checkpoint after commit {i} lacks it ({} rows)",
            ids.len()
        );
    }
}

#[test]
fn many_connects_at_once_share_a_few_ticks() {
    const N: usize = 400;
    let db = setup("fresh_many");
    let mut c = db.connect();
    let relay = Relay::start_with(&db, |a| a.max_connections = 2 * N);
    let token = relay.token("u1", 600);
    // Settle: the startup ticks are done once a stream completes.
    ids_until_complete(&mut relay.stream(&token, &fresh_request()));
    let before = relay.metric("outpost_relay_ticks_total");
    insert(&mut c, 1);
    let mut streams = relay.streams_at_once(&token, &fresh_request(), N);
    for (n, s) in streams.iter_mut().enumerate() {
        assert!(
            ids_until_complete(s).contains("1"),
            "stream {n} of {N} started before the commit"
        );
    }
    let ticks = relay.metric("outpost_relay_ticks_total") - before;
    eprintln!("{N} connects at once: {ticks} ticks");
    assert!(ticks >= 1.0, "the barrier needs a tick");
    // Per-connection ticks would be N; the barrier shares them.
    assert!(ticks <= 20.0, "{N} connects cost {ticks} ticks");
}
