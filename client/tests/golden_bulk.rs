//! Golden transcripts of bulk mode: a first download into an empty op log is
//! stored without the unique `ps_oplog_row` index, which is built after the
//! checkpoint is applied (`Store::finish_bulk`, or when the next change, a
//! REMOVE or rows to delete need it). The resulting rows, op log and
//! checksums must be those of the indexed path.

mod golden_support;

use golden_support::*;
use outpost_client::store::{SchemaMode, Store};
use serde_json::json;

fn has_index(h: &Harness, name: &str) -> bool {
    h.store
        .connection()
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
            [name],
            |r| r.get(0),
        )
        .unwrap()
}

fn has_row_index(h: &Harness) -> bool {
    has_index(h, "ps_oplog_row")
}

fn journal_mode(h: &Harness) -> String {
    h.store
        .connection()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

/// `(name, add_checksum, op_checksum)` of every bucket.
fn checksums(store: &Store) -> Vec<(String, i64, i64)> {
    let mut stmt = store
        .connection()
        .prepare("SELECT name, add_checksum, op_checksum FROM ps_buckets ORDER BY name")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn first_download_builds_the_index_at_the_checkpoint_and_drops_superseded_ops() {
    let mut h = Harness::new();
    h.feed(&format!(
        "{}\n{}\n{}",
        r#"{"checkpoint":{"last_op_id":"5","buckets":[{"bucket":"a[]","checksum":7},{"bucket":"b[]","checksum":24}]}}"#,
        data("a[]", &[put(1, "t1", "one", 1), put(2, "t2", "two", 2)]),
        data("b[]", &[put(3, "t2", "two in b", 8)]),
    ))
    .unwrap();
    // Appended without the indexes while the download runs.
    assert!(!has_row_index(&h));
    assert!(!has_index(&h, "ps_oplog_opid"));
    assert_eq!(h.store.kv("oplog_bulk").unwrap().as_deref(), Some("1"));
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            // t1 again in a[] (supersedes op 1), t3 in b[].
            data("a[]", &[put(4, "t1", "one again", 4)]),
            data("b[]", &[put(5, "t3", "three", 16)]),
            r#"{"checkpoint_complete":{"last_op_id":"5"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(5)]);
    assert_eq!(
        h.rows(),
        vec![
            json!({"id":"t1","title":"one again","done":0}),
            // The highest op id across buckets wins.
            json!({"id":"t2","title":"two in b","done":0}),
            json!({"id":"t3","title":"three","done":0}),
        ]
    );
    // The rows are visible before the index is built.
    assert!(!has_row_index(&h));
    assert_eq!(h.oplog_count(), 5);
    h.store.finish_bulk().unwrap();
    assert!(has_row_index(&h));
    assert!(has_index(&h, "ps_oplog_opid"));
    assert_eq!(h.store.kv("oplog_bulk").unwrap(), None);
    // Op 1 is gone; its checksum moved from op_checksum to add_checksum.
    assert_eq!(h.oplog_count(), 4);
    assert_eq!(
        checksums(&h.store),
        vec![("a[]".into(), 1, 6), ("b[]".into(), 0, 24)]
    );

    // Later lines take the indexed path: a PUT supersedes in place.
    let effects = h
        .feed(&diff_of(6, "a[]", 39, &[put(6, "t1", "one, third", 32)]))
        .unwrap();
    assert_eq!(effects, vec![applied(6)]);
    assert!(h.store.kv("oplog_bulk").unwrap().is_none());
    assert_eq!(
        h.rows()[0],
        json!({"id":"t1","title":"one, third","done":0})
    );
    assert_eq!(h.oplog_count(), 4);
}

#[test]
fn the_next_change_builds_the_index_a_first_apply_left_out() {
    let mut h = Harness::new();
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint":{"last_op_id":"2","buckets":[{"bucket":"a[]","checksum":3}]}}"#,
            data("a[]", &[put(1, "t1", "one", 1), put(2, "t2", "two", 2)]),
            r#"{"checkpoint_complete":{"last_op_id":"2"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(2)]);
    assert!(!has_row_index(&h));
    // A change to the applied bucket: it supersedes t1's op through the index.
    let effects = h
        .feed(&diff_of(3, "a[]", 7, &[put(3, "t1", "one again", 4)]))
        .unwrap();
    assert_eq!(effects, vec![applied(3)]);
    assert!(has_row_index(&h));
    assert!(h.store.kv("oplog_bulk").unwrap().is_none());
    assert_eq!(h.oplog_count(), 2);
    assert_eq!(checksums(&h.store), vec![("a[]".into(), 1, 6)]);
    assert_eq!(h.rows()[0]["title"], json!("one again"));
}

#[test]
fn a_remove_during_the_first_download_ends_bulk_mode_first() {
    let mut h = Harness::new();
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}\n{}",
            r#"{"checkpoint":{"last_op_id":"4","buckets":[{"bucket":"b[]","checksum":15}]}}"#,
            data("b[]", &[put(1, "t1", "one", 1), put(2, "t2", "two", 2)]),
            data("b[]", &[put(3, "t1", "one again", 4), remove(4, "t2", 8)]),
            r#"{"checkpoint_complete":{"last_op_id":"4"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(4)]);
    assert_eq!(
        h.rows(),
        vec![json!({"id":"t1","title":"one again","done":0})]
    );
    assert!(has_row_index(&h));
    assert_eq!(h.oplog_count(), 1);
    assert_eq!(checksums(&h.store), vec![("b[]".into(), 11, 4)]);
}

#[test]
fn bulk_mode_survives_a_restart_mid_download() {
    let dir = std::env::temp_dir().join(format!("outpost-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("db.sqlite");
    let open = || Store::open(&path, SchemaMode::Fixed(schema())).unwrap();
    {
        let store = open();
        let mut machine = store.sync_state(Default::default()).unwrap();
        machine.start();
        let mut h = Harness { store, machine };
        h.feed(&format!(
            "{}\n{}",
            r#"{"checkpoint":{"last_op_id":"3","buckets":[{"bucket":"b[]","checksum":7}]}}"#,
            data("b[]", &[put(1, "t1", "one", 1), put(2, "t2", "two", 2)]),
        ))
        .unwrap();
        assert!(!has_row_index(&h));
    }
    // The process is gone; the next one resumes after op 2, still appending.
    let store = open();
    let mut machine = store.sync_state(Default::default()).unwrap();
    machine.start();
    let mut h = Harness { store, machine };
    assert_eq!(h.store.kv("oplog_bulk").unwrap().as_deref(), Some("1"));
    // A rollback journal until the first apply (the `journal` module).
    assert_eq!(journal_mode(&h), "delete");
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint":{"last_op_id":"3","buckets":[{"bucket":"b[]","checksum":7}]}}"#,
            data("b[]", &[put(3, "t1", "one again", 4)]),
            r#"{"checkpoint_complete":{"last_op_id":"3"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(3)]);
    assert_eq!(h.ids(), vec!["t1", "t2"]);
    assert_eq!(h.rows()[0]["title"], json!("one again"));
    assert_eq!(journal_mode(&h), "wal");
    assert!(!has_row_index(&h));
    h.store.finish_bulk().unwrap();
    assert!(has_row_index(&h));
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bulk mode appends PUTs and writes the winners many rows to a statement
/// (32 at a time, then the tail row by row): every op and row must land
/// whole, in its own columns, across those boundaries.
#[test]
fn batched_appends_and_winners_keep_every_column() {
    let mut h = Harness::new();
    // 75 ops in two lines (40 + 35: full batches and tails); t10 again as op 70.
    let id = |op: u64| {
        if op == 70 {
            "t10".to_string()
        } else {
            format!("t{op}")
        }
    };
    let ops: Vec<String> = (1..=75)
        .map(|op| put(op, &id(op), &format!("title {op}"), op as u32))
        .collect();
    let sum: u32 = (1..=75).sum();
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}\n{}",
            json!({"checkpoint": {"last_op_id": "75", "buckets": [{"bucket": "a[]", "checksum": sum}]}}),
            data("a[]", &ops[..40]),
            data("a[]", &ops[40..]),
            r#"{"checkpoint_complete":{"last_op_id":"75"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(75)]);
    let stored: Vec<(i64, String, String, String, i64)> = {
        let mut stmt = h
            .store
            .connection()
            .prepare("SELECT op_id, row_type, row_id, key, hash FROM ps_oplog ORDER BY op_id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    };
    let expected: Vec<(i64, String, String, String, i64)> = (1..=75)
        .map(|op| {
            let id = id(op);
            (op as i64, "todos".into(), id, "s".into(), op as i64)
        })
        .collect();
    assert_eq!(stored, expected);
    let mut rows = h.rows();
    rows.sort_by_key(|r| r["id"].as_str().unwrap()[1..].parse::<u64>().unwrap());
    let want: Vec<_> = (1..=75)
        .filter(|&op| op != 70)
        .map(|op| {
            let title = if op == 10 { 70 } else { op };
            json!({"id": format!("t{op}"), "title": format!("title {title}"), "done": 0})
        })
        .collect();
    assert_eq!(rows, want);
    h.store.finish_bulk().unwrap();
    // Op 10 was superseded by op 70: its hash moved to add_checksum.
    assert_eq!(
        checksums(&h.store),
        vec![("a[]".into(), 10, sum as i64 - 10)]
    );
}
