//! An in-process relay for end-to-end tests, and a tiny blocking HTTP/1.1
//! client to talk to it.
//!
//! [`Relay::start`] runs `outpost_relay::server::run` on its own tokio
//! runtime in a background thread, bound to `127.0.0.1:0`, with a fresh
//! HS256 secret; dropping the [`Relay`] resolves its shutdown future and
//! joins the thread. [`Relay::token`] mints tokens the relay accepts.
//!
//! The client side is deliberately plain: [`Relay::request`] sends one
//! request on a fresh connection (`Connection: close`) and reads the whole
//! response; [`Relay::stream`] opens `POST /sync/stream` and hands back a
//! [`SyncStream`] whose [`SyncStream::next_line`] waits, bounded, for the
//! next NDJSON line. Tests wait on lines, never on fixed sleeps.

use crate::TestDb;
use outpost_relay::config::ServeArgs;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a single request or line may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// A running relay; stopped (gracefully) on drop.
pub struct Relay {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub addr: SocketAddr,
    /// The HS256 secret the relay verifies tokens with.
    pub secret: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

static SECRETS: AtomicU32 = AtomicU32::new(0);

impl Relay {
    /// Starts a relay for `db` with default settings (it drives ticks).
    pub fn start(db: &TestDb) -> Relay {
        Relay::start_with(db, |_| {})
    }

    /// Starts a relay for `db`, letting `configure` adjust the arguments
    /// (e.g. `write_role`, `drive_ticks`, limits) before it runs.
    pub fn start_with(db: &TestDb, configure: impl FnOnce(&mut ServeArgs)) -> Relay {
        let secret = format!(
            "test-secret-{}-{}-0123456789abcdef0123456789",
            std::process::id(),
            SECRETS.fetch_add(1, Ordering::SeqCst)
        );
        let mut args = ServeArgs {
            database_url: db.url.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            jwt_secret: Some(secret.clone()),
            jwks: None,
            jwt_audience: vec![],
            write_role: None,
            max_connections: 1000,
            db_pool_size: 4,
            drive_ticks: true,
            // Tests that compact call it themselves.
            compact_every_ops: 0,
            max_ops_per_batch: 1000,
            max_body_bytes: 1 << 20,
            read_timeout_secs: 30,
            idp: Default::default(),
        };
        configure(&mut args);

        let std_listener = std::net::TcpListener::bind(args.listen).expect("bind relay listener");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("relay runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                    let shutdown = async move {
                        let _ = stop_rx.await;
                    };
                    if let Err(e) = outpost_relay::server::run(args, listener, shutdown).await {
                        panic!("relay failed: {e}");
                    }
                });
            })
            .expect("spawn relay thread");
        let relay = Relay {
            url: format!("http://{addr}"),
            addr,
            secret,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        relay.wait_healthy();
        relay
    }

    /// Waits until `GET /health` answers 200 (bounded by [`TIMEOUT`]).
    fn wait_healthy(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(r) = self.try_request("GET", "/health", None, None) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "relay at {} never became healthy",
                self.url
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An HS256 token for `sub`, valid for `ttl_secs`, signed with the relay's secret.
    pub fn token(&self, sub: &str, ttl_secs: u64) -> String {
        outpost_relay::auth::dev_token(&self.secret, sub, ttl_secs, None).unwrap()
    }

    /// Sends one request and reads the whole response. `token` becomes a
    /// `Bearer` authorization header; `body` is sent as JSON.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        self.try_request(method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> std::io::Result<Response> {
        let body = body.map(|b| b.to_string());
        let mut reader = self.send(method, path, token, body.as_deref())?;
        let (status, chunked) = read_head(&mut reader)?;
        let mut bytes = Vec::new();
        if chunked {
            while let Some(chunk) = read_chunk(&mut reader)? {
                bytes.extend_from_slice(&chunk);
            }
        } else {
            reader.read_to_end(&mut bytes)?;
        }
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// Sends raw bytes as a request body (for malformed or oversized bodies).
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Response {
        let mut reader = self.send(method, path, token, Some(body)).unwrap();
        let (status, chunked) = read_head(&mut reader).unwrap();
        let mut bytes = Vec::new();
        if chunked {
            while let Some(chunk) = read_chunk(&mut reader).unwrap() {
                bytes.extend_from_slice(&chunk);
            }
        } else {
            let _ = reader.read_to_end(&mut bytes);
        }
        Response {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<BufReader<TcpStream>> {
        let mut s = TcpStream::connect_timeout(&self.addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        s.flush()?;
        Ok(BufReader::new(s))
    }

    /// Opens `POST /sync/stream` with `request` as body. Panics unless the
    /// relay answers 200.
    pub fn stream(&self, token: &str, request: &Value) -> SyncStream {
        let body = request.to_string();
        let mut reader = self
            .send("POST", "/sync/stream", Some(token), Some(&body))
            .expect("open sync stream");
        let (status, chunked) = read_head(&mut reader).expect("sync stream response head");
        if status != 200 {
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            panic!("sync stream answered {status}: {rest}");
        }
        SyncStream {
            reader,
            chunked,
            buf: Vec::new(),
            ended: false,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A complete (non-streamed) response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }
}

/// An open sync stream.
pub struct SyncStream {
    reader: BufReader<TcpStream>,
    chunked: bool,
    buf: Vec<u8>,
    ended: bool,
}

impl SyncStream {
    /// The next NDJSON line, waiting at most `timeout`. `None` if the stream
    /// ended; panics if no line arrives in time.
    pub fn next_line(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                return Some(
                    serde_json::from_str(text)
                        .unwrap_or_else(|e| panic!("stream line is not JSON ({e}): {text}")),
                );
            }
            if self.ended {
                assert!(self.buf.is_empty(), "stream ended mid-line: {:?}", self.buf);
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no stream line within {timeout:?}");
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            let got = if self.chunked {
                read_chunk(&mut self.reader)
            } else {
                let mut b = [0u8; 8192];
                self.reader
                    .read(&mut b)
                    .map(|n| (n > 0).then(|| b[..n].to_vec()))
            };
            match got {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => self.ended = true,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("no stream line within {timeout:?}")
                }
                Err(e) => panic!("sync stream read failed: {e}"),
            }
        }
    }

    /// The next line with the default [`TIMEOUT`]; panics if the stream ended.
    pub fn line(&mut self) -> Value {
        self.next_line(TIMEOUT).expect("sync stream ended")
    }

    /// Reads lines until one has key `kind` (e.g. `"checkpoint_complete"`),
    /// returning every line read, the match last.
    pub fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            let done = l.get(kind).is_some();
            lines.push(l);
            if done {
                return lines;
            }
        }
    }
}

/// Reads the status line and headers; returns the status and whether the
/// body is chunked.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    Ok((status, chunked))
}

/// One chunk of a chunked body; `None` at the terminating chunk.
fn read_chunk(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut size = String::new();
    if r.read_line(&mut size)? == 0 {
        return Ok(None);
    }
    let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
    if n == 0 {
        return Ok(None);
    }
    let mut data = vec![0u8; n + 2];
    r.read_exact(&mut data)?;
    data.truncate(n);
    Ok(Some(data))
}
