//! Process deaths and network cuts, with real processes where the fault is a
//! process death: the `outpost-relay` and `outpost` binaries are spawned and
//! killed with SIGKILL by PID.
//!
//! - relay killed mid-stream (3 times): a library client reconnects to the
//!   restarted relay and converges to Postgres' rows;
//! - `outpost sync` killed at many points of downloading and applying: the
//!   SQLite file is always exactly at the old or the new checkpoint, and the
//!   upload queue (`ps_crud`) is unchanged;
//! - the connection cut mid-line by a proxy: the client reports an error,
//!   keeps its last checkpoint, reconnects and converges.
//!
//! Runs on the main test cluster (`OUTPOST_TEST_DATABASE_URL`); Postgres
//! restarts are in `faults_postgres.rs` (dedicated cluster, `make test-faults`).

mod faults_support;

use faults_support::{binary, free_addr, spawn_relay, wait_for, CutProxy, Proc, TempDb};
use outpost_client::{Credentials, Database, SyncStatus};
use outpost_tests::client::{open_from_relay, spawn_sync, SyncTask};
use outpost_tests::relay::Relay;
use outpost_tests::{tick, TestDb};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// `items` with `n` rows of user u1 (each ~200 bytes), and a bucket per owner.
fn setup(label: &str, n: i32) -> TestDb {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, owner text NOT NULL, v int NOT NULL, pad text);
         INSERT INTO items SELECT g, 'u1', 0, repeat('p', 150) FROM generate_series(1, {n}) g;"
    ))
    .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, v, pad FROM items WHERE owner = bucket.owner
"],
    )
    .unwrap();
    db
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Postgres' rows of u1 as (id, v), sorted.
fn pg_rows(c: &mut postgres::Client) -> Vec<(i64, i64)> {
    c.query(
        "SELECT id::bigint, v::bigint FROM items WHERE owner = 'u1' ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The client's rows as (id, v), sorted.
fn client_rows(db: &Database) -> Vec<(i64, i64)> {
    db.query("SELECT id, v FROM items ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (int(&r["id"]), int(&r["v"])))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// An integer column, whether the view gives it as a number or as text.
fn int(v: &serde_json::Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// A library client syncing `path` from `endpoint`, with its status history.
struct LibClient {
    db: Database,
    task: SyncTask,
    errors: Arc<Mutex<Vec<String>>>,
}

impl LibClient {
    fn start(rt: &tokio::runtime::Runtime, path: &std::path::Path, creds: Credentials) -> Self {
        let db = open_from_relay(rt, path, &creds);
        let task = spawn_sync(rt, &db, creds, Duration::from_millis(300));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (mut rx, e) = (db.status(), errors.clone());
        rt.spawn(async move {
            while rx.changed().await.is_ok() {
                if let Some(err) = rx.borrow_and_update().last_error.clone() {
                    let mut e = e.lock().unwrap();
                    if e.last() != Some(&err) {
                        e.push(err);
                    }
                }
            }
        });
        LibClient { db, task, errors }
    }

    fn wait(
        &self,
        rt: &tokio::runtime::Runtime,
        what: &str,
        pred: impl FnMut(&SyncStatus) -> bool,
    ) -> SyncStatus {
        let mut rx = self.db.status();
        let mut pred = pred;
        let got = rt.block_on(async {
            tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s)))
                .await
                .map(|r| r.map(|s| s.clone()))
        });
        match got {
            Ok(Ok(s)) => s,
            _ => panic!(
                "timed out waiting for {what}; status {:?}, task finished: {}",
                *self.db.status().borrow(),
                self.task.is_finished()
            ),
        }
    }

    /// Waits until the client applied Postgres' latest checkpoint and holds its rows.
    fn converge(&self, rt: &tokio::runtime::Runtime, c: &mut postgres::Client) {
        let cp = tick(c).to_string();
        self.wait(rt, &format!("checkpoint {cp}"), |s| {
            s.last_checkpoint
                .as_deref()
                .and_then(|x| x.parse::<i64>().ok())
                >= cp.parse::<i64>().ok()
        });
        assert_eq!(
            client_rows(&self.db),
            pg_rows(c),
            "client rows differ from Postgres at checkpoint {cp}"
        );
    }
}

impl Drop for LibClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[test]
fn relay_killed_mid_stream_client_reconnects_and_converges() {
    let db = setup("faults_relay_kill", 20_000);
    let mut c = db.connect();
    let secret = "faults-relay-kill-secret-0123456789";
    let addr = free_addr();
    let log = std::env::temp_dir().join(format!("outpost-faults-relay-{}.log", std::process::id()));
    let mut relay = spawn_relay(&db.url, addr, secret, &log);
    let rt = runtime();
    let file = TempDb::new("relaykill");
    let creds = Credentials {
        endpoint: format!("http://{addr}"),
        token: outpost_relay::auth::dev_token(secret, "u1", 600, None).unwrap(),
    };
    let client = LibClient::start(&rt, &file.0, creds);
    let (mut kills, mut mid_stream) = (0, 0);
    for round in 1..=3i32 {
        // Kill while the client is between a checkpoint line and its completion.
        let s = client.wait(&rt, "a download in progress", |s| {
            s.downloading && s.progress.is_some_and(|p| p.downloaded > 0)
        });
        relay.kill9();
        kills += 1;
        if s.progress.is_some_and(|p| p.downloaded < p.total) {
            mid_stream += 1;
        }
        client.wait(&rt, "the client to notice the dead relay", |s| !s.connected);
        // Writes while no relay runs: a large diff for the next stream.
        c.execute("UPDATE items SET v = $1 WHERE id % 3 <> 0", &[&round])
            .unwrap();
        c.execute(
            "INSERT INTO items SELECT g, 'u1', $1, 'new' FROM generate_series(100000 + $1 * 100, 100000 + $1 * 100 + 49) g",
            &[&round],
        )
        .unwrap();
        c.execute("DELETE FROM items WHERE id % 97 = $1", &[&round])
            .unwrap();
        relay = spawn_relay(&db.url, addr, secret, &log);
    }
    client.converge(&rt, &mut c);
    let errors = client.errors.lock().unwrap().len();
    assert!(errors >= 1, "the client never reported the dead relay");
    assert!(mid_stream >= 1, "no kill landed mid-download");
    eprintln!(
        "faults: relay killed {kills} times ({mid_stream} mid-download); client converged to {} rows ({errors} errors reported)",
        pg_rows(&mut c).len()
    );
    drop(relay);
    let _ = std::fs::remove_file(&log);
}

/// What the client's SQLite file holds: (row count, min v, max v) of the
/// synced rows (id < 900000), the upload queue, and integrity_check.
type Inspected = ((i64, i64, i64), Vec<(i64, String)>, String);

fn inspect(path: &std::path::Path) -> Inspected {
    let conn = rusqlite::Connection::open(path).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let rows = conn
        .query_row(
            "SELECT count(*), coalesce(min(v), -1), coalesce(max(v), -1) FROM items WHERE CAST(id AS INTEGER) < 900000",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT id, coalesce(data, '') || '/' || coalesce(tx_id, -1) FROM ps_crud ORDER BY id",
        )
        .unwrap();
    let crud = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    (rows, crud, ok)
}

/// `outpost sync` (live, not `--once`) as a child process.
fn spawn_cli_sync(args: &[&str], stderr: Stdio) -> Proc {
    Proc {
        child: Command::new(binary("outpost"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn outpost sync"),
        name: "outpost sync".into(),
    }
}

fn outpost(args: &[&str]) -> std::process::Output {
    Command::new(binary("outpost"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run outpost")
}

#[test]
fn client_killed_mid_apply_is_at_the_old_or_the_new_checkpoint() {
    const N: i64 = 15_000;
    let db = setup("faults_client_kill", N as i32);
    let mut c = db.connect();
    let relay = Relay::start(&db);
    let token = relay.token("u1", 600);
    let file = TempDb::new("clientkill");
    let path = file.0.to_str().unwrap().to_string();
    let sync_args = [
        "sync",
        "--db",
        &path,
        "--endpoint",
        &relay.url,
        "--token",
        &token,
    ];

    // Initial sync, then one timed incremental sync to place the kills.
    let out = outpost(&[&sync_args[..], &["--once"]].concat());
    assert!(
        out.status.success(),
        "initial sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut version = 0i64;
    let bump = |c: &mut postgres::Client, v: i64| {
        c.execute("UPDATE items SET v = $1", &[&(v as i32)])
            .unwrap();
        tick(c);
    };
    version += 1;
    bump(&mut c, version);
    // Timed like the kills below: spawn `outpost sync` and wait for its
    // "synced checkpoint" line (printed right after the apply commits).
    let t = Instant::now();
    let mut p = spawn_cli_sync(&sync_args, Stdio::piped());
    let stderr = p.child.stderr.take().unwrap();
    // Read on a thread so that a client that never applies fails the test
    // (with what it printed) instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line.unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("outpost sync applied no checkpoint within 180 s; it printed: {seen:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("outpost sync ended before applying: {seen:?}")
            }
        };
        if line.starts_with("synced checkpoint") {
            break;
        }
        seen.push(line);
    }
    let full = t.elapsed();
    p.kill9();
    let out = outpost(&["status", "--db", &path]);
    let got = inspect(&file.0).0;
    if got != (N, version, version) {
        let conn = rusqlite::Connection::open(&file.0).unwrap();
        let oplog: i64 = conn
            .query_row("SELECT count(*) FROM ps_oplog", [], |r| r.get(0))
            .unwrap();
        let data: i64 = conn
            .query_row("SELECT count(*) FROM ps_data__items", [], |r| r.get(0))
            .unwrap();
        panic!(
            "after an incremental --once sync: (rows, min v, max v) = {got:?}, expected {:?}; ps_oplog {oplog}, ps_data__items {data}; status {}; stdout {}",
            (N, version, version),
            String::from_utf8_lossy(&outpost(&["status", "--db", &path]).stdout),
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Kills walk around the moment the apply commits: start at 0.8x the
    // timed sync; after a kill that left the old state wait longer (x1.3),
    // after one that found the new state shorter (x0.6). Machine load moves
    // that moment (a cold first sync can take several times longer than the
    // next ones), so the walk, not a fixed schedule, keeps kills near it:
    // early ones land in the download, the others in the apply (one SQLite
    // transaction) or just after its commit. At least KILLS kills, more (up
    // to MAX_KILLS) until both outcomes were seen.
    const KILLS: usize = 10;
    const MAX_KILLS: usize = 40;
    let (mut old, mut new) = (0, 0);
    let mut held = version; // what the file holds
    let mut delay = full.mul_f64(0.8);
    for kill in 0..MAX_KILLS {
        if kill >= KILLS && old > 0 && new > 0 {
            break;
        }
        let f = delay.as_secs_f64() / full.as_secs_f64();
        version += 1;
        bump(&mut c, version);
        let mut p = spawn_cli_sync(&sync_args, Stdio::null());
        std::thread::sleep(delay);
        p.kill9();
        let ((count, lo, hi), crud, ok) = inspect(&file.0);
        assert_eq!(ok, "ok", "integrity_check after kill at {f:.2}");
        assert!(crud.is_empty(), "upload queue changed: {crud:?}");
        assert_eq!(count, N, "row count after kill at {f:.2}");
        assert_eq!(
            lo, hi,
            "mixed checkpoints after kill at {f:.2}: v in {lo}..={hi}"
        );
        if lo == version {
            new += 1;
            delay = delay.mul_f64(0.6);
        } else {
            // Not applied: the file must still hold the previous state; the
            // next round's checkpoint covers both updates.
            assert_eq!(lo, held, "kill at {f:.2}: neither old nor new");
            old += 1;
            delay = delay.mul_f64(1.3);
        }
        held = lo;
    }
    assert!(
        old > 0 && new > 0,
        "kills all landed on one side (old {old}, new {new}); the timing did not cover the apply"
    );

    // With local writes queued (the relay has no /crud, so they stay queued),
    // checkpoints are held back; kills must leave the queue byte for byte.
    for i in 0..3 {
        let out = outpost(&[
            "exec",
            "--db",
            &path,
            &format!(
                "INSERT INTO items (id, owner, v, pad) VALUES ({}, 'u1', -1, 'local')",
                900_000 + i
            ),
        ]);
        assert!(
            out.status.success(),
            "exec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, queue, _) = inspect(&file.0);
    assert_eq!(queue.len(), 3, "three queued writes");
    let mut queued_kills = 0;
    for f in [0.3, 0.6, 0.9, 1.2] {
        version += 1;
        bump(&mut c, version);
        let mut p = spawn_cli_sync(&sync_args, Stdio::null());
        std::thread::sleep(full.mul_f64(f));
        p.kill9();
        queued_kills += 1;
        let ((count, lo, hi), crud, ok) = inspect(&file.0);
        assert_eq!(ok, "ok");
        assert_eq!(crud, queue, "upload queue changed by a kill at {f}");
        assert_eq!(
            (count, lo, hi),
            (N, held, held),
            "checkpoint applied over queued writes, or mixed"
        );
    }
    let local: i64 = rusqlite::Connection::open(&file.0)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM items WHERE CAST(id AS INTEGER) >= 900000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(local, 3, "local writes must stay visible");
    eprintln!(
        "faults: outpost sync killed {} times ({old} left the old checkpoint, {new} the new one, never mixed; {queued_kills} with a queue of 3, queue unchanged); full incremental sync {full:?}",
        KILLS + queued_kills
    );
}

#[test]
fn network_cut_mid_line_keeps_the_last_checkpoint_and_recovers() {
    let db = setup("faults_cut", 20_000);
    let mut c = db.connect();
    let relay = Relay::start(&db);
    let proxy = CutProxy::start(relay.addr);
    let rt = runtime();
    let file = TempDb::new("cut");
    let creds = Credentials {
        endpoint: proxy.url(),
        token: relay.token("u1", 600),
    };
    let client = LibClient::start(&rt, &file.0, creds);
    client.converge(&rt, &mut c);
    let before = client_rows(&client.db);
    let cp_before = client.db.status().borrow().last_checkpoint.clone();

    // Cut every connection after 6000 bytes, then change every row.
    proxy.arm(6000);
    c.execute("UPDATE items SET v = 7", &[]).unwrap();
    tick(&mut c);
    wait_for("three cuts", WAIT, || {
        (proxy.cuts.load(std::sync::atomic::Ordering::SeqCst) >= 3).then_some(())
    });
    assert_eq!(
        client.db.status().borrow().last_checkpoint,
        cp_before,
        "a checkpoint was applied from a cut stream"
    );
    assert_eq!(
        client_rows(&client.db),
        before,
        "rows changed by a cut stream"
    );
    let errors = client.errors.lock().unwrap().clone();
    assert!(
        !errors.is_empty(),
        "the client reported no error for a cut stream"
    );

    proxy.arm(0);
    client.converge(&rt, &mut c);
    let cuts = proxy.cuts.load(std::sync::atomic::Ordering::SeqCst);
    let mid = proxy
        .mid_line_cuts
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(mid >= 1, "no cut fell mid-line ({cuts} cuts)");
    eprintln!(
        "faults: {cuts} network cuts ({mid} mid-line); client kept checkpoint {cp_before:?} meanwhile, reported {:?}, then converged",
        errors.first()
    );
}
