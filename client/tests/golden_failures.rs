//! Golden transcripts of failures: bad input and a full disk leave the
//! database as it was at the last good checkpoint.

mod golden_support;

use golden_support::*;
use outpost_client::store::{SchemaMode, Store};
use outpost_client::Error;
use outpost_protocol::OpId;
use serde_json::{json, Map, Value};

#[test]
fn bad_input_leaves_the_database_untouched() {
    let mut h = Harness::new();
    assert!(matches!(
        h.feed(
            r#"{"checkpoint_diff":{"last_op_id":"3","updated_buckets":[],"removed_buckets":[]}}"#
        ),
        Err(Error::Protocol(_))
    ));
    h.feed(&format!(
        "{}\n{}\n{}",
        r#"{"checkpoint":{"last_op_id":"1","buckets":[{"bucket":"b[]","checksum":1}]}}"#,
        data("b[]", &[put(1, "t1", "one", 1)]),
        r#"{"checkpoint_complete":{"last_op_id":"1"}}"#
    ))
    .unwrap();
    let err = h
        .feed(&format!(
            "{}\n{}\n{{\"data\": {{\"bucket\": tru",
            r#"{"checkpoint_diff":{"last_op_id":"2","updated_buckets":[{"bucket":"b[]","checksum":3}]}}"#,
            data("b[]", &[put(2, "t2", "two", 2)]),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Line(_)), "{err}");
    assert!(matches!(
        h.feed(&data("other[]", &[put(3, "x", "x", 1)])),
        Err(Error::Protocol(_))
    ));
    assert_eq!(h.ids(), vec!["t1"]);
    assert_eq!(h.store.kv("last_checkpoint").unwrap().as_deref(), Some("1"));
}

/// A database file in the temp dir, removed (with its WAL files) on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.0.display()));
        }
    }
}

/// Caps the database file at its current size: a write that needs a new page
/// fails with SQLITE_FULL, as on a full disk. `None` lifts the cap.
fn cap_size(store: &Store, cap: bool) {
    let c = store.connection();
    let pages: i64 = if cap {
        c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
    } else {
        1 << 30
    };
    let set: i64 = c
        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(set, pages);
}

/// What must survive a failed write: the rows, the checkpoint, the positions,
/// the upload queue.
fn snapshot(store: &Store) -> Value {
    json!({
        "rows": store.query("SELECT id, title FROM todos ORDER BY id", &[]).unwrap(),
        "checkpoint": store.kv("last_checkpoint").unwrap(),
        "buckets": store.query("SELECT name, last_op, last_applied_op, add_checksum, op_checksum FROM ps_buckets", &[]).unwrap(),
        "oplog": store.query("SELECT count(*) AS n FROM ps_oplog", &[]).unwrap(),
        "queue": store.query("SELECT id, data, tx_id FROM ps_crud ORDER BY id", &[]).unwrap(),
    })
}

#[test]
fn full_disk_leaves_the_last_good_checkpoint_and_the_queue() {
    let file = TempFile(
        std::env::temp_dir().join(format!("outpost-golden-full-{}.db", std::process::id())),
    );
    drop(TempFile(file.0.clone()));
    let store = Store::open(&file.0, SchemaMode::Fixed(schema())).unwrap();
    let mut machine = store.sync_state(Map::new()).unwrap();
    machine.start();
    let mut h = Harness { store, machine };
    h.feed(&format!(
        "{}\n{}\n{}",
        r#"{"checkpoint":{"last_op_id":"2","buckets":[{"bucket":"b[]","checksum":3}]}}"#,
        data("b[]", &[put(1, "t1", "one", 1), put(2, "t2", "two", 2)]),
        r#"{"checkpoint_complete":{"last_op_id":"2"}}"#
    ))
    .unwrap();
    h.store
        .execute_batch_write("INSERT INTO todos(id, title, done) VALUES ('l1', 'local', 0)")
        .unwrap();
    let big: Vec<String> = (0..400)
        .map(|i| put(10 + i, &format!("n{i:03}"), &"x".repeat(300), 1))
        .collect();
    let next = format!(
        "{}\n{}\n{}",
        r#"{"checkpoint_diff":{"last_op_id":"409","write_checkpoint":"1","updated_buckets":[{"bucket":"b[]","checksum":403}]}}"#,
        data("b[]", &big),
        r#"{"checkpoint_complete":{"last_op_id":"409"}}"#
    );
    let before = snapshot(&h.store);
    assert_eq!(before["queue"].as_array().unwrap().len(), 1);

    // 1. The disk fills while storing downloaded ops.
    cap_size(&h.store, true);
    let err = h.feed(&next).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(snapshot(&h.store), before);
    // A local write meets the same full disk: refused whole, the queue unchanged.
    let err = h
        .store
        .execute_batch_write(
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 50)
             INSERT INTO todos(id, title, done) SELECT 'w' || i, printf('%.500c', 'y'), 0 FROM g",
        )
        .unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert_eq!(snapshot(&h.store), before);

    // 2. Room to store the ops (a new session, as the driver makes after an
    // error), but the disk fills while applying the checkpoint.
    cap_size(&h.store, false);
    h.machine = h.store.sync_state(Map::new()).unwrap();
    h.machine.start();
    let last = h.store.crud_batch(10).unwrap().last().unwrap().id;
    h.store.complete_crud(last).unwrap();
    assert!(h.store.set_write_target(OpId(1)).unwrap());
    let (head, complete) = next.rsplit_once('\n').unwrap();
    let cp = r#"{"checkpoint":{"last_op_id":"409","write_checkpoint":"1","buckets":[{"bucket":"b[]","checksum":403}]}}"#;
    h.feed(&format!("{cp}\n{}", head.split_once('\n').unwrap().1))
        .unwrap();
    let stored = snapshot(&h.store);
    assert_eq!(stored["rows"], before["rows"], "nothing applied yet");
    assert_eq!(stored["checkpoint"], before["checkpoint"]);
    cap_size(&h.store, true);
    let err = h.feed(complete).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert_eq!(snapshot(&h.store), stored, "the failed apply left no trace");
    assert_eq!(h.ids(), vec!["l1", "t1", "t2"]);

    // 3. With room again, the same checkpoint applies.
    cap_size(&h.store, false);
    assert_eq!(h.feed(complete).unwrap(), vec![applied(409)]);
    assert_eq!(h.ids().len(), 402);
    assert_eq!(
        h.store.kv("last_checkpoint").unwrap().as_deref(),
        Some("409")
    );
}
