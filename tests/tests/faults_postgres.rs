//! Postgres restarted under a running relay and client, on a DEDICATED
//! cluster so the restarts never disturb other tests. `make test-faults`
//! (scripts/test-faults.sh) creates it (15/faults on 127.0.0.1:5434), points
//! `OUTPOST_TEST_DATABASE_URL` at it, sets `OUTPOST_FAULTS_CLUSTER=15/faults`
//! and runs these `#[ignore]`d tests; plain `cargo test` skips them.
//!
//! - restart while a writer commits and the client streams: `/health` goes
//!   503, then 200 once the relay's pool and LISTEN connection are back;
//! - restart (immediate: a crash) while a large tick runs: the tick rolls
//!   back and is redone.
//!
//! After each: op ids unique and increasing per bucket, every bucket's
//! checksum and count equal to its ops', the checkpoints the client applied
//! strictly increasing, and the client's rows equal to Postgres'.

mod faults_support;

use faults_support::{try_get, wait_for};
use outpost_client::Credentials;
use outpost_tests::client::{
    open_from_relay, reached_checkpoint, record_checkpoints, remove_db_file, spawn_sync,
};
use outpost_tests::relay::Relay;
use outpost_tests::{fold_bucket, ops, tick, TestDb};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);

fn cluster() -> (String, String) {
    let c = std::env::var("OUTPOST_FAULTS_CLUSTER")
        .expect("OUTPOST_FAULTS_CLUSTER (e.g. 15/faults) is not set: run `make test-faults`");
    let (v, n) = c
        .split_once('/')
        .expect("OUTPOST_FAULTS_CLUSTER=VERSION/NAME");
    (v.to_string(), n.to_string())
}

fn pg_ctl(action: &str, mode: Option<&str>) {
    let (v, n) = cluster();
    let mut cmd = Command::new("pg_ctlcluster");
    cmd.args([&v, &n, action]);
    if let Some(m) = mode {
        cmd.args(["-m", m]);
    }
    let st = cmd.status().expect("run pg_ctlcluster");
    assert!(st.success(), "pg_ctlcluster {v} {n} {action} failed");
}

/// Stops the cluster, sees the relay report 503, starts it, sees 200 again.
/// Returns (time at 503, time back at 200) measured from the stop.
fn restart(relay: &Relay, mode: &str) -> (Duration, Duration) {
    let t = Instant::now();
    pg_ctl("stop", Some(mode));
    wait_for("/health 503 while Postgres is down", WAIT, || {
        (try_get(relay.addr, "/health")?.0 == 503).then_some(())
    });
    let down = t.elapsed();
    pg_ctl("start", None);
    wait_for("/health 200 after Postgres is back", WAIT, || {
        (try_get(relay.addr, "/health")?.0 == 200).then_some(())
    });
    (down, t.elapsed())
}

fn connect_retry(db: &TestDb) -> postgres::Client {
    wait_for("a Postgres connection", WAIT, || {
        postgres::Client::connect(&db.url, postgres::NoTls).ok()
    })
}

/// The op log's invariants (see the module docs); returns the op count.
fn check_op_log(c: &mut postgres::Client) -> i64 {
    let dup: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT op_id FROM outpost.ops GROUP BY op_id HAVING count(*) > 1) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dup, 0, "op ids used twice");
    let bad: Option<String> = c
        .query_one(
            "SELECT string_agg(s.bucket, ', ') FROM outpost.bucket_state s
              WHERE s.checksum <> (SELECT coalesce(sum(o.checksum), 0) % 4294967296 FROM outpost.ops o WHERE o.bucket = s.bucket)
                 OR s.op_count - coalesce((SELECT removed FROM outpost.compacted x WHERE x.bucket = s.bucket), 0)
                    <> (SELECT count(*) FROM outpost.ops o WHERE o.bucket = s.bucket)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(bad, None, "bucket checksums/counts differ from their ops");
    let buckets: Vec<String> = c
        .query("SELECT DISTINCT bucket FROM outpost.ops", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut n = 0;
    for b in buckets {
        let o = ops(c, &b);
        n += o.len() as i64;
        fold_bucket(&o); // asserts increasing op ids and every op's checksum
    }
    let last: i64 = c
        .query_one("SELECT coalesce(max(op_id), 0) FROM outpost.ops", &[])
        .unwrap()
        .get(0);
    assert_eq!(tick(c), last, "the checkpoint is not the last op id");
    n
}

#[test]
#[ignore = "needs the dedicated cluster: make test-faults"]
fn postgres_restarts_during_streaming_and_during_a_tick() {
    cluster();
    let db = TestDb::new("faults_pg");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, owner text NOT NULL, v int NOT NULL);
         INSERT INTO items SELECT g, 'u' || (g % 2), 0 FROM generate_series(1, 2000) g;",
    )
    .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, v FROM items WHERE owner = bucket.owner
"],
    )
    .unwrap();
    let relay = Relay::start(&db);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = std::env::temp_dir().join(format!("outpost-faults-pg-{}.db", std::process::id()));
    remove_db_file(&path);
    let creds = Credentials {
        endpoint: relay.url.clone(),
        token: relay.token("u1", 3600),
    };
    let client = open_from_relay(&rt, &path, &creds);
    let task = spawn_sync(&rt, &client, creds, Duration::from_millis(500));
    let applied = record_checkpoints(&rt, &client);
    let converge = |c: &mut postgres::Client, what: &str| {
        let cp = tick(c);
        let ok = reached_checkpoint(&rt, &client, cp, WAIT);
        assert!(
            ok,
            "{what}: client never reached checkpoint {cp}; status {:?}",
            *client.status().borrow()
        );
        let mut mine: Vec<(i64, i64)> = client
            .query("SELECT id, v FROM items", &[])
            .unwrap()
            .iter()
            .map(|r| {
                let n = |v: &serde_json::Value| {
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .unwrap()
                };
                (n(&r["id"]), n(&r["v"]))
            })
            .collect();
        mine.sort();
        let pg: Vec<(i64, i64)> = c
            .query(
                "SELECT id::bigint, v::bigint FROM items WHERE owner = 'u1' ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(mine, pg, "{what}: client rows differ from Postgres");
        pg.len()
    };
    converge(&mut c, "initial sync");

    // 1. Restart while a writer commits and the client streams.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicI64::new(0));
    let writer = {
        let (stop, committed, url) = (stop.clone(), committed.clone(), db.url.clone());
        std::thread::spawn(move || {
            let mut conn: Option<postgres::Client> = None;
            let mut id = 100_000;
            let mut failures = 0;
            while !stop.load(Ordering::SeqCst) {
                if conn.is_none() {
                    conn = postgres::Client::connect(&url, postgres::NoTls).ok();
                }
                let r = conn.as_mut().map(|c| {
                    c.execute(
                        "INSERT INTO items VALUES ($1, 'u1', $1 % 7) ON CONFLICT (id) DO NOTHING",
                        &[&id],
                    )
                });
                match r {
                    Some(Ok(_)) => {
                        committed.fetch_add(1, Ordering::SeqCst);
                        id += 1;
                    }
                    _ => {
                        failures += 1;
                        conn = None;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            failures
        })
    };
    wait_for("the writer's first 100 commits", WAIT, || {
        (committed.load(Ordering::SeqCst) >= 100).then_some(())
    });
    let (down1, up1) = restart(&relay, "fast");
    let at_restart = committed.load(Ordering::SeqCst);
    wait_for("100 commits after the restart", WAIT, || {
        (committed.load(Ordering::SeqCst) >= at_restart + 100).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let writer_failures = writer.join().unwrap();
    let mut c = connect_retry(&db);
    let rows1 = converge(&mut c, "after a restart during streaming");
    let ops1 = check_op_log(&mut c);

    // 2. Crash (immediate stop) while a large tick runs.
    c.batch_execute(
        "INSERT INTO items SELECT g, 'u' || (g % 2), 1 FROM generate_series(200001, 400000) g",
    )
    .unwrap();
    wait_for("the relay's tick to be running", WAIT, || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query ILIKE '%outpost.tick%' AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    });
    let before: i64 = c
        .query_one("SELECT coalesce(max(op_id), 0) FROM outpost.ops", &[])
        .unwrap()
        .get(0);
    drop(c);
    let (down2, up2) = restart(&relay, "immediate");
    let mut c = connect_retry(&db);
    let rows2 = converge(&mut c, "after a crash during a tick");
    let ops2 = check_op_log(&mut c);
    assert!(
        ops2 > ops1,
        "the interrupted tick's changes never materialized"
    );
    let pending: i64 = c
        .query_one("SELECT pending_changes FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "changes left unmaterialized after recovery");

    let applied = applied.lock().unwrap().clone();
    assert!(
        applied.windows(2).all(|w| w[0] < w[1]),
        "the client's applied checkpoints went backwards or repeated: {applied:?}"
    );
    task.abort();
    remove_db_file(&path);
    eprintln!(
        "faults: Postgres restarted twice (fast stop during streaming: 503 after {down1:?}, 200 after {up1:?}, writer retried {writer_failures} times; immediate stop during a tick past op {before}: 503 after {down2:?}, 200 after {up2:?}); \
         client converged to {rows1} then {rows2} rows through {} checkpoints, strictly increasing; {ops2} ops checked",
        applied.len()
    );
}
