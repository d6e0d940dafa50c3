//! `latency-official`: the `latency` section's figures with PowerSync's own
//! client, `@powersync/node` unmodified (compat/powersync-node/, installed by
//! scripts/compat-deps.sh like `make test-compat` does), driven as a child
//! process (compat/powersync-node/bench-latency.mjs, one JSON object per line
//! each way). Per size, on a fresh database with the `latency` section's
//! layout (user `bench`, N todos with text ids in `OUTPOST_BENCH_LATENCY_LISTS`
//! lists, default 1, so one bucket holds them all):
//! - the release relay with `/crud` on; the SDK's first sync of all N rows;
//! - INSERT → official client: W single-row INSERTs in Postgres, one at a
//!   time, each timed from just before the INSERT to the SDK's table-change
//!   event whose read finds the row (the child's answer on its stdout);
//! - official client write → confirmed: W local INSERTs through the SDK, each
//!   uploaded by its connector (`uploadData` → POST /crud), timed by the child
//!   from just before the local write to the server's copy applied (upload
//!   queue empty, the relay's op in `ps_oplog`, the table-change event of the
//!   checkpoint that carries the write checkpoint).
//!
//! A raw stream of the same user on the same relay waits for each row's data
//! line, which splits every sample: up to the data line is Postgres (the
//! tick) and the relay, after it the SDK. A write is also split at the SDK's
//! `GET /write-checkpoint2.json` (timed by the child around the global
//! `fetch` the SDK calls) and at the checkpoint carrying that write
//! checkpoint on a second raw stream opened with the SDK's client id. The
//! SDK's CPU time per write comes from /proc/<pid>/stat. `OUTPOST_BENCH_LATENCY_ROWS` lists the sizes (default
//! `100000,1000000`), `OUTPOST_BENCH_LATENCY_WRITES` the writes per size and
//! direction (default 200). Without node/npm, or when the SDK cannot be
//! installed, the section writes one row saying it was skipped and why.

use crate::client::Keys;
use crate::relay_proc::{
    client_runtime, count, ms, percentile, process_cpu, ratio, token, RelayProc, Stream,
};
use crate::Row;
use anyhow::{anyhow, bail, Context, Result};
use outpost_tests::{TestDb, LIST_TODOS_RULES};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const GOAL_INSERT_MS: f64 = 10.0;
const GOAL_WRITE_MS: f64 = 30.0;
const FLAT: f64 = 1.2;
const FIRST_SYNC: Duration = Duration::from_secs(1800);
const ONE_WRITE: Duration = Duration::from_secs(60);
const WRITE_ROLE: &str = "outpost_bench_writer";

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compat/powersync-node")
}

/// Installs the SDK if needed; its versions, or why it cannot run.
fn sdk() -> std::result::Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/compat-deps.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/compat-deps.sh failed ({}): node, npm or the SDK's packages are missing",
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let versions = match sdk() {
        Ok(v) => v,
        Err(why) => {
            eprintln!("bench latency-official: skipped: {why}");
            rows.push(Row {
                name: "latency-official: INSERT → PowerSync's Node SDK, and its writes → confirmed"
                    .into(),
                value: format!("skipped: {why}"),
                goal: "—".into(),
                ratio: "—".into(),
            });
            return Ok(());
        }
    };
    eprintln!("bench latency-official: {versions}");
    let writes: usize = crate::env_num("OUTPOST_BENCH_LATENCY_WRITES", 200usize).max(1);
    let lists: i64 = crate::env_num("OUTPOST_BENCH_LATENCY_LISTS", 1i64).max(1);
    let rt = client_runtime()?;
    let mut all = Vec::new();
    for n in crate::latency::sizes()? {
        let m = measure(&rt, n, lists, writes)?;
        let p = |v: &[Duration], q: f64| ms(percentile(v, q));
        rows.push(Row {
            name: format!(
                "latency-official: INSERT → PowerSync's Node SDK sees the row (table-change event + read), {n} rows in {lists} bucket(s) of one user, {writes} single-row inserts (p50 / p95; {versions})"
            ),
            value: format!(
                "{:.1} / {:.1} ms (raw stream's data line p50 {:.1} ms; SDK share p50 {:.1} ms, its read {:.1} ms; SDK CPU {:.1} ms per insert; first sync {:.1} s)",
                p(&m.seen, 0.5),
                p(&m.seen, 0.95),
                p(&m.seen_line, 0.5),
                p(&m.seen_share, 0.5),
                p(&m.seen_query, 0.5),
                m.sdk_cpu_insert,
                m.first_sync.as_secs_f64()
            ),
            goal: format!("p50 ≤ {GOAL_INSERT_MS} ms"),
            ratio: ratio(GOAL_INSERT_MS, p(&m.seen, 0.5), false),
        });
        rows.push(Row {
            name: format!(
                "latency-official: the SDK's local write → uploaded (POST /crud) → server-confirmed (its upload queue empty, the relay's op applied), {n} rows, {writes} writes one at a time (median / p95)"
            ),
            value: format!(
                "{:.1} / {:.1} ms (p50s: uploadData called {:.1} ms, /crud answered {:.1} ms, raw stream's data line {:.1} ms, write checkpoint asked {:.1} ms, answered {:.1} ms, on the relay's stream {:.1} ms; SDK CPU {:.1} ms per write)",
                p(&m.confirmed, 0.5),
                p(&m.confirmed, 0.95),
                p(&m.upload, 0.5),
                p(&m.posted, 0.5),
                p(&m.write_line, 0.5),
                p_or_nan(&m.wc_asked),
                p_or_nan(&m.wc_answered),
                p(&m.wc_line, 0.5),
                m.sdk_cpu_write
            ),
            goal: format!("median ≤ {GOAL_WRITE_MS} ms"),
            ratio: ratio(GOAL_WRITE_MS, p(&m.confirmed, 0.5), false),
        });
        all.push(m);
    }
    if let (Some(small), Some(big)) = (all.first(), all.last()) {
        if all.len() > 1 {
            let r = |f: fn(&Measured) -> &Vec<Duration>| {
                ms(percentile(f(big), 0.5)) / ms(percentile(f(small), 0.5))
            };
            let (r_seen, r_conf) = (r(|m| &m.seen), r(|m| &m.confirmed));
            rows.push(Row {
                name: format!(
                    "latency-official: p50 at {} vs {} rows in the bucket (same run): INSERT → SDK; SDK write → confirmed",
                    big.rows, small.rows
                ),
                value: format!(
                    "{r_seen:.2}x; {r_conf:.2}x (data lines {:.2}x; {:.2}x; write checkpoint on the relay's stream {:.2}x)",
                    r(|m| &m.seen_line),
                    r(|m| &m.write_line),
                    r(|m| &m.wc_line)
                ),
                goal: format!("flat (≤ {FLAT}x)"),
                ratio: ratio(FLAT, r_seen.max(r_conf), false),
            });
        }
    }
    Ok(())
}

/// One size's figures; durations sorted.
struct Measured {
    rows: i64,
    first_sync: Duration,
    seen: Vec<Duration>,
    seen_line: Vec<Duration>,
    seen_share: Vec<Duration>,
    seen_query: Vec<Duration>,
    sdk_cpu_insert: f64,
    confirmed: Vec<Duration>,
    upload: Vec<Duration>,
    posted: Vec<Duration>,
    write_line: Vec<Duration>,
    /// The SDK's GET /write-checkpoint2.json sent, answered, and the
    /// checkpoint carrying it on a raw stream with the SDK's client id.
    wc_asked: Vec<Duration>,
    wc_answered: Vec<Duration>,
    wc_line: Vec<Duration>,
    sdk_cpu_write: f64,
}

/// The SDK's process: its stdin, and its stdout's lines (read on a thread).
struct Sdk {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Sdk {
    fn send(&mut self, v: Value) -> Result<()> {
        writeln!(self.stdin, "{v}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The next answer with `key`, at most `timeout`.
    async fn answer(&mut self, key: &str, timeout: Duration) -> Result<Value> {
        tokio::time::timeout(timeout, async {
            loop {
                let l = self
                    .lines
                    .recv()
                    .await
                    .ok_or_else(|| anyhow!("the SDK's process ended (its stderr is above)"))?;
                let v: Value = serde_json::from_str(&l)
                    .with_context(|| format!("the SDK's process wrote {l:?}"))?;
                if v.get(key).is_some() {
                    return Ok::<_, anyhow::Error>(v);
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no {key:?} from the SDK within {timeout:?}"))?
    }

    fn cpu_ms(&self) -> Result<f64> {
        Ok(ms(process_cpu(self.child.id())?))
    }
}

impl Drop for Sdk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sdk(relay: &RelayProc, n: i64, dir: &Path) -> Result<Sdk> {
    let mut child = Command::new("node")
        .arg("bench-latency.mjs")
        .current_dir(package_dir())
        .env("OUTPOST_ENDPOINT", format!("http://{}", relay.addr))
        .env("OUTPOST_TOKEN", token("bench"))
        .env("BENCH_DIR", dir)
        .env("BENCH_ROWS", n.to_string())
        .env("BENCH_FIRST_SYNC_MS", FIRST_SYNC.as_millis().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start node bench-latency.mjs")?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Ok(Sdk {
        child,
        stdin,
        lines,
    })
}

/// Reads `raw` until a data line naming `id`; the time since `t0`.
async fn data_line(raw: &mut Stream, id: &str, t0: Instant) -> Result<Duration> {
    raw.until_data_with(format!("\"{id}\"").as_bytes()).await?;
    Ok(t0.elapsed())
}

/// Reads `s` until a checkpoint line carries a write checkpoint above
/// `*last`; the time since `t0`.
async fn write_checkpoint_line(s: &mut Stream, last: &mut u64, t0: Instant) -> Result<Duration> {
    loop {
        let l = s.line().await?;
        if !l.starts_with(br#"{"checkpoint"#) || count(&l, b"write_checkpoint") == 0 {
            continue;
        }
        let v: Value = serde_json::from_slice(&l)?;
        let wc = v
            .as_object()
            .and_then(|o| o.values().next())
            .map(|c| &c["write_checkpoint"]);
        let n = match wc {
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            _ => 0,
        };
        if n > *last {
            *last = n;
            return Ok(t0.elapsed());
        }
    }
}

fn p_or_nan(v: &[Duration]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        ms(percentile(v, 0.5))
    }
}

fn millis(v: &Value, key: &str) -> Result<Duration> {
    let f = v[key]
        .as_f64()
        .ok_or_else(|| anyhow!("no {key} in the SDK's answer {v}"))?;
    Ok(Duration::from_secs_f64(f / 1e3))
}

fn measure(rt: &tokio::runtime::Runtime, n: i64, lists: i64, writes: usize) -> Result<Measured> {
    let db = TestDb::new("bench_latency_official");
    let mut pg = db.connect();
    eprintln!("bench latency-official: materializing {n} rows in {lists} bucket(s)");
    // Roles are cluster-wide; a concurrent run may create it first.
    pg.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {WRITE_ROLE} NOLOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
    ))?;
    pg.batch_execute(&Keys::Text.setup_sql(n, lists))?;
    pg.batch_execute(&format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON todos TO {WRITE_ROLE};
         SELECT outpost.grant_crud('{WRITE_ROLE}');"
    ))?;
    pg.query_one("SELECT outpost.deploy_rules($1)", &[&LIST_TODOS_RULES])?;
    pg.batch_execute("VACUUM ANALYZE")?;
    let relay = RelayProc::start_env(&db, &[("OUTPOST_WRITE_ROLE", WRITE_ROLE.to_string())])?;

    eprintln!("bench latency-official: the SDK's first sync of {n} rows");
    let dir =
        std::env::temp_dir().join(format!("outpost-bench-official-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut sdk = start_sdk(&relay, n, &dir)?;
    let ready = rt.block_on(sdk.answer("ready", FIRST_SYNC + Duration::from_secs(60)))?;
    // The SDK's own figure: from `connect` to `waitForFirstSync` resolving.
    let first_sync = millis(&ready, "first_sync_ms")?;
    eprintln!("bench latency-official: ready {ready}");
    let mut raw = rt.block_on(async {
        let mut s = Stream::open(relay.addr, "bench", None).await?;
        s.until_complete().await?;
        Ok::<_, anyhow::Error>(s)
    })?;

    // The SDK's client id: this stream's checkpoints carry its write
    // checkpoints, as the relay sends them to the SDK.
    let client_id = ready["client_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no client_id in {ready}"))?;
    let body = json!({"buckets": [], "raw_data": true, "client_id": client_id}).to_string();
    let mut wc_stream = rt.block_on(async {
        let mut s = Stream::open_with(relay.addr, "bench", None, body.into()).await?;
        s.until_complete().await?;
        Ok::<_, anyhow::Error>(s)
    })?;

    eprintln!("bench latency-official: {writes} single-row inserts in Postgres");
    let (mut seen, mut seen_line, mut seen_share, mut seen_query) =
        (vec![], vec![], vec![], vec![]);
    let cpu0 = sdk.cpu_ms()?;
    for i in 0..writes {
        let id = format!("probe{i}");
        sdk.send(json!({"cmd": "expect", "id": id}))?;
        rt.block_on(sdk.answer("armed", ONE_WRITE))?;
        let t0 = Instant::now();
        pg.execute(
            "INSERT INTO todos(id, list_id, title) VALUES ($1, 'l0', 'latency probe')",
            &[&id],
        )?;
        let (a, line) = rt.block_on(async {
            let seen = async {
                let a = sdk.answer("seen", ONE_WRITE).await?;
                Ok::<_, anyhow::Error>((a, t0.elapsed()))
            };
            tokio::try_join!(seen, data_line(&mut raw, &id, t0))
        })?;
        if a.0["seen"] != json!(id) {
            bail!("the SDK saw {} while {id} was awaited", a.0["seen"]);
        }
        seen.push(a.1);
        seen_line.push(line);
        seen_share.push(a.1.saturating_sub(line));
        seen_query.push(millis(&a.0, "query_ms")?);
    }
    let sdk_cpu_insert = (sdk.cpu_ms()? - cpu0) / writes as f64;

    eprintln!("bench latency-official: {writes} writes through the SDK");
    let (mut confirmed, mut upload, mut posted, mut write_line) = (vec![], vec![], vec![], vec![]);
    let (mut wc_asked, mut wc_answered, mut wc_line) = (vec![], vec![], vec![]);
    let mut last_wc = 0u64;
    let cpu0 = sdk.cpu_ms()?;
    for i in 0..writes {
        let id = format!("w{i}");
        let t0 = Instant::now();
        sdk.send(json!({"cmd": "write", "id": id, "list_id": "l0"}))?;
        let (a, line, wc) = rt.block_on(async {
            tokio::try_join!(
                sdk.answer("confirmed", ONE_WRITE),
                data_line(&mut raw, &id, t0),
                write_checkpoint_line(&mut wc_stream, &mut last_wc, t0)
            )
        })?;
        if a["confirmed"] != json!(id) {
            bail!(
                "the SDK confirmed {} while {id} was awaited",
                a["confirmed"]
            );
        }
        confirmed.push(millis(&a, "confirmed_ms")?);
        upload.push(millis(&a, "upload_ms")?);
        posted.push(millis(&a, "posted_ms")?);
        write_line.push(line);
        // Absent when the SDK asked for none after this upload.
        if let (Ok(asked), Ok(answered)) = (millis(&a, "wc_asked_ms"), millis(&a, "wc_answered_ms"))
        {
            wc_asked.push(asked);
            wc_answered.push(answered);
        }
        wc_line.push(wc);
    }
    let sdk_cpu_write = (sdk.cpu_ms()? - cpu0) / writes as f64;
    let got: i64 = pg
        .query_one("SELECT count(*) FROM todos WHERE id LIKE 'w%'", &[])?
        .get(0);
    if got != writes as i64 {
        bail!("{got} of the SDK's {writes} writes are in Postgres");
    }
    let _ = sdk.send(json!({"cmd": "quit"}));
    drop(sdk);
    let _ = std::fs::remove_dir_all(&dir);
    for v in [
        &mut seen,
        &mut seen_line,
        &mut seen_share,
        &mut seen_query,
        &mut confirmed,
        &mut upload,
        &mut posted,
        &mut write_line,
        &mut wc_asked,
        &mut wc_answered,
        &mut wc_line,
    ] {
        v.sort();
    }
    Ok(Measured {
        rows: n,
        first_sync,
        seen,
        seen_line,
        seen_share,
        seen_query,
        sdk_cpu_insert,
        confirmed,
        upload,
        posted,
        write_line,
        wc_asked,
        wc_answered,
        wc_line,
        sdk_cpu_write,
    })
}
