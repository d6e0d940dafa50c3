//! Write checkpoints published by the request itself on real Postgres: at
//! once (a checkpoint of their own, no tick) when nothing is queued and no
//! tick runs, otherwise by the next tick — and in both cases only at a
//! checkpoint that holds every write committed before the request.

mod extension_support;

use extension_support::*;
use outpost_tests::{ops, sync_checkpoint, tick};
use postgres::Client;
use serde_json::json;

fn checkpoint(c: &mut Client) -> i64 {
    c.query_one("SELECT outpost.checkpoint()", &[])
        .unwrap()
        .get(0)
}

/// The checkpoint a client's write checkpoint was published at, if any.
fn published_at(c: &mut Client, user: &str, client: &str) -> Option<(i64, i64)> {
    c.query_opt(
        "SELECT seq, checkpoint FROM outpost.write_checkpoints WHERE user_id = $1 AND client_id = $2",
        &[&user, &client],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

fn request(c: &mut Client, user: &str, client: &str) -> i64 {
    c.query_one(
        "SELECT outpost.request_write_checkpoint($1, $2)",
        &[&user, &client],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_write_checkpoint_is_published_at_once_when_nothing_is_queued() {
    let (_db, mut c) = setup("wcp_now");
    // The upload: a write, and the tick that takes it (the relay's).
    c.batch_execute("INSERT INTO todos VALUES (12, 1, 'uploaded', false)")
        .unwrap();
    let cp = tick(&mut c);
    let op = ops(&mut c, "user_lists[1]").last().unwrap().op_id;
    assert!(op <= cp);
    assert_eq!(request(&mut c, "u1", "dev"), 1);
    // No tick: the request published a checkpoint of its own, after the one
    // holding the upload.
    assert_eq!(published_at(&mut c, "u1", "dev"), Some((1, cp + 1)));
    assert_eq!(checkpoint(&mut c), cp + 1);
    assert_eq!(
        sync_checkpoint(&mut c, "u1", "dev")["write_checkpoint"],
        json!(1)
    );
    let pending: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.write_checkpoint_requests",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "nothing left for a tick");
    // The checkpoint-request mode takes the same path.
    let stored: i64 = c
        .query_one("SELECT outpost.request_checkpoint('u1', 'dev', 5)", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, 5);
    assert_eq!(published_at(&mut c, "u1", "dev"), Some((5, cp + 2)));
    assert_eq!(tick(&mut c), cp + 2, "and the next tick has nothing to do");
}

#[test]
fn a_write_checkpoint_waits_for_queued_writes() {
    let (_db, mut c) = setup("wcp_queued");
    let before = checkpoint(&mut c);
    // The upload is committed but not ticked yet.
    c.batch_execute("INSERT INTO todos VALUES (12, 1, 'uploaded', false)")
        .unwrap();
    assert_eq!(request(&mut c, "u1", "dev"), 1);
    assert_eq!(published_at(&mut c, "u1", "dev"), None);
    assert_eq!(checkpoint(&mut c), before);
    let cp = tick(&mut c);
    assert_eq!(published_at(&mut c, "u1", "dev"), Some((1, cp)));
    let op = ops(&mut c, "user_lists[1]")
        .into_iter()
        .find(|o| o.object_id.as_deref() == Some("12"))
        .unwrap();
    assert!(
        op.op_id <= cp,
        "the upload ({}) is in the write checkpoint's checkpoint {cp}",
        op.op_id
    );
}

#[test]
fn a_write_checkpoint_in_its_writes_transaction_waits_for_them() {
    let (_db, mut c) = setup("wcp_same_tx");
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("INSERT INTO todos VALUES (12, 1, 'uploaded', false)")
        .unwrap();
    tx.query_one("SELECT outpost.request_write_checkpoint('u1', 'dev')", &[])
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(published_at(&mut c, "u1", "dev"), None);
    let cp = tick(&mut c);
    assert_eq!(published_at(&mut c, "u1", "dev"), Some((1, cp)));
    let op = ops(&mut c, "user_lists[1]").last().unwrap().op_id;
    assert!(op <= cp);
}

#[test]
fn a_write_checkpoint_does_not_wait_for_a_running_tick() {
    let (db, mut c) = setup("wcp_locked");
    let mut other = db.connect();
    let mut ticking = other.transaction().unwrap();
    ticking
        .batch_execute("SELECT pg_advisory_xact_lock(outpost._lock_key())")
        .unwrap();
    // Answered while the lock is held (it would hang here otherwise), and
    // left for the next tick.
    assert_eq!(request(&mut c, "u1", "dev"), 1);
    assert_eq!(published_at(&mut c, "u1", "dev"), None);
    ticking.commit().unwrap();
    let cp = tick(&mut c);
    assert_eq!(published_at(&mut c, "u1", "dev"), Some((1, cp)));
}

#[test]
fn a_write_committed_after_the_request_gets_a_later_op_id() {
    let (db, mut c) = setup("wcp_later");
    let mut writer = db.connect();
    let mut tx = writer.transaction().unwrap();
    tx.batch_execute("INSERT INTO todos VALUES (12, 1, 'later', false)")
        .unwrap();
    // Not committed: not the client's upload, and not in the way.
    assert_eq!(request(&mut c, "u1", "dev"), 1);
    let (_, at) = published_at(&mut c, "u1", "dev").expect("published at once");
    tx.commit().unwrap();
    tick(&mut c);
    let op = ops(&mut c, "user_lists[1]").pop().unwrap();
    assert_eq!(op.object_id.as_deref(), Some("12"));
    assert!(op.op_id > at, "{} > {at}", op.op_id);
}
