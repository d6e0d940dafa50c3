//! Shared pieces of the fault and hostile-input tests (`faults_*.rs`,
//! `hostile_*.rs`): raw HTTP on a socket where malformed or oversized input is
//! the point (other requests go through hyper's client), the real `outpost-relay` and
//! `outpost` binaries as child processes (killed by PID), and a TCP proxy that
//! cuts connections after a byte budget.
#![allow(dead_code)]

use http_body_util::BodyExt;
use outpost_tests::relay;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns `Some`, failing with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------- raw HTTP --

/// One raw request on a fresh connection: `head` is everything up to (not
/// including) the blank line; `body` follows. Returns the status (0 if the
/// server closed without answering) and the body text.
pub fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(b"\r\n\r\n");
    // The server may answer (413) and close before reading all of a large
    // body: a failed write is fine, the answer is what counts.
    let _ = s.write_all(&req).and_then(|_| s.write_all(body));
    read_response(&mut BufReader::new(s))
}

/// Reads a whole HTTP/1.1 response (`Connection: close`); (0, "") when the
/// server closed the connection without a status line.
pub fn read_response(r: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return (0, String::new());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut chunked = false;
    let mut length = None;
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked" {
                chunked = true;
            }
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    // A sync stream that was (wrongly) accepted never ends: stop reading it.
    let deadline = Instant::now() + Duration::from_secs(5);
    if chunked {
        while Instant::now() < deadline {
            let mut size = String::new();
            if r.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            if r.read_exact(&mut chunk).is_err() {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        let _ = r.read_exact(&mut body);
    } else {
        let _ = r.read_to_end(&mut body);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `POST path` with a JSON body and an optional bearer token.
pub fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let auth = token
        .map(|t| format!("\r\nAuthorization: Bearer {t}"))
        .unwrap_or_default();
    raw_request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}{auth}",
            body.len()
        ),
        body,
    )
}

/// Opens `POST /sync/stream` and reads until the first `checkpoint_complete`
/// line; returns the status and the lines read (or the error body). Status 0:
/// the relay could not be reached.
pub fn first_checkpoint(addr: SocketAddr, token: &str) -> (u16, String) {
    let body = r#"{"buckets":[],"include_checksum":true,"raw_data":true,"client_id":"hostile"}"#;
    let req = relay::build_at(
        &format!("http://{addr}"),
        "POST",
        "/sync/stream",
        Some(token),
        Some(body),
    );
    let Ok(res) = relay::send_at(req) else {
        return (0, String::new());
    };
    let status = res.status().as_u16();
    if status != 200 {
        let bytes = relay::block_on(async {
            tokio::time::timeout(relay::TIMEOUT, res.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|c| c.to_bytes())
                .unwrap_or_default()
        });
        return (status, String::from_utf8_lossy(&bytes).into_owned());
    }
    let lines = relay::SyncStream::open(res).until("checkpoint_complete");
    let text = lines.iter().map(|l| format!("{l}\n")).collect();
    (status, text)
}

// ------------------------------------------------------------- binaries --

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Path of a workspace binary (`outpost-relay`, `outpost`), built once per test
/// process with `cargo build` so it is never stale.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap();
    let package = match name {
        "outpost-relay" => "outpost-relay",
        "outpost" => "outpost-cli",
        other => panic!("unknown binary {other}"),
    };
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", package, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {name} failed"
        );
        built.push(name.to_string());
    }
    let path = target_dir().join("debug").join(name);
    assert!(
        path.exists(),
        "{} missing after cargo build",
        path.display()
    );
    path
}

/// A child process, killed with SIGKILL (by its PID) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap. Returns once the process is gone.
    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// Starts `outpost-relay serve` on `listen` for `database_url`, waits until
/// `/health` answers 200 and returns it. Its log goes to `log` (appended).
pub fn spawn_relay(database_url: &str, listen: SocketAddr, secret: &str, log: &PathBuf) -> Proc {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(binary("outpost-relay"))
        .arg("serve")
        .env("OUTPOST_DATABASE_URL", database_url)
        .env("OUTPOST_LISTEN", listen.to_string())
        .env("OUTPOST_JWT_SECRET", secret)
        .env("OUTPOST_DB_POOL_SIZE", "4")
        .env("OUTPOST_COMPACT_EVERY_OPS", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn outpost-relay");
    let proc = Proc {
        child,
        name: "outpost-relay".into(),
    };
    wait_for("the relay's /health", Duration::from_secs(20), || {
        let (status, _) = try_get(listen, "/health")?;
        (status == 200).then_some(())
    });
    proc
}

/// `GET path`, or `None` if the relay cannot be reached.
pub fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let res = relay::request_at(&format!("http://{addr}"), "GET", path, None, None).ok()?;
    Some((res.status, res.body))
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A fresh path for a client database (and its `-wal`/`-shm`), removed on drop.
pub struct TempDb(pub PathBuf);

impl TempDb {
    pub fn new(label: &str) -> TempDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "outpost-faults-{}-{}-{label}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
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
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}

// ---------------------------------------------------------------- proxy --

/// A TCP proxy on 127.0.0.1 in front of `upstream`. While armed, each
/// connection forwards at most `budget` bytes from upstream to the client,
/// then both sides are closed: a network cut. The cut never falls right after
/// a newline, so it is mid-line.
pub struct CutProxy {
    pub addr: SocketAddr,
    /// Byte budget per connection while armed (0: pass everything).
    budget: Arc<AtomicU64>,
    /// Cuts made so far, and how many of them were mid-line.
    pub cuts: Arc<AtomicUsize>,
    pub mid_line_cuts: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl CutProxy {
    pub fn start(upstream: SocketAddr) -> CutProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let budget = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let mid = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, c, m, n, st) = (
            budget.clone(),
            cuts.clone(),
            mid.clone(),
            conns.clone(),
            stop.clone(),
        );
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if st.load(Ordering::SeqCst) {
                    return;
                }
                n.fetch_add(1, Ordering::SeqCst);
                let (b, c, m) = (b.clone(), c.clone(), m.clone());
                tokio::spawn(async move {
                    let _ = proxy_one(client, upstream, b, c, m).await;
                });
            }
        });
        CutProxy {
            addr,
            budget,
            cuts,
            mid_line_cuts: mid,
            connections: conns,
            stop,
            _rt: rt,
        }
    }

    /// Cut each connection after `bytes` of downstream data (0: never).
    pub fn arm(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn proxy_one(
    client: tokio::net::TcpStream,
    upstream: SocketAddr,
    budget: Arc<AtomicU64>,
    cuts: Arc<AtomicUsize>,
    mid: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = tokio::net::TcpStream::connect(upstream).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    // Downstream: count bytes; once the budget (read when the connection's
    // first byte arrives, so arming affects open connections too) is spent,
    // stop at a byte that is not a newline and drop both sides.
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    let mut cut = false;
    loop {
        let n = sr.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let limit = budget.load(Ordering::SeqCst);
        let mut chunk = &buf[..n];
        if limit > 0 && sent + n as u64 > limit {
            let mut keep = limit.saturating_sub(sent) as usize;
            while keep < n && keep > 0 && chunk[keep - 1] == b'\n' {
                keep += 1;
            }
            chunk = &buf[..keep.max(1).min(n)];
            cut = true;
        }
        cw.write_all(chunk).await?;
        sent += chunk.len() as u64;
        if cut {
            cuts.fetch_add(1, Ordering::SeqCst);
            if chunk.last() != Some(&b'\n') {
                mid.fetch_add(1, Ordering::SeqCst);
            }
            break;
        }
    }
    up.abort();
    drop(cw);
    drop(sr);
    Ok(())
}
