//! An in-process relay for end-to-end tests, and a blocking client for it
//! built on hyper's.
//!
//! [`Relay::start`] runs `outpost_relay::server::run` on its own tokio
//! runtime in a background thread, bound to `127.0.0.1:0`, with a fresh
//! HS256 secret; dropping the [`Relay`] resolves its shutdown future and
//! joins the thread. [`Relay::token`] mints tokens the relay accepts.
//!
//! The client side: [`Relay::request`] sends one request on a fresh
//! connection (no pooling, so a test's connections are its own) and reads
//! the whole response; [`Relay::stream`] opens `POST /sync/stream` and hands
//! back a [`SyncStream`] whose [`SyncStream::next_line`] waits, bounded, for
//! the next NDJSON line. [`Relay::send`] sends any request and returns the
//! response with its body still streaming. Tests wait on lines, never on
//! fixed sleeps. Requests run on one runtime shared by the tests of a
//! process ([`block_on`]).

use crate::TestDb;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use outpost_relay::config::{Cli, Command, ServeArgs};
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a single request or line may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `f` on the runtime of the tests' HTTP clients (hyper spawns each
/// connection's task there).
pub fn block_on<F: Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-http-client")
            .enable_all()
            .build()
            .expect("test client runtime")
    })
    .block_on(f)
}

/// hyper's client over plain TCP, without a connection pool.
fn http_client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(TIMEOUT));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector)
    })
}

/// `serve` arguments as the command line would give them for `database_url`,
/// so that every option has its documented default.
pub fn serve_args(database_url: &str) -> ServeArgs {
    let cli = <Cli as clap::Parser>::try_parse_from([
        "outpost-relay",
        "serve",
        "--database-url",
        database_url,
    ])
    .expect("serve arguments parse");
    match cli.command {
        Command::Serve(args) => args,
        Command::Token(_) => unreachable!("parsed serve"),
    }
}

/// A running relay; stopped (gracefully) on drop.
pub struct Relay {
    /// `http://127.0.0.1:<port>`, or `https://localhost:<port>` with TLS.
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
        let mut args = serve_args(&db.url);
        args.listen = "127.0.0.1:0".parse().unwrap();
        args.jwt_secret = Some(secret.clone());
        args.max_connections = 1000;
        args.db_pool_size = 4;
        // Tests that compact call it themselves.
        args.compact_every_ops = 0;
        configure(&mut args);
        let tls = args.tls_cert.is_some();

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
            url: if tls {
                format!("https://localhost:{}", addr.port())
            } else {
                format!("http://{addr}")
            },
            addr,
            secret,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        // Over TLS the caller's client (which trusts the test's CA) waits:
        // the socket is bound already, so its first connection queues.
        if !tls {
            relay.wait_healthy();
        }
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
    ) -> Result<Response, String> {
        let body = body.map(|b| b.to_string());
        request_at(&self.url, method, path, token, body.as_deref())
    }

    /// A request to this relay: `token` as `Bearer` authorization, `body` as JSON.
    pub fn build(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> http::Request<Full<Bytes>> {
        build_at(&self.url, method, path, token, body)
    }

    /// Sends `req` and returns the response once its head arrived; its body
    /// streams (read it inside [`block_on`]). Panics on a connection error.
    pub fn send(&self, req: http::Request<Full<Bytes>>) -> http::Response<Incoming> {
        let what = format!("{} {}", req.method(), req.uri());
        send_at(req).unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    /// Opens `POST /sync/stream` with `request` as body. Panics unless the
    /// relay answers 200.
    pub fn stream(&self, token: &str, request: &Value) -> SyncStream {
        let req = self.build(
            "POST",
            "/sync/stream",
            Some(token),
            Some(&request.to_string()),
        );
        SyncStream::open(self.send(req))
    }

    /// Opens `n` sync streams at once (all requests in flight together, each
    /// on its own connection); returns them once every response head arrived.
    pub fn streams_at_once(&self, token: &str, request: &Value, n: usize) -> Vec<SyncStream> {
        let body = request.to_string();
        let reqs: Vec<_> = (0..n)
            .map(|_| self.build("POST", "/sync/stream", Some(token), Some(&body)))
            .collect();
        let responses = block_on(async {
            let tasks: Vec<_> = reqs
                .into_iter()
                .map(|r| tokio::spawn(tokio::time::timeout(TIMEOUT, http_client().request(r))))
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(
                    t.await
                        .expect("request task")
                        .unwrap_or_else(|_| panic!("no response within {TIMEOUT:?}"))
                        .unwrap_or_else(|e| panic!("sync stream request failed: {e}")),
                );
            }
            out
        });
        responses.into_iter().map(SyncStream::open).collect()
    }

    /// The value of metric `name` (a counter's `_total` line, or a gauge)
    /// from `GET /metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.request("GET", "/metrics", None, None).body;
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

/// A request to the relay at `url` (`http://host:port`, e.g. a relay run as
/// a subprocess): `token` as `Bearer` authorization, `body` as JSON.
pub fn build_at(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"));
    if let Some(t) = token {
        b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        b = b.header(http::header::CONTENT_TYPE, "application/json");
    }
    b.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("valid request parts")
}

/// Sends one request to the relay at `url` and reads the whole response;
/// `Err` if it cannot be reached or does not answer within [`TIMEOUT`].
pub fn request_at(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Response, String> {
    let res = send_at(build_at(url, method, path, token, body))?;
    block_on(async {
        let status = res.status().as_u16();
        let bytes = tokio::time::timeout(TIMEOUT, res.into_body().collect())
            .await
            .map_err(|_| format!("no complete body within {TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    })
}

/// Sends `req` and returns the response once its head arrived (its body
/// still streaming); `Err` if the relay cannot be reached in time.
pub fn send_at(req: http::Request<Full<Bytes>>) -> Result<http::Response<Incoming>, String> {
    block_on(async {
        tokio::time::timeout(TIMEOUT, http_client().request(req))
            .await
            .map_err(|_| format!("no response within {TIMEOUT:?}"))?
            .map_err(|e| e.to_string())
    })
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
    body: Incoming,
    buf: Vec<u8>,
    /// Bytes of `buf` known to hold no newline (a 10 MB checkpoint line
    /// arrives in many frames: each is searched once).
    scanned: usize,
    ended: bool,
}

impl SyncStream {
    /// Takes a `/sync/stream` response; panics (with the body) unless it is 200.
    pub fn open(res: http::Response<Incoming>) -> SyncStream {
        let status = res.status();
        if status != http::StatusCode::OK {
            let rest = block_on(async {
                tokio::time::timeout(TIMEOUT, res.into_body().collect())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|c| c.to_bytes())
                    .unwrap_or_default()
            });
            panic!(
                "sync stream answered {status}: {}",
                String::from_utf8_lossy(&rest)
            );
        }
        SyncStream {
            body: res.into_body(),
            buf: Vec::new(),
            scanned: 0,
            ended: false,
        }
    }

    /// The next NDJSON line, waiting at most `timeout`. `None` if the stream
    /// ended; panics if no line arrives in time.
    pub fn next_line(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let from = self.scanned;
            let newline = self.buf[from..].iter().position(|&b| b == b'\n');
            self.scanned = if newline.is_some() { 0 } else { self.buf.len() };
            if let Some(pos) = newline.map(|p| p + from) {
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
            let frame = block_on(async { tokio::time::timeout(left, self.body.frame()).await })
                .unwrap_or_else(|_| panic!("no stream line within {timeout:?}"));
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => self.ended = true,
                Some(Err(e)) => panic!("sync stream read failed: {e}"),
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

/// Decodes a body in its `Content-Encoding` as it streams: feed it frames,
/// get back what they decode to so far (a flushed encoder's output decodes
/// completely, with nothing held back).
pub enum Decoder {
    Identity,
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    /// For a response's `Content-Encoding` (`None`: identity).
    pub fn new(content_encoding: Option<&str>) -> Decoder {
        match content_encoding {
            None => Decoder::Identity,
            Some("gzip") => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Some("zstd") => {
                Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).expect("zstd decoder"))
            }
            Some(other) => panic!("unexpected content encoding {other}"),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let out = match self {
            Decoder::Identity => return bytes.to_vec(),
            Decoder::Gzip(d) => {
                d.write_all(bytes).expect("valid gzip");
                d.flush().expect("valid gzip");
                d.get_mut()
            }
            Decoder::Zstd(d) => {
                d.write_all(bytes).expect("valid zstd");
                d.flush().expect("valid zstd");
                d.get_mut()
            }
        };
        std::mem::take(out)
    }
}
