//! The relay release binary run as a subprocess for the benchmarks (its
//! memory read from /proc), dev tokens, and a streaming client that reads
//! NDJSON lines with a timeout on each.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use outpost_tests::relay::Decoder;
use outpost_tests::TestDb;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub(crate) const SECRET: &str = "bench-secret-0123456789-0123456789";
pub(crate) const LINE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn ratio(goal: f64, got: f64, higher_is_better: bool) -> String {
    let (r, met) = if higher_is_better {
        (got / goal, got >= goal)
    } else {
        (goal / got.max(1e-9), got <= goal)
    };
    format!("{r:.2}x {}", if met { "met" } else { "missed" })
}

/// The release relay binary next to this one (see [`release_binary`]).
pub(crate) fn relay_binary() -> Result<PathBuf> {
    release_binary("outpost-relay", "outpost-relay")
}

/// The release binary `bin` of `package`, next to this one. Under `cargo run`
/// (which sets `CARGO`) it is (re)built first, so the figures are of current code.
pub(crate) fn release_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent of {}", exe.display()))?
        .join(bin);
    let cargo = std::env::var("CARGO").ok();
    if cargo.is_some() || !path.exists() {
        let status = Command::new(cargo.unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "-p", package, "--bin", bin])
            .status()
            .with_context(|| format!("cargo build -p {package}"))?;
        if !status.success() || !path.exists() {
            bail!("cannot build {}", path.display());
        }
    }
    Ok(path)
}

/// A relay subprocess; killed on drop.
pub(crate) struct RelayProc {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl RelayProc {
    pub(crate) fn start(db: &TestDb) -> Result<RelayProc> {
        RelayProc::start_env(db, &[])
    }

    /// [`RelayProc::start`] with more environment (`OUTPOST_*` settings).
    pub(crate) fn start_env(db: &TestDb, env: &[(&str, String)]) -> Result<RelayProc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(relay_binary()?)
            .args(["serve", "--listen", &addr.to_string()])
            .env("OUTPOST_DATABASE_URL", &db.url)
            .env("OUTPOST_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .context("start outpost-relay")?;
        let relay = RelayProc { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if matches!(relay.get("/health"), Ok((200, _))) {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                bail!("relay at {addr} never became healthy");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path`: status and body.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let uri: hyper::Uri = format!("http://{}{path}", self.addr).parse()?;
        outpost_tests::relay::block_on(async {
            let res = tokio::time::timeout(LINE_TIMEOUT, client().get(uri)).await??;
            let status = res.status().as_u16();
            let body = res.into_body().collect().await?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        })
    }

    /// `GET /metrics`, as a lookup by series name.
    pub(crate) fn metrics(&self) -> Result<impl Fn(&str) -> String> {
        let (_, text) = self.get("/metrics")?;
        Ok(move |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or("?")
                .to_string()
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmRSS, VmHWM) in KiB.
    pub(crate) fn memory(&self) -> Result<(u64, u64)> {
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

    /// The relay's CPU time so far (user + system, all threads): on a shared
    /// machine CPU time compares better than wall-clock time.
    pub(crate) fn cpu(&self) -> Result<Duration> {
        process_cpu(self.child.id())
    }
}

/// A local process's CPU time so far (user + system, all threads), from
/// /proc/<pid>/stat.
pub(crate) fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesized command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {i} in /proc stat"))
    };
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn token(sub: &str) -> String {
    outpost_relay::auth::dev_token(SECRET, sub, 3600, None).expect("dev token")
}

/// hyper's client, one connection per stream (no pool).
pub(crate) fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector)
    })
}

/// Runs `write` while every stream waits for its next data line, and gives
/// back each stream's time from just before the write to that line (sorted)
/// with the streams, in order. With `until_complete`, a stream also reads on
/// to its `checkpoint_complete` before it is handed back.
pub(crate) fn time_fan_out(
    rt: &tokio::runtime::Runtime,
    streams: Vec<Stream>,
    until_complete: bool,
    write: impl FnOnce() -> Result<()>,
) -> Result<(Vec<Duration>, Vec<Stream>)> {
    let t0 = Arc::new(Mutex::new(None::<Instant>));
    let waiting: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let t0 = t0.clone();
            rt.spawn(async move {
                loop {
                    let l = s.line().await?;
                    if l.starts_with(br#"{"data""#) {
                        let at = Instant::now();
                        if until_complete {
                            s.until_complete().await?;
                        }
                        let start = t0.lock().unwrap().expect("write before data");
                        return Ok::<_, anyhow::Error>((at - start, s));
                    }
                }
            })
        })
        .collect();
    *t0.lock().unwrap() = Some(Instant::now());
    write()?;
    let mut lat = Vec::with_capacity(waiting.len());
    let mut back = Vec::with_capacity(waiting.len());
    for h in waiting {
        let (d, s) = rt.block_on(h)??;
        lat.push(d);
        back.push(s);
    }
    lat.sort();
    Ok((lat, back))
}

/// One open `POST /sync/stream`, yielding NDJSON lines, decoded from the
/// response's `Content-Encoding`; counts the body bytes as received.
pub(crate) struct Stream {
    pub(crate) body: hyper::body::Incoming,
    pub(crate) decoder: Decoder,
    pub(crate) buf: Vec<u8>,
    pub(crate) wire: u64,
}

impl Stream {
    /// `accept_encoding`: what the client accepts (`None`: plain NDJSON).
    pub(crate) async fn open(
        addr: SocketAddr,
        sub: &str,
        accept_encoding: Option<&str>,
    ) -> Result<Stream> {
        let body = r#"{"buckets":[],"raw_data":true,"client_id":"bench"}"#;
        Stream::open_with(
            addr,
            sub,
            accept_encoding,
            Bytes::from_static(body.as_bytes()),
        )
        .await
    }

    /// [`Stream::open`] with `body` as the request (a resume, say).
    pub(crate) async fn open_with(
        addr: SocketAddr,
        sub: &str,
        accept_encoding: Option<&str>,
        body: Bytes,
    ) -> Result<Stream> {
        let mut req = hyper::Request::post(format!("http://{addr}/sync/stream"))
            .header("authorization", format!("Token {}", token(sub)))
            .header("content-type", "application/json");
        if let Some(a) = accept_encoding {
            req = req.header("accept-encoding", a);
        }
        let req = req.body(Full::new(body))?;
        let res = tokio::time::timeout(LINE_TIMEOUT, client().request(req)).await??;
        if res.status() != 200 {
            bail!("sync stream answered {}", res.status());
        }
        let encoding = res
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().map(str::to_string))
            .transpose()?;
        Ok(Stream {
            body: res.into_body(),
            decoder: Decoder::new(encoding.as_deref()),
            buf: Vec::new(),
            wire: 0,
        })
    }

    /// The next line (without its newline).
    pub(crate) async fn line(&mut self) -> Result<Vec<u8>> {
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
            let frame = self
                .body
                .frame()
                .await
                .ok_or_else(|| anyhow!("stream ended"))??;
            if let Ok(data) = frame.into_data() {
                self.wire += data.len() as u64;
                let plain = self.decoder.feed(&data);
                self.buf.extend_from_slice(&plain);
            }
        }
    }

    /// Reads up to the next data line that contains `needle` (a row's id,
    /// quoted as it appears in the line).
    pub(crate) async fn until_data_with(&mut self, needle: &[u8]) -> Result<()> {
        loop {
            let l = self.line().await?;
            if l.starts_with(br#"{"data""#) && count(&l, needle) > 0 {
                return Ok(());
            }
        }
    }

    /// Reads up to the next `checkpoint_complete`; returns the ops seen.
    pub(crate) async fn until_complete(&mut self) -> Result<u64> {
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

pub(crate) fn count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The relay and the bench each hold one descriptor per connection.
pub(crate) fn raise_nofile() {
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=20000:20000"])
        .stderr(Stdio::null())
        .status();
}

/// The clients' runtime (2 threads for many connections), with the
/// descriptor limit raised for them.
pub(crate) fn client_runtime() -> Result<tokio::runtime::Runtime> {
    raise_nofile();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
