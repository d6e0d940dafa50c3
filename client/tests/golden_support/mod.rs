//! Shared pieces of the golden tests (`golden*.rs`): a store with a fixed
//! schema and its sync state machine fed NDJSON lines, and builders of those
//! lines.
#![allow(dead_code)]

use outpost_client::schema::{Column, ColumnType, Schema, Table};
use outpost_client::store::{Effect, SchemaMode, Store};
use outpost_client::sync::SyncState;
use outpost_client::Error;
use outpost_protocol::{OpId, SyncLine};
use serde_json::{json, Map, Value};

pub struct Harness {
    pub store: Store,
    pub machine: SyncState,
}

pub fn schema() -> Schema {
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
    pub fn new() -> Harness {
        let store = Store::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
        let mut machine = store.sync_state(Map::new()).unwrap();
        machine.start();
        Harness { store, machine }
    }

    /// Feeds NDJSON lines; returns the effects.
    pub fn feed(&mut self, ndjson: &str) -> Result<Vec<Effect>, Error> {
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

    pub fn rows(&self) -> Vec<Value> {
        self.store
            .query("SELECT id, title, done FROM todos ORDER BY id", &[])
            .unwrap()
            .into_iter()
            .map(Value::Object)
            .collect()
    }

    pub fn ids(&self) -> Vec<String> {
        self.rows()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn oplog_count(&self) -> i64 {
        self.store
            .connection()
            .query_row("SELECT count(*) FROM ps_oplog", [], |r| r.get(0))
            .unwrap()
    }
}

pub fn put(op: u64, id: &str, title: &str, cs: u32) -> String {
    let data = json!({"id": id, "title": title, "done": 0}).to_string();
    json!({"op_id": op.to_string(), "op": "PUT", "object_type": "todos", "object_id": id, "subkey": "s",
           "checksum": cs, "data": data})
    .to_string()
}

pub fn remove(op: u64, id: &str, cs: u32) -> String {
    json!({"op_id": op.to_string(), "op": "REMOVE", "object_type": "todos", "object_id": id, "subkey": "s", "checksum": cs})
        .to_string()
}

pub fn data(bucket: &str, ops: &[String]) -> String {
    format!(
        r#"{{"data":{{"bucket":{},"data":[{}]}}}}"#,
        json!(bucket),
        ops.join(",")
    )
}

/// A checkpoint diff that updates one bucket, that bucket's data line and
/// the checkpoint's completion: a change to a synced bucket, as the relay
/// sends it.
pub fn diff_of(last_op: u64, bucket: &str, checksum: u32, ops: &[String]) -> String {
    let diff = json!({"checkpoint_diff": {
        "last_op_id": last_op.to_string(),
        "updated_buckets": [{"bucket": bucket, "checksum": checksum}],
        "removed_buckets": [],
    }});
    let complete = json!({"checkpoint_complete": {"last_op_id": last_op.to_string()}});
    format!("{diff}\n{}\n{complete}", data(bucket, ops))
}

pub fn applied(cp: u64) -> Effect {
    Effect::Applied {
        checkpoint: OpId(cp),
        priority: None,
    }
}
