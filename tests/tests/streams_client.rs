//! Sync Streams from the client library end to end (real Postgres, the
//! in-process relay, `outpost_client::Database` files):
//! `db.sync_stream(name, params).subscribe()` brings exactly that
//! subscription's rows; unsubscribed with TTL 0 they leave, with a long TTL
//! they stay (and keep syncing) until it expires (an injected clock moves
//! past it); subscriptions survive a restart; subscribing again or with
//! another parameter reconnects with the new set; the per-stream status
//! shows an unknown stream's and a missing parameter's errors while the
//! others sync.
//!
//! Every wait is on the sync status or a live query, bounded by
//! [`outpost_tests::client::WAIT`].

use outpost_client::{Credentials, Database, Schema, SchemaMode, SubscribeOptions};
use outpost_tests::client::{
    remove_db_file, runtime, spawn_sync, wait_rows, wait_status, Rows, SyncTask, WAIT,
};
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outpost_tests::streams_fixture::{RULES, SCHEMA};

const APP_SCHEMA: &str = r#"{"tables": [
  {"name": "lists", "columns": [{"name": "name", "type": "text"}, {"name": "owner_id", "type": "text"}]},
  {"name": "todos", "columns": [{"name": "list_id", "type": "text"}, {"name": "description", "type": "text"}]}]}"#;

static FILES: AtomicU32 = AtomicU32::new(0);

fn db_path(label: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "outpost-streams-{}-{}-{label}.db",
        std::process::id(),
        FILES.fetch_add(1, Ordering::SeqCst)
    ));
    remove_db_file(&p);
    p
}

fn open(path: &Path) -> Database {
    Database::open(
        path,
        SchemaMode::Fixed(Schema::from_json(APP_SCHEMA).unwrap()),
    )
    .unwrap()
}

fn start(rt: &tokio::runtime::Runtime, relay: &Relay, db: &Database) -> SyncTask {
    let creds = Credentials {
        endpoint: relay.url.clone(),
        token: relay.token("u1", 600),
    };
    spawn_sync(rt, db, creds, Duration::from_millis(500))
}

fn todo_lists(rows: &Rows) -> BTreeSet<String> {
    rows.iter()
        .map(|r| r["list_id"].as_str().unwrap().to_string())
        .collect()
}

fn wait_todos(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    what: &str,
    lists: &[&str],
    count: usize,
) {
    let want: BTreeSet<String> = lists.iter().map(|s| s.to_string()).collect();
    wait_rows(rt, db, "SELECT id, list_id FROM todos", what, |rows| {
        todo_lists(rows) == want && rows.len() == count
    });
}

fn setup(label: &str) -> (TestDb, postgres::Client) {
    let db = TestDb::with_rules(label, SCHEMA, RULES);
    let c = db.connect();
    (db, c)
}

fn first_sync(rt: &tokio::runtime::Runtime, sub: &outpost_client::SyncStreamSubscription) {
    rt.block_on(async { tokio::time::timeout(WAIT, sub.wait_for_first_sync()).await })
        .expect("timed out waiting for the first sync of a subscription")
        .unwrap();
}

#[test]
fn subscribe_unsubscribe_with_ttls_and_resubscribe() {
    let (tdb, mut pg) = setup("streams_client_ttl");
    let relay = Relay::start(&tdb);
    let rt = runtime();
    let path = db_path("ttl");
    let db = open(&path);
    let task = start(&rt, &relay, &db);
    // The auto-subscribed stream syncs without any subscription.
    wait_rows(&rt, &db, "SELECT id FROM lists", "my lists", |r| {
        r.len() == 2
    });
    let sent = || relay.metric("outpost_relay_ops_sent_total");
    assert_eq!(sent(), 2.0);

    let l1 = db
        .sync_stream("list_todos", json!({"list_id": "l1"}))
        .subscribe_with(SubscribeOptions::default().ttl(Duration::ZERO))
        .unwrap();
    first_sync(&rt, &l1);
    wait_todos(&rt, &db, "l1's todos", &["l1"], 3);
    // Reconnected with the subscription: my_lists' bucket resumed, not sent again.
    assert_eq!(sent(), 5.0);
    let st = l1.status().unwrap();
    assert!(
        st.has_synced && st.held && st.explicit && st.errors.is_empty(),
        "{st:?}"
    );
    assert_eq!((st.buckets, st.priority), (1, Some(3)));
    let status = db.status().borrow().clone();
    let mine = status
        .for_stream("my_lists", &Value::Null)
        .expect("the default stream's status");
    assert!(
        mine.is_default && !mine.explicit && mine.has_synced,
        "{mine:?}"
    );

    let l3 = db
        .sync_stream("list_todos", json!({"list_id": "l3"}))
        .subscribe_with(SubscribeOptions::default().ttl(Duration::from_secs(3600)))
        .unwrap();
    first_sync(&rt, &l3);
    wait_todos(&rt, &db, "l1's and l3's todos", &["l1", "l3"], 6);
    assert_eq!(
        sent(),
        8.0,
        "buckets both sets share are not downloaded twice"
    );

    // TTL 0: the rows leave at once.
    l1.unsubscribe();
    wait_todos(&rt, &db, "l1's todos to leave", &["l3"], 3);

    // A long TTL: the rows stay, and keep syncing.
    drop(l3);
    let st = db
        .status()
        .borrow()
        .for_stream("list_todos", &json!({"list_id": "l3"}))
        .cloned()
        .unwrap();
    assert!(
        !st.held && st.expires_at.is_some_and(|e| e > db.now_ms() + 3_000_000),
        "{st:?}"
    );
    pg.batch_execute("INSERT INTO todos VALUES ('t3-new', 'l3', 'new')")
        .unwrap();
    wait_todos(&rt, &db, "a new l3 todo after unsubscribing", &["l3"], 4);

    // Subscribing again brings l1 back; a list of another user brings
    // nothing, without an error.
    let l1 = db
        .sync_stream("list_todos", json!({"list_id": "l1"}))
        .subscribe()
        .unwrap();
    let l2 = db
        .sync_stream("list_todos", json!({"list_id": "l2"}))
        .subscribe()
        .unwrap();
    first_sync(&rt, &l1);
    first_sync(&rt, &l2);
    wait_todos(&rt, &db, "l1 again", &["l1", "l3"], 7);
    let st = l2.status().unwrap();
    assert!(st.errors.is_empty() && st.buckets == 0, "{st:?}");

    // Past l3's TTL (the clock moved two hours on): dropped from the
    // request, its rows leave.
    let start = db.now_ms();
    db.set_clock(move || start + 2 * 3_600_000);
    wait_todos(&rt, &db, "l3's todos to leave after its TTL", &["l1"], 3);
    assert!(db
        .status()
        .borrow()
        .for_stream("list_todos", &json!({"list_id": "l3"}))
        .is_none());
    assert!(!task.is_finished());
    task.abort();
    drop((l1, l2));
    remove_db_file(&path);
}

#[test]
fn subscriptions_survive_a_restart() {
    let (tdb, mut pg) = setup("streams_client_restart");
    let relay = Relay::start(&tdb);
    let rt = runtime();
    let path = db_path("restart");
    {
        let db = open(&path);
        let task = start(&rt, &relay, &db);
        let sub = db
            .sync_stream("list_todos", json!({"list_id": "l1"}))
            .subscribe()
            .unwrap();
        first_sync(&rt, &sub);
        wait_todos(&rt, &db, "l1's todos", &["l1"], 3);
        task.abort();
        let _ = rt.block_on(task);
    }
    // Reopened with no handle: the stored subscription (one day's TTL) is
    // still requested, so l1's todos stay and a new one arrives.
    let db = open(&path);
    let st = db
        .status()
        .borrow()
        .for_stream("list_todos", &json!({"list_id": "l1"}))
        .cloned();
    assert!(
        st.as_ref().is_some_and(|s| s.has_synced && !s.held),
        "{st:?}"
    );
    let task = start(&rt, &relay, &db);
    pg.batch_execute("INSERT INTO todos VALUES ('t1-new', 'l1', 'new')")
        .unwrap();
    wait_todos(&rt, &db, "a new l1 todo after the restart", &["l1"], 4);
    // unsubscribe_all drops it at once.
    db.sync_stream("list_todos", json!({"list_id": "l1"}))
        .unsubscribe_all()
        .unwrap();
    wait_todos(&rt, &db, "l1's todos to leave", &[], 0);
    task.abort();
    remove_db_file(&path);
}

#[test]
fn per_stream_errors_while_the_others_sync() {
    let (tdb, _pg) = setup("streams_client_errors");
    let relay = Relay::start(&tdb);
    let rt = runtime();
    let path = db_path("errors");
    let db = open(&path);
    let nope = db.sync_stream("nope", Value::Null).subscribe().unwrap();
    let missing = db.sync_stream("list_todos", json!({})).subscribe().unwrap();
    let l3 = db
        .sync_stream("list_todos", json!({"list_id": "l3"}))
        .subscribe()
        .unwrap();
    let task = start(&rt, &relay, &db);
    first_sync(&rt, &l3);
    wait_todos(&rt, &db, "l3's todos", &["l3"], 3);
    let err = rt
        .block_on(nope.wait_for_first_sync())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown stream \"nope\""), "{err}");
    let err = rt
        .block_on(missing.wait_for_first_sync())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing subscription parameter"), "{err}");
    let status = wait_status(
        &rt,
        &db,
        "per-stream status",
        || task.is_finished(),
        |s| s.streams.iter().filter(|st| !st.errors.is_empty()).count() == 2,
    );
    let nope_status = status.for_stream("nope", &Value::Null).unwrap();
    assert!(
        !nope_status.has_synced && nope_status.buckets == 0,
        "{nope_status:?}"
    );
    assert!(
        status
            .for_stream("list_todos", &json!({"list_id": "l3"}))
            .unwrap()
            .has_synced
    );
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    task.abort();
    drop((nope, missing, l3));
    remove_db_file(&path);
}
