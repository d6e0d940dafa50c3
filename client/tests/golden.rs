//! Golden transcripts: NDJSON lines through the state machine and the SQLite
//! adapter, asserting the resulting rows, effects and upload queue.

mod golden_support;

use golden_support::*;
use outpost_client::store::Effect;
use outpost_client::sync::Instruction;
use outpost_protocol::http::CrudOp;
use outpost_protocol::OpId;
use serde_json::json;

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
        .feed(&diff_of(3, "b[]", 1000, &[put(3, "t1", "changed", 4)]))
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
