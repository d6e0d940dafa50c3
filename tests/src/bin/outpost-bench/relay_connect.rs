//! Relay figures about starting streams, on the release relay binary (see
//! `relay.rs`):
//! - 1,000 clients connect at once right after a write: how many ticks the
//!   freshness barrier cost, and the time until the last client has a
//!   complete first checkpoint (which must include the write);
//! - a client holding 100,000 buckets resumes with all their positions:
//!   time from the request to `checkpoint_complete` with the one new op.

use crate::relay_proc::{client_runtime, ms, ratio, RelayProc, Stream};
use crate::Row;
use anyhow::{bail, Result};
use bytes::Bytes;
use outpost_tests::TestDb;
use std::collections::BTreeMap;
use std::time::Instant;

const CLIENTS: usize = 1_000;
const BUCKETS: i32 = 100_000;

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let rt = client_runtime()?;
    connect_burst(&rt, rows)?;
    resume_100k(&rt, rows)?;
    Ok(())
}

fn connect_burst(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) -> Result<()> {
    let db = TestDb::new("bench_relay_burst");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE live (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO live SELECT g, 'seed' FROM generate_series(1, 10) g;",
    )?;
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  shared:\n    data: SELECT * FROM live\n"],
    )?;
    let relay = RelayProc::start(&db)?;
    let addr = relay.addr;
    // Through one stream first, so startup ticks are not counted.
    rt.block_on(async move {
        Stream::open(addr, "warm", None)
            .await?
            .until_complete()
            .await
    })?;
    let ticks =
        |r: &RelayProc| -> Result<f64> { Ok(r.metrics()?("outpost_relay_ticks_total").parse()?) };
    let before = ticks(&relay)?;
    eprintln!("bench relay: {CLIENTS} clients connect at once after a write");
    c.batch_execute("INSERT INTO live VALUES (11, 'just written')")?;
    let t = Instant::now();
    let last = rt.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..CLIENTS {
            set.spawn(async move {
                let mut s = Stream::open(addr, &format!("user{i}"), None).await?;
                let ops = s.until_complete().await?;
                if ops != 11 {
                    bail!("client {i}: first checkpoint has {ops} ops, not the 11 committed");
                }
                Ok::<_, anyhow::Error>(t.elapsed())
            });
        }
        let mut last = std::time::Duration::ZERO;
        while let Some(r) = set.join_next().await {
            last = last.max(r??);
        }
        Ok::<_, anyhow::Error>(last)
    })?;
    let ran = ticks(&relay)? - before;
    rows.push(Row {
        name: format!("relay: {CLIENTS} clients connect at once right after a write: ticks run"),
        value: format!("{ran:.0} ticks (every first checkpoint had the write)"),
        goal: "≤ 10 ticks".into(),
        ratio: ratio(10.0, ran, false),
    });
    rows.push(Row {
        name: format!("relay: {CLIENTS} clients connect at once: last complete first checkpoint"),
        value: format!("{:.0} ms", ms(last)),
        goal: "≤ 1 s".into(),
        ratio: ratio(1000.0, ms(last), false),
    });
    Ok(())
}

fn resume_100k(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) -> Result<()> {
    let db = TestDb::new("bench_relay_resume");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE lists (id int PRIMARY KEY, owner_id text NOT NULL, name text);
         INSERT INTO lists SELECT g, 'many', 'list ' || g FROM generate_series(1, {BUCKETS}) g;"
    ))?;
    eprintln!("bench relay: {BUCKETS} buckets of one user");
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  one_list:\n    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()\n    data: SELECT id, name FROM lists WHERE id = bucket.list_id\n"],
    )?;
    let relay = RelayProc::start(&db)?;
    let addr = relay.addr;
    let positions = rt.block_on(async move {
        let mut s = Stream::open(addr, "many", None).await?;
        let mut positions = BTreeMap::new();
        loop {
            let l = s.line().await?;
            if l.starts_with(br#"{"checkpoint_complete""#) {
                return Ok::<_, anyhow::Error>(positions);
            }
            if l.starts_with(br#"{"data""#) {
                let v: serde_json::Value = serde_json::from_slice(&l)?;
                let d = &v["data"];
                let last = d["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|op| op["op_id"].as_str()?.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0);
                let p = positions
                    .entry(d["bucket"].as_str().unwrap_or_default().to_string())
                    .or_insert(0);
                *p = last.max(*p);
            }
        }
    })?;
    if positions.len() != BUCKETS as usize {
        bail!("initial sync gave {} buckets", positions.len());
    }
    c.batch_execute("UPDATE lists SET name = 'renamed' WHERE id = 4242")?;
    let body = serde_json::json!({
        "buckets": positions
            .iter()
            .map(|(name, after)| serde_json::json!({"name": name, "after": after.to_string()}))
            .collect::<Vec<_>>(),
        "raw_data": true,
        "client_id": "bench",
    })
    .to_string();
    let size = body.len();
    let t = Instant::now();
    let ops = rt.block_on(async move {
        Stream::open_with(addr, "many", None, Bytes::from(body))
            .await?
            .until_complete()
            .await
    })?;
    let took = t.elapsed();
    if ops != 1 {
        bail!("resume sent {ops} ops, expected the 1 new one");
    }
    rows.push(Row {
        name: format!("relay: resume with {BUCKETS} buckets → checkpoint_complete"),
        value: format!(
            "{:.0} ms ({:.1} MB request, 1 op)",
            ms(took),
            size as f64 / 1e6
        ),
        goal: "≤ 5 s".into(),
        ratio: ratio(5000.0, ms(took), false),
    });
    Ok(())
}
