//! Rules-change figures: the time to add one bucket must follow the new
//! bucket's rows, not the database. Measured side by side: adding a bucket
//! over a 10k-row table in an otherwise empty database, and the same with 1M
//! rows already materialized in other buckets.

use crate::Row;
use anyhow::Result;
use outpost_tests::TestDb;
use postgres::Client;
use std::time::{Duration, Instant};

const BIG: i64 = 1_000_000;
const SMALL: i64 = 10_000;

fn add_bucket(c: &mut Client) -> Result<Duration> {
    let t = Instant::now();
    c.query_one(
        "SELECT outpost.define_bucket('tags', '{}', ARRAY['SELECT id, label FROM tags'])",
        &[],
    )?;
    Ok(t.elapsed())
}

fn database(label: &str, big_rows: i64) -> Result<(TestDb, Client)> {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, owner int NOT NULL, body text NOT NULL);
         INSERT INTO items SELECT g, g % 1000, 'body ' || g FROM generate_series(1, {big_rows}) g;
         CREATE TABLE tags (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO tags SELECT g, 'tag ' || g FROM generate_series(1, {SMALL}) g;"
    ))?;
    c.query_one(
        "SELECT outpost.define_bucket('by_owner', ARRAY['SELECT request.user_id()::int AS owner'], ARRAY['SELECT id, body FROM items WHERE owner = bucket.owner'])",
        &[],
    )?;
    Ok((db, c))
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    eprintln!("bench: materializing {BIG} rows in other buckets first");
    let (_small_db, mut small) = database("bench_rules_small", 0)?;
    let (_big_db, mut big) = database("bench_rules_big", BIG)?;
    // Median of 3, interleaved, after a CHECKPOINT so the 1M-row load's
    // pending writes are not billed to the first measurement.
    big.batch_execute("CHECKPOINT")?;
    let (mut e, mut f) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        e.push(add_bucket(&mut small)?);
        f.push(add_bucket(&mut big)?);
        for c in [&mut small, &mut big] {
            c.query_one("SELECT outpost.drop_bucket('tags')", &[])?;
        }
    }
    e.sort();
    f.sort();
    let (empty, full) = (e[1], f[1]);
    let ratio = full.as_secs_f64() / empty.as_secs_f64();
    rows.push(Row {
        name: format!(
            "add a {SMALL}-row bucket: with {BIG} rows in other buckets vs empty database"
        ),
        value: format!(
            "{:.0} ms vs {:.0} ms",
            full.as_secs_f64() * 1e3,
            empty.as_secs_f64() * 1e3
        ),
        goal: "≈ 1x (follows the new bucket's rows)".into(),
        ratio: format!(
            "{ratio:.2}x {}",
            if ratio <= 1.5 { "met" } else { "missed" }
        ),
    });
    Ok(())
}
