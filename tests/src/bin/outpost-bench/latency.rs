//! Latency figures for Outpost's own client (`outpost_client`): an INSERT
//! committed in Postgres → the client's live query returning the row, with
//! the user's bucket holding 100k and then 1M rows (issue 19: latency flat
//! in bucket size). Per size, on a fresh database:
//! - user `bench`'s one list holds N todos with text ids (one set-based
//!   INSERT … SELECT, materialized by `deploy_rules`' snapshot: no
//!   row-by-row capture);
//! - the release relay ([`RelayProc`]) serves it; a client file, opened with
//!   the relay's `/schema`, is synced in full once by a `SyncClient` on the
//!   bench's runtime (waited for by a live `count(*)`);
//! - then W single-row inserts, one at a time, each timed from just before
//!   the INSERT to the live query `SELECT id FROM todos WHERE id = ?`
//!   returning the row (its watch firing), never by sleeps.
//!
//! A raw stream of the same user on the same relay waits for the same
//! writes' data lines, so the split is: up to the data line, Postgres (the
//! tick; its mean from the relay's /metrics) and the relay; after it, the
//! client (parse, store the op, apply the checkpoint, re-run the query).
//! `OUTPOST_BENCH_LATENCY_ROWS` lists the sizes (default `100000,1000000`;
//! the last is compared with the first), `OUTPOST_BENCH_LATENCY_WRITES` the
//! inserts per size (default 200).

use crate::client::{Keys, TempDb};
use crate::relay_proc::{client_runtime, ms, percentile, ratio, token, RelayProc, Stream};
use crate::Row;
use anyhow::{anyhow, bail, Result};
use outpost_client::watch::Watch;
use outpost_client::Credentials;
use outpost_tests::client::{open_from_relay, spawn_sync, Rows};
use outpost_tests::{TestDb, LIST_TODOS_RULES};
use serde_json::json;
use std::time::{Duration, Instant};

const GOAL_MS: f64 = 10.0;
/// p50 at the largest size over p50 at the smallest that still counts as flat.
const FLAT: f64 = 1.2;
/// A first sync of 1M rows on a shared, loaded machine can take minutes.
const FIRST_SYNC: Duration = Duration::from_secs(900);
/// One write's wait, before the bench gives up on it.
const ONE_WRITE: Duration = Duration::from_secs(60);

pub(crate) fn sizes() -> Result<Vec<i64>> {
    let list =
        std::env::var("OUTPOST_BENCH_LATENCY_ROWS").unwrap_or_else(|_| "100000,1000000".into());
    list.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| anyhow!("OUTPOST_BENCH_LATENCY_ROWS: {s:?} is not a row count"))
        })
        .collect()
}

/// One size's figures; durations sorted.
struct Measured {
    rows: i64,
    client: Vec<Duration>,
    stream: Vec<Duration>,
    /// Per write, the client's live query minus the raw stream's data line.
    client_share: Vec<Duration>,
    tick_ms: f64,
    first_sync: Duration,
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let writes: usize = crate::env_num("OUTPOST_BENCH_LATENCY_WRITES", 200usize).max(1);
    let rt = client_runtime()?;
    let mut all = Vec::new();
    for n in sizes()? {
        let m = measure(&rt, n, writes)?;
        let (p50, p95) = (percentile(&m.client, 0.5), percentile(&m.client, 0.95));
        rows.push(Row {
            name: format!(
                "latency: INSERT → Outpost's client live query fires, user's bucket of {} rows, {writes} single-row inserts (p50 / p95)",
                m.rows
            ),
            value: format!(
                "{:.1} / {:.1} ms (raw stream's data line p50 {:.1} ms, relay tick mean {:.1} ms; client share p50 {:.1} ms; first sync {:.1} s)",
                ms(p50),
                ms(p95),
                ms(percentile(&m.stream, 0.5)),
                m.tick_ms,
                ms(percentile(&m.client_share, 0.5)),
                m.first_sync.as_secs_f64()
            ),
            goal: format!("p50 ≤ {GOAL_MS} ms"),
            ratio: ratio(GOAL_MS, ms(p50), false),
        });
        all.push(m);
    }
    if let (Some(small), Some(big)) = (all.first(), all.last()) {
        if all.len() > 1 {
            let p = |m: &Measured, q: f64| ms(percentile(&m.client, q));
            let r50 = p(big, 0.5) / p(small, 0.5);
            rows.push(Row {
                name: format!(
                    "latency: INSERT → live query p50, {} vs {} rows in the bucket (same run)",
                    big.rows, small.rows
                ),
                value: format!("{r50:.2}x (p95 {:.2}x)", p(big, 0.95) / p(small, 0.95)),
                goal: format!("flat (≤ {FLAT}x)"),
                ratio: ratio(FLAT, r50, false),
            });
        }
    }
    Ok(())
}

/// Waits until the live query's rows satisfy `pred`, at most `timeout`.
async fn until(w: &mut Watch, timeout: Duration, pred: impl Fn(&Rows) -> bool) -> Result<()> {
    tokio::time::timeout(timeout, async {
        loop {
            if pred(&w.next().await?) {
                return Ok(());
            }
        }
    })
    .await
    .map_err(|_| anyhow!("the live query did not fire within {timeout:?}"))?
}

/// The relay's time in `outpost.tick()` so far and its tick count.
fn tick_totals(m: &impl Fn(&str) -> String) -> (f64, f64) {
    let get = |name: &str| m(name).parse().unwrap_or(f64::NAN);
    (
        get("outpost_relay_tick_duration_seconds_sum"),
        get("outpost_relay_tick_duration_seconds_count"),
    )
}

fn measure(rt: &tokio::runtime::Runtime, n: i64, writes: usize) -> Result<Measured> {
    let db = TestDb::new("bench_latency");
    let mut pg = db.connect();
    eprintln!("bench latency: materializing {n} rows in one bucket");
    pg.batch_execute(&Keys::Text.setup_sql(n, 1))?;
    pg.query_one("SELECT outpost.deploy_rules($1)", &[&LIST_TODOS_RULES])?;
    pg.batch_execute("VACUUM ANALYZE")?;
    let relay = RelayProc::start(&db)?;
    let creds = Credentials {
        endpoint: format!("http://{}", relay.addr),
        token: token("bench"),
    };

    eprintln!("bench latency: first sync of {n} rows");
    let file = TempDb::new("latency");
    let t = Instant::now();
    let client = open_from_relay(rt, &file.0, &creds);
    let task = spawn_sync(rt, &client, creds, Duration::from_secs(1));
    let mut all = client.watch("SELECT count(*) AS n FROM todos", &[])?;
    rt.block_on(until(&mut all, FIRST_SYNC, |r| r[0]["n"] == json!(n)))?;
    let first_sync = t.elapsed();
    drop(all);
    let mut raw = rt.block_on(async {
        let mut s = Stream::open(relay.addr, "bench", None).await?;
        s.until_complete().await?;
        Ok::<_, anyhow::Error>(s)
    })?;

    eprintln!("bench latency: {writes} single-row inserts");
    let m0 = relay.metrics()?;
    let (mut client_lat, mut stream_lat, mut share) = (vec![], vec![], vec![]);
    for i in 0..writes {
        let id = format!("probe{i}");
        let mut w = client.watch("SELECT id FROM todos WHERE id = ?", &[json!(id)])?;
        // The first call answers at once: the row is not there yet.
        if !rt.block_on(w.next())?.is_empty() {
            bail!("{id} is in the client before its INSERT");
        }
        let t0 = Instant::now();
        pg.execute(
            "INSERT INTO todos(id, list_id, title) VALUES ($1, 'l0', 'latency probe')",
            &[&id],
        )?;
        let quoted = format!("\"{id}\"");
        let (c, s) = rt.block_on(async {
            let seen = async {
                until(&mut w, ONE_WRITE, |r| !r.is_empty()).await?;
                Ok::<_, anyhow::Error>(t0.elapsed())
            };
            let line = async {
                raw.until_data_with(quoted.as_bytes()).await?;
                Ok::<_, anyhow::Error>(t0.elapsed())
            };
            tokio::try_join!(seen, line)
        })?;
        client_lat.push(c);
        stream_lat.push(s);
        share.push(c.saturating_sub(s));
    }
    let m1 = relay.metrics()?;
    let ((s0, c0), (s1, c1)) = (tick_totals(&m0), tick_totals(&m1));
    task.abort();
    for v in [&mut client_lat, &mut stream_lat, &mut share] {
        v.sort();
    }
    Ok(Measured {
        rows: n,
        client: client_lat,
        stream: stream_lat,
        client_share: share,
        tick_ms: (s1 - s0) / (c1 - c0).max(1.0) * 1e3,
        first_sync,
    })
}
