//! Client figures: a fresh client's first sync of 1M rows in the layout of
//! issue 19 — 10 lists of one user, i.e. 10 buckets of 100k todos — once with
//! text ids (`t1…t1000000`) and once with random UUID keys, side by side:
//! - (a) end to end: Postgres (rows already materialized) → an in-process
//!   relay → the release `outpost sync --once` binary, run as a subprocess
//!   into a fresh SQLite file; timed from spawn to exit, with the client's
//!   peak RSS (VmHWM, sampled from /proc while it runs) and its threads' CPU
//!   time and time spent runnable but waiting for a CPU (schedstat): on a
//!   shared machine the second says how much of the wall time is contention;
//!   what is left of the wall time is waiting on the relay or the disk;
//! - (b) the client's apply rate alone: the same stream's NDJSON lines,
//!   recorded first, fed straight into the sync state machine and store (no
//!   network, no Postgres), with the time split into parsing, storing data
//!   lines in `ps_oplog` and applying the checkpoint (`sync_local`).
//!
//! The relay, Postgres and the client share the machine's cores in (a), so (a)
//! is bounded by the slowest of the three; (b) isolates the client.
//! `OUTPOST_BENCH_CLIENT_ROWS` sets the row count (default 1,000,000; a
//! multiple of 10).

use crate::relay_proc::release_binary;
use crate::Row;
use anyhow::{bail, Context, Result};
use outpost_client::driver::batch_open;
use outpost_client::net::connector::fetch_relay_schema;
use outpost_client::net::lines::parse_line;
use outpost_client::store::Effect;
use outpost_client::sync::Instruction;
use outpost_client::{Credentials, Http, SchemaMode, Store};
use outpost_protocol::SyncLine;
use outpost_tests::client::remove_db_file;
use outpost_tests::relay::Relay;
use outpost_tests::{TestDb, LIST_TODOS_RULES};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BUCKETS: i64 = 10;
const GOAL: f64 = 250_000.0;

fn row_count() -> i64 {
    crate::env_num("OUTPOST_BENCH_CLIENT_ROWS", 1_000_000)
}
fn ratio(got: f64) -> String {
    format!(
        "{:.2}x {}",
        got / GOAL,
        if got >= GOAL { "met" } else { "missed" }
    )
}

/// A database file in the temp dir, removed (with its WAL files) on drop.
pub(crate) struct TempDb(pub(crate) PathBuf);

impl TempDb {
    pub(crate) fn new(label: &str) -> TempDb {
        let p = std::env::temp_dir().join(format!(
            "outpost-bench-client-{}-{label}.db",
            std::process::id()
        ));
        let t = TempDb(p);
        t.remove();
        t
    }
    fn remove(&self) {
        remove_db_file(&self.0);
    }
    fn size_mb(&self) -> f64 {
        ["", "-wal"]
            .iter()
            .filter_map(|ext| std::fs::metadata(format!("{}{ext}", self.0.display())).ok())
            .map(|m| m.len() as f64)
            .sum::<f64>()
            / 1e6
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}

/// How the todos are keyed.
#[derive(Clone, Copy)]
pub(crate) enum Keys {
    /// `t1…tN` (text; arrives in no index order either: `t1, t11, t21, …`).
    Text,
    /// Random v4 UUIDs (`uuid` columns, synced as text).
    Uuid,
}

impl Keys {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Keys::Text => "text ids",
            Keys::Uuid => "UUID keys",
        }
    }

    /// Tables and rows: `buckets` lists of user `bench` (`l0`, `l1`, … with
    /// text ids), todo g in list g % `buckets`.
    pub(crate) fn setup_sql(self, rows: i64, buckets: i64) -> String {
        let (ty, lists, todos) = match self {
            Keys::Text => (
                "text",
                format!("SELECT 'l' || g, 'bench', 'list ' || g FROM generate_series(0, {buckets} - 1) g"),
                format!(
                    "SELECT 't' || g, 'l' || (g % {buckets}), 'todo number ' || g FROM generate_series(1, {rows}) g"
                ),
            ),
            Keys::Uuid => (
                "uuid",
                format!("SELECT gen_random_uuid(), 'bench', 'list ' || g FROM generate_series(0, {buckets} - 1) g"),
                format!(
                    "SELECT gen_random_uuid(), l.id, 'todo number ' || g FROM generate_series(1, {rows}) g
                     JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM lists) l ON l.n = g % {buckets}"
                ),
            ),
        };
        format!(
            "CREATE TABLE lists (id {ty} PRIMARY KEY, owner_id text NOT NULL, name text NOT NULL);
             CREATE TABLE todos (id {ty} PRIMARY KEY, list_id {ty} NOT NULL, title text NOT NULL,
                done boolean NOT NULL DEFAULT false,
                created_at timestamptz NOT NULL DEFAULT '2024-01-02 03:04:05Z');
             INSERT INTO lists {lists};
             INSERT INTO todos(id, list_id, title) {todos};"
        )
    }
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let n = row_count();
    let bin = release_binary("outpost-cli", "outpost")?;
    let mut recorded = vec![];
    // (a) for both layouts first, while nothing else holds memory.
    for keys in [Keys::Text, Keys::Uuid] {
        let pg = TestDb::new("bench_client");
        let mut c = pg.connect();
        c.batch_execute(&keys.setup_sql(n, BUCKETS))?;
        eprintln!("bench client: materializing {n} rows ({})", keys.label());
        c.query_one("SELECT outpost.deploy_rules($1)", &[&LIST_TODOS_RULES])?;
        c.batch_execute("VACUUM ANALYZE")?;
        let relay = Relay::start(&pg);
        let token = relay.token("bench", 3600);

        let file = TempDb::new("e2e");
        let run = sync_once(&bin, &relay.url, &token, &file.0)?;
        let got = run.summary["tables"]["todos"].as_i64().unwrap_or(-1);
        if got != n {
            bail!(
                "end-to-end sync ({}): {got} rows, expected {n}: {}",
                keys.label(),
                run.summary
            );
        }
        let per_s = n as f64 / run.took.as_secs_f64();
        rows.push(Row {
            name: format!(
                "client: initial sync of {n} rows end to end, {BUCKETS} buckets, {} (Postgres → relay → `outpost sync --once` → SQLite file)",
                keys.label()
            ),
            value: format!(
                "{per_s:.0} rows/s ({:.1} s, {:.0} MB on disk, client peak RSS {:.0} MB, client CPU {:.1} s, runnable waiting for a CPU {:.1} s)",
                run.took.as_secs_f64(),
                file.size_mb(),
                run.peak_rss_kb as f64 / 1024.0,
                run.cpu.as_secs_f64(),
                run.cpu_wait.as_secs_f64()
            ),
            goal: "≥ 250,000 rows/s, bounded memory".into(),
            ratio: ratio(per_s),
        });
        drop(file);

        // Record the stream for (b).
        eprintln!("bench client: recording the stream ({})", keys.label());
        let creds = Credentials {
            endpoint: relay.url.clone(),
            token: token.clone(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let schema = rt
            .block_on(fetch_relay_schema(&Http::new(), &creds))?
            .context("the relay serves no schema")?;
        let mut stream = relay.stream(
            &token,
            &json!({"buckets": [], "include_checksum": true, "raw_data": true}),
        );
        let lines: Vec<String> = stream
            .until("checkpoint_complete")
            .into_iter()
            .map(|v| v.to_string())
            .collect();
        drop(stream);
        drop(relay);
        drop(pg);
        recorded.push((keys, schema, lines));
    }

    // (b) Apply the recorded streams with no network and no Postgres.
    for (keys, schema, lines) in recorded {
        let file = TempDb::new("apply");
        let phases = apply_recorded(&file.0, SchemaMode::Fixed(schema), &lines, n)?;
        drop(lines);
        let per_s = n as f64 / phases.total.as_secs_f64();
        rows.push(Row {
            name: format!(
                "client: apply {n} pre-recorded rows, {BUCKETS} buckets, {} (state machine + SQLite file, no network)",
                keys.label()
            ),
            value: format!(
                "{per_s:.0} rows/s ({:.2} s: parse {:.2} s, store ops {:.2} s, apply checkpoint {:.2} s; then the op log's index {:.2} s)",
                phases.total.as_secs_f64(),
                phases.parse.as_secs_f64(),
                phases.save.as_secs_f64(),
                phases.apply.as_secs_f64(),
                phases.index.as_secs_f64()
            ),
            goal: "≥ 250,000 rows/s".into(),
            ratio: ratio(per_s),
        });
    }
    Ok(())
}

struct SyncRun {
    took: Duration,
    peak_rss_kb: u64,
    /// The client's threads' time on a CPU and runnable but waiting for one
    /// (/proc schedstat, summed over threads): a client short of CPU waits
    /// in the run queue, one waiting on the relay sleeps (counted in neither).
    cpu: Duration,
    cpu_wait: Duration,
    summary: Value,
}

/// (on CPU, waiting for a CPU) in ns per thread of `pid`, as /proc says now.
fn thread_schedstats(pid: u32, into: &mut std::collections::HashMap<String, (u64, u64)>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        let mut f = s.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
        if let (Some(run), Some(wait)) = (f.next(), f.next()) {
            into.insert(t.file_name().to_string_lossy().into_owned(), (run, wait));
        }
    }
}

/// Runs `outpost sync --once` into `db`, sampling its peak RSS until it exits.
fn sync_once(bin: &Path, endpoint: &str, token: &str, db: &Path) -> Result<SyncRun> {
    let out = PathBuf::from(format!("{}.out", db.display()));
    let err = PathBuf::from(format!("{}.err", db.display()));
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(["sync", "--once", "--attempts", "1", "--db"])
        .arg(db)
        .args(["--endpoint", endpoint, "--token", token])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut peak = 0;
    let mut sched = std::collections::HashMap::new();
    let deadline = t + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        // VmHWM is the high-water mark: the last reading before exit is the peak.
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
        }
        thread_schedstats(child.id(), &mut sched);
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("outpost sync --once timed out");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    let stdout = std::fs::read_to_string(&out)?;
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&err);
    if !status.success() {
        bail!("outpost sync --once failed ({status}): {stderr}");
    }
    let summary: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("summary of outpost sync --once: {stdout:?}"))?;
    let (run, wait) = sched.values().fold((0, 0), |(r, w), (a, b)| (r + a, w + b));
    Ok(SyncRun {
        took,
        peak_rss_kb: peak,
        cpu: Duration::from_nanos(run),
        cpu_wait: Duration::from_nanos(wait),
        summary,
    })
}

fn parse(text: &str, p: &mut Phases) -> Result<Option<SyncLine>> {
    let t = Instant::now();
    let line = parse_line(text)?;
    p.parse += t.elapsed();
    Ok(line)
}

#[derive(Default)]
struct Phases {
    total: Duration,
    parse: Duration,
    save: Duration,
    apply: Duration,
    /// The op log's unique index, built after the first checkpoint is
    /// visible (what `outpost sync` does next; `--once` leaves it).
    index: Duration,
}

/// Feeds recorded lines through the state machine into a fresh store at `path`.
fn apply_recorded(path: &Path, mode: SchemaMode, lines: &[String], rows: i64) -> Result<Phases> {
    let mut store = Store::open(path, mode)?;
    let mut machine = store.sync_state(Map::new())?;
    machine.start();
    let mut p = Phases::default();
    let start = Instant::now();
    let mut applied = false;
    let mut rest = lines.iter().peekable();
    while let Some(text) = rest.next() {
        let Some(line) = parse(text, &mut p)? else {
            continue;
        };
        let is_complete = matches!(line, SyncLine::CheckpointComplete(_));
        let t = Instant::now();
        let parsed_before = p.parse;
        let mut batch: Vec<Instruction> = machine.handle_line(line)?;
        // As the driver does with lines already received (here: all of them).
        while batch_open(&batch) && rest.peek().is_some_and(|l| l.starts_with("{\"data\"")) {
            if let Some(text) = rest.next() {
                if let Some(line) = parse(text, &mut p)? {
                    batch.extend(machine.handle_line(line)?);
                }
            }
        }
        let effects = store.execute(&mut machine, batch)?;
        // The batch's time, less the parsing counted apart.
        let took = t.elapsed().saturating_sub(p.parse - parsed_before);
        if is_complete {
            p.apply += took;
        } else {
            p.save += took;
        }
        applied |= effects
            .iter()
            .any(|e| matches!(e, Effect::Applied { priority: None, .. }));
    }
    p.total = start.elapsed();
    let t = Instant::now();
    store.finish_bulk()?;
    p.index = t.elapsed();
    if !applied {
        bail!("the recorded checkpoint was not applied");
    }
    let n: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM ps_data__todos", [], |r| r.get(0))?;
    if n != rows {
        bail!("applied {n} rows, expected {rows}");
    }
    Ok(p)
}
