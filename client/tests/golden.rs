//! Golden transcripts: NDJSON lines through the state machine and the SQLite
//! adapter, asserting the resulting rows, effects and upload queue.

use outpost_client::schema::{Column, ColumnType, Schema, Table};
use outpost_client::store::{Effect, SchemaMode, Store};
use outpost_client::sync::{Instruction, SyncState};
use outpost_client::Error;
use outpost_protocol::http::CrudOp;
use outpost_protocol::{OpId, SyncLine};
use serde_json::{json, Map, Value};

struct Harness {
    store: Store,
    machine: SyncState,
}

fn schema() -> Schema {
    Schema::new(vec![
        Table::new(
            "todos",
            vec![
                Column::new("title", ColumnType::Text),
                Column::new("done", ColumnType::Integer),
            ],
        ),
        Table::new("drafts", vec![Column::new("body", ColumnType::Text)]).local_only(),
        Table::new("events", vec![Column::new("kind", ColumnType::Text)]).insert_only(),
    ])
}

impl Harness {
    fn new() -> Harness {
        let store = Store::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
        let mut machine = store.sync_state(Map::new()).unwrap();
        machine.start();
        Harness { store, machine }
    }

    /// Feeds NDJSON lines; returns the effects.
    fn feed(&mut self, ndjson: &str) -> Result<Vec<Effect>, Error> {
        let mut effects = vec![];
        for l in ndjson.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(line) = SyncLine::parse(l)? else {
                continue;
            };
            let ins = self.machine.handle_line(line)?;
            effects.extend(self.store.execute(&mut self.machine, ins)?);
        }
        Ok(effects)
    }

    fn rows(&self) -> Vec<Value> {
        self.store
            .query("SELECT id, title, done FROM todos ORDER BY id", &[])
            .unwrap()
            .into_iter()
            .map(Value::Object)
            .collect()
    }

    fn ids(&self) -> Vec<String> {
        self.rows()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn oplog_count(&self) -> i64 {
        self.store
            .connection()
            .query_row("SELECT count(*) FROM ps_oplog", [], |r| r.get(0))
            .unwrap()
    }
}

fn put(op: u64, id: &str, title: &str, cs: u32) -> String {
    let data = json!({"id": id, "title": title, "done": 0}).to_string();
    json!({"op_id": op.to_string(), "op": "PUT", "object_type": "todos", "object_id": id, "subkey": "s",
           "checksum": cs, "data": data})
    .to_string()
}

fn remove(op: u64, id: &str, cs: u32) -> String {
    json!({"op_id": op.to_string(), "op": "REMOVE", "object_type": "todos", "object_id": id, "subkey": "s", "checksum": cs})
        .to_string()
}

fn data(bucket: &str, ops: &[String]) -> String {
    format!(
        r#"{{"data":{{"bucket":{},"data":[{}]}}}}"#,
        json!(bucket),
        ops.join(",")
    )
}

fn applied(cp: u64) -> Effect {
    Effect::Applied {
        checkpoint: OpId(cp),
        priority: None,
    }
}

#[test]
fn initial_sync_applies_typed_rows() {
    let mut h = Harness::new();
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint":{"last_op_id":"2","buckets":[{"bucket":"b[]","checksum":3,"count":2}]}}"#,
            data("b[]", &[put(1, "t1", "one", 1), put(2, "t2", "two", 2)]),
            r#"{"checkpoint_complete":{"last_op_id":"2"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(2)]);
    assert_eq!(
        h.rows(),
        vec![
            json!({"id":"t1","title":"one","done":0}),
            json!({"id":"t2","title":"two","done":0})
        ]
    );
    assert_eq!(h.store.kv("last_checkpoint").unwrap().as_deref(), Some("2"));
    assert_eq!(h.store.bucket_positions().unwrap()[0].last_op, OpId(2));
}

#[test]
fn checksum_mismatch_drops_bucket_and_rerequests_from_zero() {
    let mut h = Harness::new();
    h.feed(&format!(
        "{}\n{}\n{}",
        r#"{"checkpoint":{"last_op_id":"2","buckets":[{"bucket":"b[]","checksum":3}]}}"#,
        data("b[]", &[put(1, "t1", "one", 1), put(2, "t2", "two", 2)]),
        r#"{"checkpoint_complete":{"last_op_id":"2"}}"#
    ))
    .unwrap();
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint_diff":{"last_op_id":"3","updated_buckets":[{"bucket":"b[]","checksum":1000}],"removed_buckets":[]}}"#,
            data("b[]", &[put(3, "t1", "changed", 4)]),
            r#"{"checkpoint_complete":{"last_op_id":"3"}}"#
        ))
        .unwrap();
    assert_eq!(effects[0], Effect::ChecksumFailed(vec!["b[]".into()]));
    let Effect::Io(Instruction::EstablishStream(req)) = &effects[1] else {
        panic!("{effects:?}")
    };
    assert_eq!(
        serde_json::to_value(&req.buckets).unwrap(),
        json!([{"name":"b[]","after":"0"}])
    );
    // The database stays at the last good checkpoint; the bucket's ops are gone.
    assert_eq!(h.rows()[0], json!({"id":"t1","title":"one","done":0}));
    assert_eq!(h.oplog_count(), 0);
    assert!(h.store.bucket_positions().unwrap().is_empty());

    // The re-download from 0 then applies cleanly (t1 superseded: 1 moves to add_checksum).
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint":{"last_op_id":"3","buckets":[{"bucket":"b[]","checksum":7}]}}"#,
            data(
                "b[]",
                &[
                    put(1, "t1", "one", 1),
                    put(2, "t2", "two", 2),
                    put(3, "t1", "changed", 4)
                ]
            ),
            r#"{"checkpoint_complete":{"last_op_id":"3"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(3)]);
    assert_eq!(h.rows()[0]["title"], "changed");
    assert_eq!(h.oplog_count(), 2);
}

#[test]
fn remove_move_and_clear() {
    let mut h = Harness::new();
    // A compacted bucket as a fresh client sees it: CLEAR and MOVE carry the sums they replace.
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint":{"last_op_id":"9","buckets":[{"bucket":"b[]","checksum":110}]}}"#,
            data(
                "b[]",
                &[
                    r#"{"op_id":"5","op":"CLEAR","checksum":100}"#.to_string(),
                    r#"{"op_id":"6","op":"MOVE","checksum":7}"#.to_string(),
                    put(8, "t1", "one", 1),
                    put(9, "t2", "two", 2),
                ]
            ),
            r#"{"checkpoint_complete":{"last_op_id":"9"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(9)]);
    assert_eq!(h.ids(), vec!["t1", "t2"]);

    // REMOVE deletes the row; the superseded PUT's checksum stays in the bucket total.
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint_diff":{"last_op_id":"10","updated_buckets":[{"bucket":"b[]","checksum":115}]}}"#,
            data("b[]", &[remove(10, "t2", 5)]),
            r#"{"checkpoint_complete":{"last_op_id":"10"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(10)]);
    assert_eq!(h.ids(), vec!["t1"]);

    // A CLEAR resets the bucket: earlier PUTs act as removals unless a later PUT follows.
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}\n{}",
            r#"{"checkpoint_diff":{"last_op_id":"13","updated_buckets":[{"bucket":"b[]","checksum":203}]}}"#,
            data("b[]", &[r#"{"op_id":"12","op":"CLEAR","checksum":200}"#.to_string()]),
            data("b[]", &[put(13, "t3", "three", 3)]),
            r#"{"checkpoint_complete":{"last_op_id":"13"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(13)]);
    assert_eq!(h.ids(), vec!["t3"]);
}

#[test]
fn highest_op_wins_and_removed_bucket_rows_disappear() {
    let mut h = Harness::new();
    h.feed(&format!(
        "{}\n{}\n{}\n{}",
        r#"{"checkpoint":{"last_op_id":"5","buckets":[{"bucket":"a[]","checksum":3},{"bucket":"b[]","checksum":12}]}}"#,
        data("a[]", &[put(1, "t1", "from a", 1), put(2, "t2", "only a", 2)]),
        data("b[]", &[put(4, "t1", "from b", 5), put(5, "t9", "only b", 7)]),
        r#"{"checkpoint_complete":{"last_op_id":"5"}}"#
    ))
    .unwrap();
    assert_eq!(h.ids(), vec!["t1", "t2", "t9"]);
    assert_eq!(h.rows()[0]["title"], "from b");

    let effects = h
        .feed(&format!(
            "{}\n{}",
            r#"{"checkpoint_diff":{"last_op_id":"6","updated_buckets":[],"removed_buckets":["b[]"]}}"#,
            r#"{"checkpoint_complete":{"last_op_id":"6"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(6)]);
    assert_eq!(h.ids(), vec!["t1", "t2"]);
    assert_eq!(h.rows()[0]["title"], "from a");
    let names: Vec<String> = h
        .store
        .bucket_positions()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["a[]"]);
}

#[test]
fn partial_checkpoint_applies_high_priority_buckets_first() {
    let mut h = Harness::new();
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint":{"last_op_id":"4","buckets":[{"bucket":"hi[]","checksum":1,"priority":1},{"bucket":"lo[]","checksum":2}]}}"#,
            data("hi[]", &[put(1, "t1", "urgent", 1)]),
            r#"{"partial_checkpoint_complete":{"last_op_id":"4","priority":1}}"#
        ))
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::Applied {
            checkpoint: OpId(4),
            priority: Some(1)
        }]
    );
    assert_eq!(h.ids(), vec!["t1"]);
    assert_eq!(h.store.kv("last_checkpoint").unwrap(), None);
    let effects = h
        .feed(&format!(
            "{}\n{}",
            data("lo[]", &[put(4, "t2", "later", 2)]),
            r#"{"checkpoint_complete":{"last_op_id":"4"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(4)]);
    assert_eq!(h.ids(), vec!["t1", "t2"]);
}

#[test]
fn local_writes_stay_on_top_until_the_server_has_them() {
    let mut h = Harness::new();
    h.feed(&format!(
        "{}\n{}\n{}",
        r#"{"checkpoint":{"last_op_id":"2","buckets":[{"bucket":"b[]","checksum":3}]}}"#,
        data("b[]", &[put(1, "t1", "one", 1), put(2, "t2", "two", 2)]),
        r#"{"checkpoint_complete":{"last_op_id":"2"}}"#
    ))
    .unwrap();
    h.store
        .execute_batch_write(
            "INSERT INTO todos(id, title, done) VALUES ('l1', 'local', 0);
             UPDATE todos SET title = 'edited' WHERE id = 't1';",
        )
        .unwrap();
    let batch = h.store.crud_batch(100).unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].entry.op, CrudOp::Put);
    assert_eq!(batch[1].entry.op, CrudOp::Patch);
    assert_eq!(
        batch[1].entry.data.as_ref().unwrap(),
        json!({"title":"edited"}).as_object().unwrap()
    );
    assert_eq!(batch[0].entry.tx_id, batch[1].entry.tx_id);

    // A server change arrives while the queue is not empty: held back.
    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint_diff":{"last_op_id":"3","updated_buckets":[{"bucket":"b[]","checksum":8}]}}"#,
            data("b[]", &[put(3, "t2", "server", 5)]),
            r#"{"checkpoint_complete":{"last_op_id":"3"}}"#
        ))
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::Blocked {
            checkpoint: OpId(3)
        }]
    );
    assert_eq!(h.ids(), vec!["l1", "t1", "t2"]);
    assert_eq!(h.rows()[1]["title"], "edited");
    assert_eq!(h.rows()[2]["title"], "two");

    // Uploaded, and the server answered write checkpoint 7: still held until a checkpoint carries it.
    h.store.complete_crud(batch[1].id).unwrap();
    assert!(h.store.set_write_target(OpId(7)).unwrap());
    let ins = h.machine.upload_completed();
    let effects = h.store.execute(&mut h.machine, ins).unwrap();
    assert_eq!(
        effects,
        vec![Effect::Blocked {
            checkpoint: OpId(3)
        }]
    );

    let effects = h
        .feed(&format!(
            "{}\n{}\n{}",
            r#"{"checkpoint_diff":{"last_op_id":"5","write_checkpoint":"7","updated_buckets":[{"bucket":"b[]","checksum":18}]}}"#,
            data("b[]", &[put(4, "l1", "local", 4), put(5, "t1", "edited", 6)]),
            r#"{"checkpoint_complete":{"last_op_id":"5"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(5)]);
    assert_eq!(h.ids(), vec!["l1", "t1", "t2"]);
    assert_eq!(h.rows()[2]["title"], "server");
    assert_eq!(h.store.kv("target_op").unwrap(), None);
}

#[test]
fn rejected_local_write_is_reverted_by_the_next_checkpoint() {
    let mut h = Harness::new();
    h.feed(&format!(
        "{}\n{}\n{}",
        r#"{"checkpoint":{"last_op_id":"1","buckets":[{"bucket":"b[]","checksum":1}]}}"#,
        data("b[]", &[put(1, "t1", "one", 1)]),
        r#"{"checkpoint_complete":{"last_op_id":"1"}}"#
    ))
    .unwrap();
    h.store
        .execute_batch_write("DELETE FROM todos WHERE id = 't1'")
        .unwrap();
    assert!(h.ids().is_empty());
    // The server refused the delete: the queue is emptied without a server change.
    h.store.complete_crud(i64::MAX).unwrap();
    h.store.set_write_target(OpId(1)).unwrap();
    let effects = h
        .feed(&format!(
            "{}\n{}",
            r#"{"checkpoint_diff":{"last_op_id":"1","write_checkpoint":"1","updated_buckets":[]}}"#,
            r#"{"checkpoint_complete":{"last_op_id":"1"}}"#
        ))
        .unwrap();
    assert_eq!(effects, vec![applied(1)]);
    assert_eq!(h.ids(), vec!["t1"]);
}

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

#[test]
fn view_triggers_queue_crud() {
    let mut h = Harness::new();
    h.store
        .execute_batch_write(
            "INSERT INTO todos(id, title, done) VALUES ('a', 'x', 0), ('b', 'y', 1)",
        )
        .unwrap();
    h.store
        .execute_batch_write("UPDATE todos SET done = 1 WHERE id = 'a'")
        .unwrap();
    h.store
        .execute_batch_write("UPDATE todos SET done = 1 WHERE id = 'a'")
        .unwrap(); // no change: no entry
    h.store
        .execute_batch_write("DELETE FROM todos WHERE id = 'b'")
        .unwrap();
    h.store
        .execute_batch_write("INSERT INTO drafts(id, body) VALUES ('d', 'private')")
        .unwrap();
    h.store
        .execute_batch_write("INSERT INTO events(id, kind) VALUES ('e', 'click')")
        .unwrap();
    let batch = h.store.crud_batch(100).unwrap();
    let summary: Vec<Value> = batch
        .iter()
        .map(|i| serde_json::to_value(&i.entry).unwrap())
        .collect();
    let tx = |i: usize| batch[i].entry.tx_id.unwrap();
    assert_eq!(
        summary,
        vec![
            json!({"op":"PUT","type":"todos","id":"a","data":{"title":"x","done":0},"tx_id":tx(0)}),
            json!({"op":"PUT","type":"todos","id":"b","data":{"title":"y","done":1},"tx_id":tx(0)}),
            json!({"op":"PATCH","type":"todos","id":"a","data":{"done":1},"tx_id":tx(2)}),
            json!({"op":"DELETE","type":"todos","id":"b","tx_id":tx(3)}),
            json!({"op":"PUT","type":"events","id":"e","data":{"kind":"click"},"tx_id":tx(4)}),
        ]
    );
    assert!(tx(0) < tx(2) && tx(2) < tx(3));
    assert_eq!(h.rows(), vec![json!({"id":"a","title":"x","done":1})]);
    assert_eq!(h.store.query("SELECT * FROM drafts", &[]).unwrap().len(), 1);
    assert_eq!(h.store.query("SELECT * FROM events", &[]).unwrap().len(), 0);
    assert!(h
        .store
        .execute_batch_write("INSERT INTO todos(title) VALUES ('no id')")
        .is_err());
    assert!(h
        .store
        .execute_batch_write("UPDATE todos SET id = 'z'")
        .is_err());
    // A failed write queues nothing.
    assert_eq!(h.store.crud_count().unwrap(), 5);
}

#[test]
fn odd_identifiers_are_quoted() {
    let schema = Schema::new(vec![Table::new(
        "my \"odd\" table",
        vec![
            Column::new("select", ColumnType::Real),
            Column::new("it's", ColumnType::Text),
        ],
    )]);
    let mut store = Store::open_in_memory(SchemaMode::Fixed(schema)).unwrap();
    store
        .execute_batch_write(
            r#"INSERT INTO "my ""odd"" table"(id, "select", "it's") VALUES ('1', 2.5, 'ok')"#,
        )
        .unwrap();
    let rows = store
        .query(r#"SELECT * FROM "my ""odd"" table""#, &[])
        .unwrap();
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"id":"1","select":2.5,"it's":"ok"})
    );
}

#[test]
fn inferred_views_follow_synced_data() {
    let mut store = Store::open_in_memory(SchemaMode::Inferred).unwrap();
    let mut machine = store.sync_state(Map::new()).unwrap();
    machine.start();
    let lines = [
        r#"{"checkpoint":{"last_op_id":"2","buckets":[{"bucket":"b[]","checksum":3}]}}"#
            .to_string(),
        data(
            "b[]",
            &[
                json!({"op_id":"1","op":"PUT","object_type":"lists","object_id":"l1","checksum":1,
                       "data": json!({"id":"l1","name":"Home","n":3,"w":1.5}).to_string()})
                .to_string(),
                json!({"op_id":"2","op":"PUT","object_type":"lists","object_id":"l2","checksum":2,
                       "data": json!({"id":"l2","name":"Work","n":null,"w":2}).to_string()})
                .to_string(),
            ],
        ),
        r#"{"checkpoint_complete":{"last_op_id":"2"}}"#.to_string(),
    ];
    for l in lines {
        let ins = machine
            .handle_line(SyncLine::parse(&l).unwrap().unwrap())
            .unwrap();
        store.execute(&mut machine, ins).unwrap();
    }
    let rows: Vec<Value> = store
        .query("SELECT id, name, n, w FROM lists ORDER BY id", &[])
        .unwrap()
        .into_iter()
        .map(Value::Object)
        .collect();
    assert_eq!(
        rows,
        vec![
            json!({"id":"l1","name":"Home","n":3,"w":1.5}),
            json!({"id":"l2","name":"Work","n":null,"w":2.0})
        ]
    );
    store
        .execute_batch_write("UPDATE lists SET name = 'Office' WHERE id = 'l2'")
        .unwrap();
    assert_eq!(store.crud_count().unwrap(), 1);
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
