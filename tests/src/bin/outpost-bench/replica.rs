//! Read scale-out on hot standbys: one primary and two standbys made here
//! with `pg_basebackup -R` (`outpost_tests::replication`: ports
//! `OUTPOST_REPLICA_PORTS`, default 5450–5452; binaries
//! `OUTPOST_REPLICA_PG_BINDIR` or `pg_config --bindir`), measured twice with
//! two release relay processes (one drives ticks, the other hears of
//! checkpoints by `LISTEN`): first both on the primary alone, then each
//! reading from its own standby (`OUTPOST_REPLICA_URL`).
//! - 2,000 streams spread over both relays, one write: time until every
//!   stream has the data line (p50 / p99);
//! - the primary's time in the sync path's reads while the streams start and
//!   the write fans out (`pg_stat_statements` `total_exec_time`);
//! - commit → visible in one stream, 200 writes one after another (p50).

use crate::relay_proc::{client_runtime, ms, percentile, ratio, RelayProc, Stream};
use crate::Row;
use anyhow::{bail, Result};
use outpost_tests::replication::{ports, Node};
use outpost_tests::TestDb;
use std::time::{Duration, Instant};

const CONNS: usize = 2_000;
const SEQUENTIAL_WRITES: i64 = 200;
const READS: [&str; 4] = [
    "%outpost.sync_checkpoint(%",
    "%outpost.bucket_ops(%",
    "%outpost.changes_since(%",
    "%outpost.client_schema(%",
];

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let ports = ports();
    if ports.len() < 3 {
        bail!("OUTPOST_REPLICA_PORTS needs three ports (primary, two standbys)");
    }
    let primary = Node::primary(ports[0]);
    // TestDb makes its database on the primary; the other sections keep theirs.
    let saved = std::env::var("OUTPOST_TEST_DATABASE_URL").ok();
    std::env::set_var("OUTPOST_TEST_DATABASE_URL", primary.url("postgres"));
    let result = run_on(&primary, &ports, rows);
    match saved {
        Some(v) => std::env::set_var("OUTPOST_TEST_DATABASE_URL", v),
        None => std::env::remove_var("OUTPOST_TEST_DATABASE_URL"),
    }
    result
}

/// Sum of `total_exec_time` (ms) and calls of the sync path's reads in this database.
fn read_time(c: &mut postgres::Client) -> Result<(f64, i64)> {
    let mut total = (0.0, 0);
    for q in READS {
        let r = c.query_one(
            "SELECT coalesce(sum(total_exec_time), 0)::float8, coalesce(sum(calls), 0)::bigint \
               FROM pg_stat_statements WHERE query ILIKE $1 \
                AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&q],
        )?;
        total.0 += r.get::<_, f64>(0);
        total.1 += r.get::<_, i64>(1);
    }
    Ok(total)
}

struct Figures {
    fan_p50: Duration,
    fan_p99: Duration,
    /// The primary's time in sync reads (ms) and their number.
    primary_reads: (f64, i64),
    standby_reads: (f64, i64),
    commit_p50: Duration,
    commit_p99: Duration,
}

fn measure(
    rt: &tokio::runtime::Runtime,
    c: &mut postgres::Client,
    standbys: &mut [postgres::Client],
    relays: &[&RelayProc],
    first_id: i64,
) -> Result<Figures> {
    let p0 = read_time(c)?;
    let s0: Vec<(f64, i64)> = standbys.iter_mut().map(read_time).collect::<Result<_>>()?;
    let addrs: Vec<_> = relays.iter().map(|r| r.addr).collect();
    eprintln!(
        "bench replica: opening {CONNS} streams on {} relays",
        addrs.len()
    );
    let mut streams: Vec<Stream> = rt.block_on(async {
        let mut out = Vec::with_capacity(CONNS);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..CONNS {
            let addr = addrs[i % addrs.len()];
            set.spawn(async move {
                let mut s = Stream::open(addr, &format!("user{i}"), None).await?;
                s.until_complete().await?;
                Ok::<_, anyhow::Error>(s)
            });
            if set.len() >= 200 {
                out.push(set.join_next().await.expect("task")??);
            }
        }
        while let Some(s) = set.join_next().await {
            out.push(s??);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let started = Instant::now();
    let waiting: Vec<_> = streams
        .drain(..)
        .map(|mut s| {
            rt.spawn(async move {
                loop {
                    let l = s.line().await?;
                    if l.starts_with(br#"{"data""#) {
                        let at = started.elapsed();
                        s.until_complete().await?;
                        return Ok::<_, anyhow::Error>((at, s));
                    }
                }
            })
        })
        .collect();
    c.execute("INSERT INTO live VALUES ($1, 'fan-out')", &[&first_id])?;
    let mut fan = Vec::with_capacity(CONNS);
    let mut back = Vec::with_capacity(CONNS);
    for h in waiting {
        let (d, s) = rt.block_on(h)??;
        fan.push(d);
        back.push(s);
    }
    fan.sort();
    drop(back);
    let p1 = read_time(c)?;
    let s1: Vec<(f64, i64)> = standbys.iter_mut().map(read_time).collect::<Result<_>>()?;
    let standby_reads = s0
        .iter()
        .zip(&s1)
        .fold((0.0, 0), |a, (x, y)| (a.0 + y.0 - x.0, a.1 + y.1 - x.1));

    // Commit → visible, one write at a time, in a stream on the first relay.
    let addr = addrs[0];
    let mut watcher = rt.block_on(async move {
        let mut s = Stream::open(addr, "watcher", None).await?;
        s.until_complete().await?;
        Ok::<_, anyhow::Error>(s)
    })?;
    let mut lat = Vec::with_capacity(SEQUENTIAL_WRITES as usize);
    for i in 1..=SEQUENTIAL_WRITES {
        let id = first_id + i;
        let needle = format!(r#""object_id":"{id}""#);
        let t = Instant::now();
        c.execute("INSERT INTO live VALUES ($1, 'w')", &[&id])?;
        rt.block_on(watcher.until_data_with(needle.as_bytes()))?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(Figures {
        fan_p50: percentile(&fan, 0.5),
        fan_p99: percentile(&fan, 0.99),
        primary_reads: (p1.0 - p0.0, p1.1 - p0.1),
        standby_reads,
        commit_p50: percentile(&lat, 0.5),
        commit_p99: percentile(&lat, 0.99),
    })
}

fn in_rotation(relay: &RelayProc, standby: &Node) -> Result<bool> {
    let m = relay.metrics()?;
    Ok(m(&format!(
        "outpost_relay_replica_in_rotation{{replica=\"127.0.0.1:{}\"}}",
        standby.port
    )) == "1")
}

fn run_on(primary: &Node, ports: &[u16], rows: &mut Vec<Row>) -> Result<()> {
    let rt = client_runtime()?;
    let db = TestDb::new("bench_replica");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         CREATE TABLE live (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO live VALUES (0, 'seed');",
    )?;
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  shared:\n    data: SELECT * FROM live\n"],
    )?;
    let s1 = Node::standby(primary, ports[1]);
    let s2 = Node::standby(primary, ports[2]);
    let mut standbys: Vec<postgres::Client> = [&s1, &s2]
        .iter()
        .map(|s| {
            s.wait_ready(
                &db.name,
                "SELECT outpost.checkpoint()",
                Duration::from_secs(60),
            )
        })
        .collect();

    let base = {
        let a = RelayProc::start(&db)?;
        let b = RelayProc::start_env(&db, &[("OUTPOST_DRIVE_TICKS", "false".into())])?;
        measure(&rt, &mut c, &mut standbys, &[&a, &b], 10_000)?
    };
    let a = RelayProc::start_env(&db, &[("OUTPOST_REPLICA_URL", s1.url(&db.name))])?;
    let b = RelayProc::start_env(
        &db,
        &[
            ("OUTPOST_REPLICA_URL", s2.url(&db.name)),
            ("OUTPOST_DRIVE_TICKS", "false".into()),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(in_rotation(&a, &s1)? && in_rotation(&b, &s2)?) {
        if Instant::now() > deadline {
            bail!("the standbys never came into rotation");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rep = measure(&rt, &mut c, &mut standbys, &[&a, &b], 20_000)?;
    let m = a.metrics()?;
    let waits: f64 = m("outpost_relay_replica_wait_seconds_count")
        .parse()
        .unwrap_or(0.0);
    let wait_sum: f64 = m("outpost_relay_replica_wait_seconds_sum")
        .parse()
        .unwrap_or(0.0);
    let fallbacks = m("outpost_relay_replica_fallback_reads_total");

    rows.push(Row {
        name: format!(
            "standbys: one write reaches {CONNS} streams on 2 relays (p50 / p99): each on its own standby vs both on the primary"
        ),
        value: format!(
            "{:.0} / {:.0} ms vs {:.0} / {:.0} ms",
            ms(rep.fan_p50),
            ms(rep.fan_p99),
            ms(base.fan_p50),
            ms(base.fan_p99)
        ),
        goal: "all within 1 s".into(),
        ratio: ratio(1000.0, ms(rep.fan_p99), false),
    });
    rows.push(Row {
        name: format!(
            "standbys: the primary's time in sync reads while {CONNS} streams start and one write fans out"
        ),
        value: format!(
            "{:.1} ms ({} calls) vs {:.1} ms ({} calls) with both relays on the primary; the standbys served {} calls in {:.1} ms; {fallbacks} fallback reads",
            rep.primary_reads.0,
            rep.primary_reads.1,
            base.primary_reads.0,
            base.primary_reads.1,
            rep.standby_reads.1,
            rep.standby_reads.0,
        ),
        goal: "reads leave the primary".into(),
        ratio: if rep.primary_reads.1 == 0 { "met" } else { "missed" }.into(),
    });
    rows.push(Row {
        name: format!(
            "standbys: commit → visible in a stream through a standby, {SEQUENTIAL_WRITES} writes one at a time (p50 / p99)"
        ),
        value: format!(
            "{:.1} / {:.1} ms vs {:.1} / {:.1} ms on the primary (standby replay wait mean {:.2} ms over {waits} checkpoints)",
            ms(rep.commit_p50),
            ms(rep.commit_p99),
            ms(base.commit_p50),
            ms(base.commit_p99),
            if waits > 0.0 { wait_sum / waits * 1e3 } else { 0.0 },
        ),
        goal: "p50 ≤ 15 ms".into(),
        ratio: ratio(15.0, ms(rep.commit_p50), false),
    });
    Ok(())
}
