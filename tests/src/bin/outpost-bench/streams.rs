//! Sync Streams figures, on the release relay binary (see `relay.rs`):
//! - a write to a stream's subquery table that moves a 10,000-row list from
//!   one user to another: time from the commit to the receiving client's
//!   complete checkpoint with the 10,000 rows (and to the loser's checkpoint
//!   without them);
//! - renaming a list whose 10,000 todos select its name through a JOIN:
//!   time from the commit to the client's complete checkpoint with the
//!   10,000 re-PUT rows;
//! - 1,000 clients with distinct parameterized subscriptions connected at
//!   once: one write that all of them receive, commit → each client's data
//!   line (p50 / p99 / max).

use crate::relay_proc::{client_runtime, ms, percentile, ratio, time_fan_out, RelayProc, Stream};
use crate::Row;
use anyhow::{bail, Result};
use bytes::Bytes;
use outpost_tests::TestDb;
use std::time::{Duration, Instant};

const MOVED: i32 = 10_000;
const CLIENTS: usize = 1_000;

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let rt = client_runtime()?;
    // `OUTPOST_BENCH_STREAMS=moves` or `=fan-out`: one part alone.
    let part = std::env::var("OUTPOST_BENCH_STREAMS").unwrap_or_default();
    if part != "fan-out" {
        moves(&rt, rows)?;
    }
    if part != "moves" {
        fan_out(&rt, rows)?;
    }
    Ok(())
}

fn body(subscriptions: serde_json::Value) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "buckets": [], "raw_data": true, "client_id": "bench",
            "streams": {"include_defaults": true, "subscriptions": subscriptions},
        })
        .to_string(),
    )
}

/// Reads lines until a `checkpoint_complete`; returns the PUT ops seen and
/// whether a checkpoint (diff) line named `removed` in its removed buckets.
async fn next_complete(s: &mut Stream, removed: &str) -> Result<(u64, bool)> {
    let (mut puts, mut saw_removed) = (0u64, false);
    loop {
        let l = s.line().await?;
        if l.starts_with(br#"{"data""#) {
            puts += crate::relay_proc::count(&l, br#""op":"PUT""#);
        } else if l.starts_with(br#"{"checkpoint_diff""#) {
            let v: serde_json::Value = serde_json::from_slice(&l)?;
            saw_removed |= v["checkpoint_diff"]["removed_buckets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b == removed);
        } else if l.starts_with(br#"{"checkpoint_complete""#) {
            return Ok((puts, saw_removed));
        }
    }
}

fn moves(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) -> Result<()> {
    let db = TestDb::new("bench_streams_move");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE lists (id text PRIMARY KEY, owner_id text NOT NULL, name text NOT NULL);
         CREATE TABLE todos (id int PRIMARY KEY, list_id text NOT NULL, title text NOT NULL);
         CREATE INDEX ON lists (owner_id);
         CREATE INDEX ON todos (list_id);
         INSERT INTO lists VALUES ('big', 'alice', 'big list'), ('a', 'alice', 'a'), ('b', 'bob', 'b');
         INSERT INTO todos SELECT g, 'big', 'todo ' || g FROM generate_series(1, {MOVED}) g;
         INSERT INTO todos SELECT {MOVED} + g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, 'small'
           FROM generate_series(1, 100) g;"
    ))?;
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"config:\n  edition: 3\nstreams:\n  mine:\n    auto_subscribe: true\n    query: SELECT * FROM todos WHERE list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())\n  named:\n    auto_subscribe: true\n    query: SELECT todos.*, lists.name AS list_name FROM todos JOIN lists ON todos.list_id = lists.id WHERE lists.owner_id = auth.user_id()\n"],
    )?;
    let relay = RelayProc::start(&db)?;
    let addr = relay.addr;
    let none = serde_json::json!([]);
    let (mut alice, mut bob) = rt.block_on(async {
        let mut a = Stream::open_with(addr, "alice", None, body(none.clone())).await?;
        let (n, _) = next_complete(&mut a, "").await?;
        if n < 2 * MOVED as u64 {
            bail!("alice's first checkpoint has {n} rows");
        }
        let mut b = Stream::open_with(addr, "bob", None, body(none.clone())).await?;
        next_complete(&mut b, "").await?;
        Ok::<_, anyhow::Error>((a, b))
    })?;

    // The subquery's table: the big list moves from alice to bob.
    eprintln!("bench streams: a subquery-table write moves {MOVED} rows");
    let t = Instant::now();
    c.batch_execute("UPDATE lists SET owner_id = 'bob' WHERE id = 'big'")?;
    let (got, gained, lost) = rt.block_on(async {
        let bob_done = async {
            let (n, _) = next_complete(&mut bob, "").await?;
            Ok::<_, anyhow::Error>((n, t.elapsed()))
        };
        let alice_done = async {
            let (_, removed) = next_complete(&mut alice, "mine|0[\"big\"]").await?;
            Ok::<_, anyhow::Error>((removed, t.elapsed()))
        };
        let (b, a) = tokio::join!(bob_done, alice_done);
        let ((n, gained), (removed, lost)) = (b?, a?);
        if !removed {
            bail!("alice's next checkpoint did not remove the moved bucket");
        }
        Ok::<_, anyhow::Error>((n, gained, lost))
    })?;
    if got < 2 * MOVED as u64 {
        bail!(
            "bob's checkpoint after the move brought {got} rows, not {}",
            2 * MOVED
        );
    }
    rows.push(Row {
        name: format!("streams: a subquery-table write moves {MOVED} rows (two streams) to another user: commit → their checkpoint complete"),
        value: format!(
            "{:.0} ms ({got} rows downloaded; the old owner's checkpoint without them after {:.0} ms)",
            ms(gained),
            ms(lost)
        ),
        goal: "≤ 1 s".into(),
        ratio: ratio(1000.0, ms(gained), false),
    });

    // The joined table: renaming the list re-PUTs its todos in `named`.
    eprintln!("bench streams: renaming a list re-PUTs {MOVED} joined rows");
    let t = Instant::now();
    c.batch_execute("UPDATE lists SET name = 'renamed' WHERE id = 'big'")?;
    let (n, _) = rt.block_on(next_complete(&mut bob, ""))?;
    let renamed = t.elapsed();
    if n != MOVED as u64 {
        bail!("the rename re-PUT {n} rows, not {MOVED}");
    }
    rows.push(Row {
        name: format!("streams: renaming a list re-PUTs its {MOVED} todos (a JOINed column): commit → checkpoint complete"),
        value: format!("{:.0} ms", ms(renamed)),
        goal: "≤ 1 s".into(),
        ratio: ratio(1000.0, ms(renamed), false),
    });
    Ok(())
}

fn fan_out(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) -> Result<()> {
    let db = TestDb::new("bench_streams_fan");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE boards (id int PRIMARY KEY, owner_id text NOT NULL);
         CREATE TABLE posts (id int PRIMARY KEY, board_id int NOT NULL, body text NOT NULL);
         CREATE TABLE news (id int PRIMARY KEY, body text NOT NULL);
         CREATE INDEX ON boards (owner_id);
         INSERT INTO boards SELECT g, 'user' || g FROM generate_series(1, {CLIENTS}) g;
         INSERT INTO posts SELECT g, 1 + g % {CLIENTS}, 'post ' || g FROM generate_series(1, {}) g;
         INSERT INTO news VALUES (0, 'seed');",
        CLIENTS * 5
    ))?;
    // Each client subscribes to its own board (a parameter checked against
    // the boards it owns); the stream's second query is one bucket they all get.
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"config:\n  edition: 3\nstreams:\n  board:\n    queries:\n      - SELECT * FROM posts WHERE board_id = subscription.parameter('board') AND board_id IN (SELECT id FROM boards WHERE owner_id = auth.user_id())\n      - SELECT * FROM news\n"],
    )?;
    let relay = RelayProc::start(&db)?;
    let addr = relay.addr;
    eprintln!("bench streams: {CLIENTS} clients with distinct subscriptions");
    let mut streams: Vec<Stream> = rt.block_on(async move {
        let mut out = Vec::with_capacity(CLIENTS);
        let mut set = tokio::task::JoinSet::new();
        for i in 1..=CLIENTS {
            set.spawn(async move {
                let b = body(serde_json::json!([
                    {"stream": "board", "parameters": {"board": i}, "override_priority": null}
                ]));
                let mut s = Stream::open_with(addr, &format!("user{i}"), None, b).await?;
                let (n, _) = next_complete(&mut s, "").await?;
                if n != 6 {
                    bail!(
                        "client {i}: first checkpoint has {n} rows, not its 5 posts and the news"
                    );
                }
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
    // More writes than one (`OUTPOST_BENCH_FANOUT_WRITES`, for profiling
    // the relay) pool their latencies; the default is the goal's one write.
    let writes: usize = crate::env_num("OUTPOST_BENCH_FANOUT_WRITES", 1usize).max(1);
    let mut lat: Vec<Duration> = Vec::with_capacity(CLIENTS * writes);
    eprintln!("bench streams: {CLIENTS} clients connected; {writes} write(s)");
    if writes > 1 {
        // Time to attach a profiler to the relay (its pid is printed).
        eprintln!("bench streams: relay pid {}", relay.pid());
        std::thread::sleep(Duration::from_secs(2));
    }
    for w in 0..writes {
        let (d, back) = time_fan_out(rt, std::mem::take(&mut streams), false, || {
            c.batch_execute(&format!(
                "INSERT INTO news VALUES ({}, 'to everyone')",
                w + 1
            ))?;
            Ok(())
        })?;
        lat.extend(d);
        streams = back;
    }
    lat.sort();
    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        *lat.last().unwrap(),
    );
    let m = relay.metrics()?;
    rows.push(Row {
        name: format!("streams: one write reaches {CLIENTS} clients with distinct parameterized subscriptions (p99; p50 / max)"),
        value: format!(
            "{:.0} ms ({:.0} ms / {:.0} ms; {} shared change reads, {} op pages read, {} per-stream sync_checkpoint)",
            ms(p99),
            ms(p50),
            ms(max),
            m("outpost_relay_changes_queries_total"),
            m("outpost_relay_ops_queries_total"),
            m("outpost_relay_sync_checkpoints_total"),
        ),
        goal: "p99 ≤ 100 ms".into(),
        ratio: ratio(100.0, ms(p99), false),
    });
    drop(streams);
    Ok(())
}
