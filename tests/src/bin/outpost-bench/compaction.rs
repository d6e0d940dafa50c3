//! Compaction figures: op-log rows and bytes before/after compacting 100k
//! updates to 10k rows, and the bytes a fresh client downloads afterwards
//! compared with the size of the final rows.

use crate::Row;
use anyhow::Result;
use outpost_protocol::{Checksum, OpId, OpType, OplogEntry};
use outpost_tests::TestDb;
use postgres::Client;
use std::time::Instant;

const ROWS: i32 = 10_000;
const UPDATES: i32 = 100_000;

fn oplog_size(c: &mut Client) -> Result<(i64, i64)> {
    let r = c.query_one(
        "SELECT count(*), coalesce(sum(pg_column_size(o.*)), 0)::bigint FROM outpost.ops o",
        &[],
    )?;
    Ok((r.get(0), r.get(1)))
}

/// Bytes of the NDJSON op entries a fresh client receives for the bucket.
fn download_bytes(c: &mut Client, bucket: &str) -> Result<usize> {
    let cp: i64 = c.query_one("SELECT outpost.checkpoint()", &[])?.get(0);
    let mut total = 0;
    for r in c.query(
        "SELECT op_id, op, object_type, object_id, subkey, data, checksum FROM outpost.bucket_ops(ARRAY[$1], ARRAY[0::bigint], $2, 100000000)",
        &[&bucket, &cp],
    )? {
        let op = match r.get::<_, String>(1).as_str() {
            "PUT" => OpType::Put,
            "REMOVE" => OpType::Remove,
            "MOVE" => OpType::Move,
            _ => OpType::Clear,
        };
        let e = OplogEntry {
            op_id: OpId(r.get::<_, i64>(0) as u64),
            op,
            object_type: r.get(2),
            object_id: r.get(3),
            subkey: r.get(4),
            checksum: Checksum(r.get::<_, i64>(6) as u32),
            data: r.get(5),
        };
        total += serde_json::to_string(&e)?.len() + 1;
    }
    Ok(total)
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let db = TestDb::new("bench_compact");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, label text NOT NULL);
         INSERT INTO items SELECT g, 0, 'item number ' || g FROM generate_series(1, {ROWS}) g;"
    ))?;
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  all_items:\n    data: SELECT id, v, label FROM items\n"],
    )?;
    // 100k updates: 10 rounds over all rows, ticked in between.
    for round in 1..=(UPDATES / ROWS) {
        c.execute("UPDATE items SET v = $1", &[&round])?;
        c.query_one("SELECT outpost.tick()", &[])?;
    }
    let (ops_before, bytes_before) = oplog_size(&mut c)?;
    let dl_before = download_bytes(&mut c, "all_items[]")?;
    let t = Instant::now();
    let removed: i64 = c.query_one("SELECT outpost.compact()", &[])?.get(0);
    let took = t.elapsed();
    let (ops_after, bytes_after) = oplog_size(&mut c)?;
    let dl_after = download_bytes(&mut c, "all_items[]")?;
    let final_rows: i64 = c
        .query_one(
            "SELECT sum(length(o.data))::bigint FROM outpost.bucket_rows b JOIN outpost.ops o ON o.bucket = b.bucket AND o.op_id = b.op_id",
            &[],
        )?
        .get(0);
    rows.push(Row {
        name: format!("op log after {UPDATES} updates to {ROWS} rows: before vs after compact()"),
        value: format!(
            "{ops_before} → {ops_after} ops, {:.1} → {:.1} MB ({removed} removed in {:.2} s)",
            bytes_before as f64 / 1e6,
            bytes_after as f64 / 1e6,
            took.as_secs_f64()
        ),
        goal: "shrinks".into(),
        ratio: format!("{:.2}x of before", ops_after as f64 / ops_before as f64),
    });
    // The same final rows in a bucket that never changed: what no history costs.
    c.query_one(
        "SELECT outpost.define_bucket('fresh_items', '{}', ARRAY['SELECT id, v, label FROM items'])",
        &[],
    )?;
    let dl_fresh = download_bytes(&mut c, "fresh_items[]")?;
    let ratio = dl_after as f64 / dl_fresh as f64;
    rows.push(Row {
        name: "fresh client download after compaction vs the same rows never updated".into(),
        value: format!(
            "{:.2} MB vs {:.2} MB (before compaction: {:.2} MB; row data alone {:.2} MB)",
            dl_after as f64 / 1e6,
            dl_fresh as f64 / 1e6,
            dl_before as f64 / 1e6,
            final_rows as f64 / 1e6
        ),
        goal: "≤ 1.3x".into(),
        ratio: format!(
            "{ratio:.2}x {}",
            if ratio <= 1.3 { "met" } else { "missed" }
        ),
    });
    Ok(())
}
