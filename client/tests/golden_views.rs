//! Golden transcripts of the views over synced tables: triggers that queue
//! CRUD, quoted identifiers, and views inferred from synced data.

mod golden_support;

use golden_support::*;
use outpost_client::schema::{Column, ColumnType, Schema, Table};
use outpost_client::store::{SchemaMode, Store};
use outpost_protocol::SyncLine;
use serde_json::{json, Map, Value};

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
