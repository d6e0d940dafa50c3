//! Read scale-out on a hot standby, with streaming replication set up here:
//! a primary (`initdb`) and a standby made from it with `pg_basebackup -R`
//! (see `outpost_tests::replication`), a relay with `--replica-url` at the standby and
//! `--database-url` listing both servers (`target_session_attrs=read-write`,
//! so it follows a promotion), and clients syncing. `make test-faults` runs
//! it through `scripts/test-replicas.sh` (ports `OUTPOST_REPLICA_PORTS`,
//! binaries `OUTPOST_REPLICA_PG_BINDIR`); plain `cargo test` skips it.
//!
//! 1. The extension's read functions run on the read-only standby.
//! 2. While clients sync, `pg_stat_statements` shows the sync path's queries
//!    on the standby and none on the primary, which ticks.
//! 3. Replay paused: no client completes, and no stream is told of, a
//!    checkpoint the standby has not replayed, nor of a write checkpoint
//!    made meanwhile; past `OUTPOST_REPLICA_MAX_LAG` the standby leaves the
//!    rotation and clients catch up from the primary; resumed, it comes back.
//! 4. Standby stopped mid-stream under writes: clients continue and
//!    converge; started again, it is back in rotation.
//! 5. Primary stopped, standby promoted: the relay follows (ticks and writes
//!    on the promoted server) and clients converge.

mod faults_replica_support;
mod faults_support;

use faults_replica_support::{
    calls, checkpoint, converge, in_rotation, last_checkpoint, removed, series, start_client,
    write_rows, READS, WAIT,
};
use faults_support::wait_for;
use outpost_tests::relay::Relay;
use outpost_tests::replication::{ports, Node};
use outpost_tests::TestDb;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_LAG_SECS: f64 = 4.0;

const SCHEMA: &str = "
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE TABLE items (id int PRIMARY KEY, owner text NOT NULL, v int NOT NULL);
INSERT INTO items SELECT g, 'u' || (g % 2 + 1), 0 FROM generate_series(1, 400) g;";

const RULES: &str = "
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, v FROM items WHERE owner = bucket.owner
";

#[test]
#[ignore = "makes its own replication clusters: make test-faults (scripts/test-replicas.sh)"]
fn relay_reads_from_a_hot_standby_and_survives_its_faults() {
    let ports = ports();
    assert!(ports.len() >= 2, "OUTPOST_REPLICA_PORTS needs two ports");
    let primary = Node::primary(ports[0]);
    // TestDb makes its databases on the primary.
    std::env::set_var("OUTPOST_TEST_DATABASE_URL", primary.url("postgres"));
    let db = TestDb::with_rules("replica", SCHEMA, RULES);
    let standby = Node::standby(&primary, ports[1]);
    let mut p = primary.connect(&db.name);
    let cp0 = checkpoint(&mut p);
    let mut s = standby.wait_ready(&db.name, "SELECT outpost.checkpoint()", WAIT);

    // 1. The read functions on a read-only standby: no writes, temp tables
    //    or sequences (any of them fails there).
    let recovering: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(recovering, "the standby is in recovery");
    wait_for("the standby to replay the rules", WAIT, || {
        (checkpoint(&mut s) >= cp0).then_some(())
    });
    let claims = json!({"sub": "u1"});
    let state: Value = s
        .query_one(
            "SELECT outpost.sync_checkpoint($1, '{}'::jsonb, 'c1')",
            &[&claims],
        )
        .unwrap()
        .get(0);
    assert_eq!(state["buckets"][0]["bucket"], "mine[\"u1\"]", "{state}");
    let ops: i64 = s
        .query_one(
            "SELECT count(*) FROM outpost.bucket_ops(ARRAY['mine[\"u1\"]'], ARRAY[0::bigint], outpost.checkpoint(), 1000)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ops, 200);
    s.query_one("SELECT count(*) FROM outpost.changes_since(0)", &[])
        .unwrap();
    s.query_one("SELECT outpost.client_schema()", &[]).unwrap();
    s.query_one(
        "SELECT count(*) FROM outpost.user_buckets($1, '{}'::jsonb)",
        &[&claims],
    )
    .unwrap();
    let err = s
        .batch_execute("CREATE TEMP TABLE t (x int)")
        .expect_err("a standby refuses temp tables");
    assert!(err.to_string().contains("read-only") || format!("{err:?}").contains("25006"));

    // 2. A relay reading from the standby; the primary only ticks.
    let primary_and_standby = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={} target_session_attrs=read-write",
        primary.port, standby.port, db.name
    );
    let standby_url = standby.url(&db.name);
    let relay = Relay::start_with(&db, |a| {
        a.database_url = primary_and_standby.clone();
        a.replica_url = vec![standby_url.clone()];
        a.replica_max_lag = MAX_LAG_SECS;
    });
    wait_for("the standby in rotation", WAIT, || {
        in_rotation(&relay, &standby).then_some(())
    });
    let before_p: Vec<i64> = READS.iter().map(|q| calls(&mut p, q)).collect();
    let before_s: Vec<i64> = READS.iter().map(|q| calls(&mut s, q)).collect();
    let ticks_before = calls(&mut p, "%outpost.tick()%");
    let rt = outpost_tests::client::runtime();
    let clients = vec![
        start_client(&rt, &relay, "u1"),
        start_client(&rt, &relay, "u2"),
    ];
    converge(&rt, &clients, &mut p, "first sync through the standby");
    let waits0 = (
        series(&relay, "outpost_relay_replica_wait_seconds_count"),
        series(&relay, "outpost_relay_replica_wait_seconds_sum"),
    );
    let mut commit_to_clients = Vec::new();
    for round in 0..10 {
        let t = Instant::now();
        write_rows(&mut p, 1000 + round * 10, 10);
        converge(&rt, &clients, &mut p, "writes through the standby");
        commit_to_clients.push(t.elapsed());
    }
    commit_to_clients.sort();
    let steady_wait = (series(&relay, "outpost_relay_replica_wait_seconds_sum") - waits0.1)
        / (series(&relay, "outpost_relay_replica_wait_seconds_count") - waits0.0).max(1.0);
    let after_p: Vec<i64> = READS.iter().map(|q| calls(&mut p, q)).collect();
    let after_s: Vec<i64> = READS.iter().map(|q| calls(&mut s, q)).collect();
    assert_eq!(
        after_p, before_p,
        "sync-path reads ran on the primary ({READS:?})"
    );
    assert!(
        after_s[0] > before_s[0] && after_s[1] > before_s[1] && after_s[3] > before_s[3],
        "sync_checkpoint, bucket_ops and client_schema ran on the standby: {before_s:?} -> {after_s:?}"
    );
    assert!(
        calls(&mut p, "%outpost.tick()%") > ticks_before,
        "the relay ticks on the primary"
    );
    assert_eq!(
        series(&relay, "outpost_relay_replica_fallback_reads_total"),
        0.0
    );
    let reads_on_standby: i64 = after_s.iter().zip(&before_s).map(|(a, b)| a - b).sum();

    // 3. Replay paused. A raw stream of u1 holds a write checkpoint request.
    let mut stream = relay.stream(
        &relay.token("u1", 3600),
        &json!({"buckets": [], "include_checksum": true, "raw_data": true, "client_id": "ryw"}),
    );
    stream.until("checkpoint_complete");
    // Lines from here on, read by a thread so the test can wait on them with
    // a timeout (a quiet stream sends only keepalives, every 20 s).
    let (line_tx, lines) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        while let Some(line) = stream.next_line(Duration::from_secs(3600)) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    s.batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    wait_for("replay paused", WAIT, || {
        let st: String = s
            .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
            .unwrap()
            .get(0);
        (st == "paused").then_some(())
    });
    let frozen = checkpoint(&mut s);
    write_rows(&mut p, 2000, 10);
    let wc = relay
        .request(
            "GET",
            "/write-checkpoint2.json?client_id=ryw",
            Some(&relay.token("u1", 3600)),
            None,
        )
        .json();
    let wc: i64 = wc["data"]["write_checkpoint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let paused_at = Instant::now();
    let target: i64 = p.query_one("SELECT outpost.tick()", &[]).unwrap().get(0);
    assert!(target > frozen);
    // For most of the lag bound: nothing past what the standby shows.
    let mut seen = Vec::new();
    while paused_at.elapsed() < Duration::from_secs_f64(MAX_LAG_SECS / 2.0) {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            for kind in ["checkpoint", "checkpoint_diff", "checkpoint_complete"] {
                if let Some(cp) = line[kind]["last_op_id"].as_str() {
                    let cp: i64 = cp.parse().unwrap();
                    assert!(
                        cp <= frozen,
                        "stream told of {cp} while the standby shows {frozen}: {line}"
                    );
                }
                if let Some(w) = line[kind]["write_checkpoint"].as_str() {
                    let w: i64 = w.parse().unwrap();
                    assert!(
                        w < wc,
                        "write checkpoint {w} announced before the standby replayed it: {line}"
                    );
                }
            }
            seen.push(line);
        }
        for c in &clients {
            let cp = last_checkpoint(&c.db);
            assert!(
                cp <= frozen,
                "{} completed {cp}, the standby shows {frozen}",
                c.user
            );
        }
    }
    assert_eq!(checkpoint(&mut s), frozen, "replay stayed paused");
    // Past the bound the standby leaves the rotation; the primary serves.
    wait_for("the lagging standby out of rotation", WAIT, || {
        (removed(&relay, &standby, "lagging") >= 1.0).then_some(())
    });
    let out_after = paused_at.elapsed();
    converge(&rt, &clients, &mut p, "while the standby lags");
    let deadline = Instant::now() + WAIT;
    let ryw = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the write checkpoint on the stream");
        let w = ["checkpoint", "checkpoint_diff"]
            .iter()
            .find_map(|k| line[*k]["write_checkpoint"].as_str())
            .map(|w| w.parse::<i64>().unwrap());
        if w.is_some_and(|w| w >= wc) {
            break line;
        }
    };
    assert!(series(&relay, "outpost_relay_replica_fallback_reads_total") > 0.0);
    s.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    wait_for("the standby back in rotation", WAIT, || {
        in_rotation(&relay, &standby).then_some(())
    });
    converge(&rt, &clients, &mut p, "after replay resumed");
    drop(lines);

    // 4. The standby stopped mid-stream under writes.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicI64::new(0));
    let writer = {
        let (stop, committed, url) = (stop.clone(), committed.clone(), primary.url(&db.name));
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut id = 100_000;
            while !stop.load(Ordering::SeqCst) {
                write_rows(&mut c, id, 2);
                id += 2;
                committed.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_for("writes flowing", WAIT, || {
        (committed.load(Ordering::SeqCst) >= 20).then_some(())
    });
    drop(s);
    standby.stop("immediate");
    wait_for("the stopped standby out of rotation", WAIT, || {
        (removed(&relay, &standby, "down") >= 1.0).then_some(())
    });
    let at_stop = committed.load(Ordering::SeqCst);
    wait_for("writes after the stop", WAIT, || {
        (committed.load(Ordering::SeqCst) >= at_stop + 20).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    converge(&rt, &clients, &mut p, "with the standby down");
    standby.start();
    wait_for("the restarted standby in rotation", WAIT, || {
        in_rotation(&relay, &standby).then_some(())
    });
    write_rows(&mut p, 300_000, 10);
    converge(&rt, &clients, &mut p, "with the standby back");

    // 5. Failover: the primary goes, the standby is promoted.
    drop(p);
    primary.stop("immediate");
    standby.promote();
    let mut np = standby.wait_ready(&db.name, "SELECT 1", WAIT);
    let promoted: bool = np
        .query_one("SELECT NOT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(promoted);
    write_rows(&mut np, 400_000, 10);
    let followed = Instant::now();
    converge(&rt, &clients, &mut np, "after the standby was promoted");
    let follow_time = followed.elapsed();

    for c in &clients {
        let applied = c.applied.lock().unwrap().clone();
        assert!(
            applied.windows(2).all(|w| w[0] < w[1]),
            "{}'s applied checkpoints went backwards or repeated: {applied:?}",
            c.user
        );
    }
    let wait_count = series(&relay, "outpost_relay_replica_wait_seconds_count");
    let wait_sum = series(&relay, "outpost_relay_replica_wait_seconds_sum");
    eprintln!(
        "replicas: steady state: standby replay wait mean {:.2} ms per checkpoint, write -> tick -> both clients applied p50 {:?}; \
         {reads_on_standby} sync-path reads on the standby, none on the primary; \
         replay paused: nothing past checkpoint {frozen} for {:.1} s, out of rotation (lagging) after {out_after:?}, \
         write checkpoint {wc} reached the stream from the primary ({}); standby stopped: clients converged, back in rotation after restart; \
         promoted: clients converged {follow_time:?} after the first write there; \
         replica wait over the whole test (pauses included): {wait_count} checkpoints, mean {:.2} ms",
        steady_wait * 1000.0,
        commit_to_clients[commit_to_clients.len() / 2],
        MAX_LAG_SECS / 2.0,
        ryw,
        if wait_count > 0.0 { wait_sum / wait_count * 1000.0 } else { 0.0 },
    );
    for c in clients {
        c.task.abort();
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", c.path.display()));
        }
    }
    let _ = seen;
}
