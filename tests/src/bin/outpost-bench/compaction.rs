//! Compaction figures: op-log rows and bytes before/after compacting 100k
//! updates to 10k rows, the bytes a fresh client downloads afterwards
//! compared with the size of the final rows, and commit → published
//! checkpoint latency (p99) while `CALL outpost.compact_online()` works
//! through a pile of superseded ops, side by side with no compaction.
//! `OUTPOST_BENCH_SUPERSEDED` sets the pile (default 1,000,000).

use crate::Row;
use anyhow::Result;
use outpost_protocol::{Checksum, OpId, OpType, OplogEntry};
use outpost_tests::TestDb;
use postgres::Client;
use std::time::{Duration, Instant};

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

/// Commit → checkpoint published, for one write every 10 ms during `window`:
/// each sample is one INSERT (committed) and the tick that publishes it.
fn commit_to_checkpoint(url: &str, window: Duration, first_id: i32) -> Result<Vec<Duration>> {
    let mut c = Client::connect(url, postgres::NoTls)?;
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut id = first_id;
    while start.elapsed() < window {
        let t = Instant::now();
        c.execute("INSERT INTO probes VALUES ($1)", &[&id])?;
        c.query_one("SELECT outpost.tick()", &[])?;
        samples.push(t.elapsed());
        id += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(samples)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Ticks while compaction runs: a table with `superseded` superseded ops
/// (10 updates of a tenth as many rows, ticked in between), then a stream of
/// small writes, each ticked at once, first alone, then while
/// `CALL outpost.compact_online()` runs in another session.
pub fn run_latency(rows: &mut Vec<Row>) -> Result<()> {
    let superseded: i64 = crate::env_num("OUTPOST_BENCH_SUPERSEDED", 1_000_000);
    let n = (superseded / 10).max(1000);
    let db = TestDb::new("bench_compact_latency");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE pile (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO pile SELECT g, 0 FROM generate_series(1, {n}) g;
         CREATE TABLE probes (id int PRIMARY KEY);"
    ))?;
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  pile:\n    data: SELECT id, v FROM pile\n  probes:\n    data: SELECT id FROM probes\n"],
    )?;
    eprintln!("bench: piling up {} superseded ops", n * 10);
    for round in 1..=10 {
        c.execute("UPDATE pile SET v = $1", &[&round])?;
        c.query_one("SELECT outpost.tick()", &[])?;
    }
    let pending: i64 = c
        .query_one("SELECT count(*) FROM outpost.superseded", &[])?
        .get(0);

    let window = Duration::from_secs(10);
    let alone = commit_to_checkpoint(&db.url, window, 1)?;
    let url = db.url.clone();
    let compactor = std::thread::spawn(move || -> Result<(i64, Duration)> {
        let mut c = Client::connect(&url, postgres::NoTls)?;
        let t = Instant::now();
        let removed: i64 = c.query_one("CALL outpost.compact_online()", &[])?.get(0);
        Ok((removed, t.elapsed()))
    });
    let mut during = Vec::new();
    let mut id = 1_000_000;
    while !compactor.is_finished() {
        let s = commit_to_checkpoint(&db.url, Duration::from_secs(1), id)?;
        id += s.len() as i32;
        during.extend(s);
    }
    let (removed, took) = compactor.join().expect("compactor thread")?;
    let (a, d) = (p99(alone.clone()), p99(during.clone()));
    rows.push(Row {
        name: format!(
            "commit → checkpoint published, p99, while compact_online() works through {pending} superseded ops vs no compaction"
        ),
        value: format!(
            "{:.1} ms vs {:.1} ms ({} / {} samples; compaction removed {removed} ops in {:.1} s)",
            d.as_secs_f64() * 1e3,
            a.as_secs_f64() * 1e3,
            during.len(),
            alone.len(),
            took.as_secs_f64()
        ),
        goal: "p99 ≤ 50 ms".into(),
        ratio: format!(
            "{:.2}x {}",
            0.05 / d.as_secs_f64(),
            if d <= Duration::from_millis(50) {
                "met"
            } else {
                "missed"
            }
        ),
    });
    Ok(())
}
