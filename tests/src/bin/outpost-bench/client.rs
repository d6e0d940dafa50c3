//! Client figures: how fast a fresh client gets a 1M-row bucket into SQLite.
//! - (a) end to end: Postgres (rows already materialized in one bucket) → an
//!   in-process relay → `outpost_client::SyncClient::run` (`once`) into a
//!   SQLite file on disk, timed from connect to the applied checkpoint;
//! - (b) the client's apply rate alone: the same stream's NDJSON lines,
//!   recorded first, fed straight into the sync state machine and store (no
//!   network, no Postgres), with the time split into parsing, storing data
//!   lines in `ps_oplog` and applying the checkpoint (`sync_local`).
//!
//! The relay, Postgres and the client share the machine's cores in (a), so (a)
//! is bounded by the slowest of the three; (b) isolates the client.

use crate::Row;
use anyhow::{bail, Context, Result};
use outpost_client::driver::batch_open;
use outpost_client::net::connector::fetch_relay_schema;
use outpost_client::net::lines::parse_line;
use outpost_client::store::Effect;
use outpost_client::sync::Instruction;
use outpost_client::{
    Credentials, Database, Http, SchemaMode, StaticConnector, Store, SyncClient, SyncOptions,
};
use outpost_protocol::SyncLine;
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use serde_json::{json, Map};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROWS: i64 = 1_000_000;
const GOAL: f64 = 250_000.0;

fn ratio(got: f64) -> String {
    format!(
        "{:.2}x {}",
        got / GOAL,
        if got >= GOAL { "met" } else { "missed" }
    )
}

/// A database file in the temp dir, removed (with its WAL files) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(label: &str) -> TempDb {
        let p = std::env::temp_dir().join(format!(
            "outpost-bench-client-{}-{label}.db",
            std::process::id()
        ));
        let t = TempDb(p);
        t.remove();
        t
    }
    fn remove(&self) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.0.display()));
        }
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

fn count_big(db: &Database) -> Result<i64> {
    let rows = db.query("SELECT count(*) AS n FROM big", &[])?;
    Ok(rows[0]["n"].as_i64().unwrap_or(-1))
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let pg = TestDb::new("bench_client");
    let mut c = pg.connect();
    c.batch_execute(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, title text NOT NULL, n int NOT NULL);
         INSERT INTO big SELECT g, 'row number ' || g, g % 1000 FROM generate_series(1, {ROWS}) g;"
    ))?;
    eprintln!("bench client: materializing {ROWS} rows");
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  big:\n    data: SELECT * FROM big\n"],
    )?;
    let relay = Relay::start(&pg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // (a) End to end.
    let file = TempDb::new("e2e");
    let creds = Credentials {
        endpoint: relay.url.clone(),
        token: relay.token("bench", 3600),
    };
    let schema = rt
        .block_on(fetch_relay_schema(&Http::new(), &creds))?
        .context("the relay serves no schema")?;
    let db = Database::open(&file.0, SchemaMode::Fixed(schema.clone()))?;
    let options = SyncOptions {
        once: true,
        max_attempts: Some(1),
        ..SyncOptions::default()
    };
    let t = Instant::now();
    let cp = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(120),
                SyncClient::new(db.clone(), Arc::new(StaticConnector(creds.clone()))).run(options),
            )
            .await
        })
        .context("end-to-end sync timed out")??;
    let took = t.elapsed();
    let n = count_big(&db)?;
    if n != ROWS || cp.is_none() {
        bail!("end-to-end sync: {n} rows at checkpoint {cp:?}, expected {ROWS}");
    }
    let per_s = ROWS as f64 / took.as_secs_f64();
    rows.push(Row {
        name: format!(
            "client: initial sync of {ROWS} rows end to end (Postgres → relay → SQLite file)"
        ),
        value: format!(
            "{per_s:.0} rows/s ({:.1} s, {:.0} MB on disk)",
            took.as_secs_f64(),
            file.size_mb()
        ),
        goal: "≥ 250,000 rows/s".into(),
        ratio: ratio(per_s),
    });
    drop(db);
    drop(file);

    // (b) Record the stream, then apply it with no network and no Postgres.
    eprintln!("bench client: recording the stream");
    let mut stream = relay.stream(
        &relay.token("bench", 3600),
        &json!({"buckets": [], "include_checksum": true, "raw_data": true}),
    );
    let lines: Vec<String> = stream
        .until("checkpoint_complete")
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    drop(stream);
    drop(relay);
    let file = TempDb::new("apply");
    let phases = apply_recorded(&file.0, SchemaMode::Fixed(schema), &lines)?;
    let per_s = ROWS as f64 / phases.total.as_secs_f64();
    rows.push(Row {
        name: format!("client: apply {ROWS} pre-recorded rows (state machine + SQLite file, no network)"),
        value: format!(
            "{per_s:.0} rows/s ({:.2} s: parse {:.2} s, store ops {:.2} s, apply checkpoint {:.2} s)",
            phases.total.as_secs_f64(),
            phases.parse.as_secs_f64(),
            phases.save.as_secs_f64(),
            phases.apply.as_secs_f64()
        ),
        goal: "≥ 250,000 rows/s".into(),
        ratio: ratio(per_s),
    });
    Ok(())
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
}

/// Feeds recorded lines through the state machine into a fresh store at `path`.
fn apply_recorded(path: &Path, mode: SchemaMode, lines: &[String]) -> Result<Phases> {
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
    if !applied {
        bail!("the recorded checkpoint was not applied");
    }
    let n: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM ps_data__big", [], |r| r.get(0))?;
    if n != ROWS {
        bail!("applied {n} rows, expected {ROWS}");
    }
    Ok(p)
}
