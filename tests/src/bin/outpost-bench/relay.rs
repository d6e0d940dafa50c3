//! Relay figures, measured on the real `outpost-relay` release binary run as
//! a subprocess (so its memory is its own, read from /proc/<pid>/status):
//! - streaming a 1M-row bucket to one client: rows/s and peak RSS (VmHWM);
//! - idle memory per connection with 2,000 open streams (RSS delta / 2,000);
//! - fan-out: one write to a bucket all 2,000 hold, time until each has the
//!   data line (p50 / max);
//! - commit → visible in a connected stream at a steady 1,000 writes/s.
//!
//! Clients are tokio tasks on a 2-thread runtime: few OS threads for many
//! connections. Every wait is on a stream line, bounded by a timeout.

use crate::Row;
use anyhow::{anyhow, bail, Context, Result};
use outpost_tests::TestDb;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const BIG_ROWS: i64 = 1_000_000;
const CONNS: usize = 2_000;
const WRITES_PER_SEC: u64 = 1_000;
const WRITE_SECS: u64 = 10;
const SECRET: &str = "bench-secret-0123456789-0123456789";
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

fn ratio(goal: f64, got: f64, higher_is_better: bool) -> String {
    let (r, met) = if higher_is_better {
        (got / goal, got >= goal)
    } else {
        (goal / got.max(1e-9), got <= goal)
    };
    format!("{r:.2}x {}", if met { "met" } else { "missed" })
}

/// The release relay binary next to this one. Under `cargo run` (which
/// sets `CARGO`) it is (re)built first, so the figures are of current code.
fn relay_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent of {}", exe.display()))?
        .join("outpost-relay");
    let cargo = std::env::var("CARGO").ok();
    if cargo.is_some() || !bin.exists() {
        let status = Command::new(cargo.unwrap_or_else(|| "cargo".into()))
            .args([
                "build",
                "--release",
                "-p",
                "outpost-relay",
                "--bin",
                "outpost-relay",
            ])
            .status()
            .context("cargo build -p outpost-relay")?;
        if !status.success() || !bin.exists() {
            bail!("cannot build {}", bin.display());
        }
    }
    Ok(bin)
}

/// A relay subprocess; killed on drop.
struct RelayProc {
    child: Child,
    addr: SocketAddr,
}

impl RelayProc {
    fn start(db: &TestDb) -> Result<RelayProc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(relay_binary()?)
            .args(["serve", "--listen", &addr.to_string()])
            .env("OUTPOST_DATABASE_URL", &db.url)
            .env("OUTPOST_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start outpost-relay")?;
        let relay = RelayProc { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                use std::io::{Read, Write};
                s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return Ok(relay);
                }
            }
            if Instant::now() > deadline {
                bail!("relay at {addr} never became healthy");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /metrics`, as a lookup by series name.
    fn metrics(&self) -> Result<impl Fn(&str) -> String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(move |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or("?")
                .to_string()
        })
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no {name} in /proc status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(sub: &str) -> String {
    outpost_relay::auth::dev_token(SECRET, sub, 3600, None).expect("dev token")
}

/// One open `POST /sync/stream`, yielding NDJSON lines (chunked body).
struct Stream {
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(addr: SocketAddr, sub: &str) -> Result<Stream> {
        let body = r#"{"buckets":[],"raw_data":true,"client_id":"bench"}"#;
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let head = format!(
            "POST /sync/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Token {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            token(sub),
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        let mut r = BufReader::with_capacity(64 * 1024, s);
        let mut line = String::new();
        r.read_line(&mut line).await?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("sync stream answered {line:?}");
        }
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            if line.trim_end().is_empty() {
                break;
            }
        }
        Ok(Stream { r, buf: Vec::new() })
    }

    /// The next line (without its newline).
    async fn line(&mut self) -> Result<Vec<u8>> {
        tokio::time::timeout(LINE_TIMEOUT, self.line_inner())
            .await
            .map_err(|_| anyhow!("no stream line within {LINE_TIMEOUT:?}"))?
    }

    async fn line_inner(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut l: Vec<u8> = self.buf.drain(..=i).collect();
                l.pop();
                return Ok(l);
            }
            let mut size = String::new();
            if self.r.read_line(&mut size).await? == 0 {
                bail!("stream ended");
            }
            let n = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| anyhow!("bad chunk size {size:?}"))?;
            if n == 0 {
                bail!("stream ended");
            }
            let at = self.buf.len();
            self.buf.resize(at + n + 2, 0);
            self.r.read_exact(&mut self.buf[at..]).await?;
            self.buf.truncate(at + n);
        }
    }

    /// Reads up to the next `checkpoint_complete`; returns the ops seen.
    async fn until_complete(&mut self) -> Result<u64> {
        let mut ops = 0u64;
        loop {
            let l = self.line().await?;
            if l.starts_with(br#"{"data""#) {
                ops += count(&l, br#""op_id""#);
            } else if l.starts_with(br#"{"checkpoint_complete""#) {
                return Ok(ops);
            }
        }
    }
}

fn count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The relay and the bench each hold one descriptor per connection.
fn raise_nofile() {
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=20000:20000"])
        .stderr(Stdio::null())
        .status();
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    stream_big(&rt, rows)?;
    connections(&rt, rows)?;
    Ok(())
}

/// (a) One client downloads a 1M-row bucket.
fn stream_big(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) -> Result<()> {
    let db = TestDb::new("bench_relay_big");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, title text NOT NULL, n int NOT NULL);
         INSERT INTO big SELECT g, 'row number ' || g, g % 1000 FROM generate_series(1, {BIG_ROWS}) g;"
    ))?;
    eprintln!("bench relay: materializing {BIG_ROWS} rows");
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  big:\n    data: SELECT * FROM big\n"],
    )?;
    let relay = RelayProc::start(&db)?;
    let (rss0, _) = relay.memory()?;
    let addr = relay.addr;
    let (ops, took) = rt.block_on(async move {
        let t = Instant::now();
        let mut s = Stream::open(addr, "bulk").await?;
        let ops = s.until_complete().await?;
        Ok::<_, anyhow::Error>((ops, t.elapsed()))
    })?;
    let (_, hwm) = relay.memory()?;
    if ops != BIG_ROWS as u64 {
        bail!("streamed {ops} ops, expected {BIG_ROWS}");
    }
    let per_s = ops as f64 / took.as_secs_f64();
    rows.push(Row {
        name: format!("relay: stream a {BIG_ROWS}-row bucket to one client"),
        value: format!("{per_s:.0} rows/s ({:.1} s)", took.as_secs_f64()),
        goal: "≥ 100,000 rows/s".into(),
        ratio: ratio(100_000.0, per_s, true),
    });
    let peak_mb = hwm as f64 / 1024.0;
    rows.push(Row {
        name: format!("relay: peak RSS while streaming {BIG_ROWS} rows"),
        value: format!("{peak_mb:.1} MB (idle {:.1} MB)", rss0 as f64 / 1024.0),
        goal: "≤ 64 MB".into(),
        ratio: ratio(64.0, peak_mb, false),
    });
    Ok(())
}

/// (b) idle memory per stream, (c) fan-out of one write to all, (d) latency
/// at a steady write rate.
fn connections(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) -> Result<()> {
    let db = TestDb::new("bench_relay_fan");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE live (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO live VALUES (0, 'seed');",
    )?;
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  shared:\n    data: SELECT * FROM live\n"],
    )?;
    let relay = RelayProc::start(&db)?;
    let addr = relay.addr;
    let (rss0, _) = relay.memory()?;

    // (b) 2,000 streams, each through its first checkpoint, then idle.
    eprintln!("bench relay: opening {CONNS} streams");
    let t = Instant::now();
    let mut streams: Vec<Stream> = rt.block_on(async move {
        let mut out = Vec::with_capacity(CONNS);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..CONNS {
            set.spawn(async move {
                let mut s = Stream::open(addr, &format!("user{i}")).await?;
                s.until_complete().await?;
                Ok::<_, anyhow::Error>(s)
            });
            // Bounded concurrency of starts: the accept queue is finite.
            if set.len() >= 200 {
                out.push(set.join_next().await.expect("task")??);
            }
        }
        while let Some(s) = set.join_next().await {
            out.push(s??);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let opened = t.elapsed();
    let (rss1, _) = relay.memory()?;
    let per_conn_kb = (rss1.saturating_sub(rss0)) as f64 / CONNS as f64;
    rows.push(Row {
        name: format!("relay: idle memory per open stream ({CONNS} streams)"),
        value: format!(
            "{per_conn_kb:.1} KB ({:.1} → {:.1} MB; opened in {:.1} s)",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            opened.as_secs_f64()
        ),
        goal: "≤ 32 KB".into(),
        ratio: ratio(32.0, per_conn_kb, false),
    });

    // (c) One write; each stream's time to its data line.
    let (fan, streams_back) = {
        let t0 = Arc::new(Mutex::new(None::<Instant>));
        let waiting: Vec<_> = streams
            .drain(..)
            .map(|mut s| {
                let t0 = t0.clone();
                rt.spawn(async move {
                    loop {
                        let l = s.line().await?;
                        if l.starts_with(br#"{"data""#) {
                            let at = Instant::now();
                            s.until_complete().await?;
                            let start = t0.lock().unwrap().expect("write before data");
                            return Ok::<_, anyhow::Error>((at - start, s));
                        }
                    }
                })
            })
            .collect();
        let started = Instant::now();
        c.batch_execute("INSERT INTO live VALUES (1, 'fan-out')")?;
        *t0.lock().unwrap() = Some(started);
        let mut lat = Vec::with_capacity(CONNS);
        let mut back = Vec::with_capacity(CONNS);
        for h in waiting {
            let (d, s) = rt.block_on(h)??;
            lat.push(d);
            back.push(s);
        }
        lat.sort();
        (lat, back)
    };
    let (p50, max) = (percentile(&fan, 0.5), *fan.last().unwrap());
    let m = relay.metrics()?;
    rows.push(Row {
        name: format!("relay: one write reaches {CONNS} connected streams (p50 / max)"),
        value: format!(
            "{:.0} ms / {:.0} ms ({} shared change reads, {} op pages read, {} per-stream sync_checkpoint)",
            ms(p50),
            ms(max),
            m("outpost_relay_changes_queries_total"),
            m("outpost_relay_ops_queries_total"),
            m("outpost_relay_sync_checkpoints_total"),
        ),
        goal: "all within 1 s".into(),
        ratio: ratio(1000.0, ms(max), false),
    });
    drop(streams_back); // closes the 2,000 connections

    // (d) Commit → visible at a steady write rate, one connected client.
    eprintln!("bench relay: {WRITES_PER_SEC} writes/s for {WRITE_SECS} s");
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = WRITES_PER_SEC * WRITE_SECS;
    let mut watcher = rt.block_on(async move {
        let mut s = Stream::open(addr, "watcher").await?;
        s.until_complete().await?;
        Ok::<_, anyhow::Error>(s)
    })?;
    let reader = {
        let committed = committed.clone();
        rt.spawn(async move {
            let mut lat = Vec::with_capacity(total as usize);
            // Seen before the writer recorded its commit time (rare): matched later.
            let mut early: HashMap<String, Instant> = HashMap::new();
            while (lat.len() as u64) < total {
                let l = watcher.line().await?;
                if !l.starts_with(br#"{"data""#) {
                    continue;
                }
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_slice(&l)?;
                for op in v["data"]["data"].as_array().into_iter().flatten() {
                    if let Some(id) = op["object_id"].as_str() {
                        if id.len() >= 7 {
                            early.insert(id.to_string(), at);
                        }
                    }
                }
                let c = committed.lock().unwrap();
                early.retain(|id, at| match c.get(id) {
                    Some(t) => {
                        lat.push(at.saturating_duration_since(*t));
                        false
                    }
                    None => true,
                });
            }
            Ok::<_, anyhow::Error>(lat)
        })
    };
    let writers = 4u64;
    let per_writer = total / writers;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let url = db.url.clone();
            let committed = committed.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
                let stmt = c.prepare("INSERT INTO live (id, v) VALUES ($1, 'w')")?;
                let every = Duration::from_nanos(1_000_000_000 * writers / WRITES_PER_SEC);
                let start = Instant::now();
                for i in 0..per_writer {
                    let due = start + every * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait); // pacing the load, not waiting for an event
                    }
                    let id = 1_000_000 + (i * writers + w) as i64;
                    c.execute(&stmt, &[&id])?;
                    committed
                        .lock()
                        .unwrap()
                        .insert(id.to_string(), Instant::now());
                }
                Ok(())
            })
        })
        .collect();
    let t = Instant::now();
    for h in handles {
        h.join().map_err(|_| anyhow!("writer panicked"))??;
    }
    let wrote = t.elapsed();
    let mut lat = rt.block_on(reader)??;
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let rate = total as f64 / wrote.as_secs_f64();
    rows.push(Row {
        name: format!(
            "relay: commit → visible in a stream at {rate:.0} writes/s for {:.0} s (p50)",
            wrote.as_secs_f64()
        ),
        value: format!("{:.1} ms", ms(p50)),
        goal: "p50 ≤ 10 ms".into(),
        ratio: ratio(10.0, ms(p50), false),
    });
    rows.push(Row {
        name: "relay: commit → visible, p99 (same run)".into(),
        value: format!("{:.1} ms (max {:.1} ms)", ms(p99), ms(*lat.last().unwrap())),
        goal: "p99 ≤ 50 ms".into(),
        ratio: ratio(50.0, ms(p99), false),
    });
    Ok(())
}
