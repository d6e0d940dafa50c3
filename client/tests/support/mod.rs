//! Real network pieces for the client's tests, all on 127.0.0.1: an HTTP(S)
//! server whose answers a test scripts (streamed, compressed, or held open), a
//! private CA made with rcgen, and a TCP proxy that can stop forwarding without
//! closing (a half-open connection).

#![allow(dead_code)]

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub auth: String,
    pub accept_encoding: String,
    pub body: String,
}

/// What the server answers: chunks sent as they are (each one flushed), then
/// either the end of the body or a body held open forever.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub chunks: Vec<Bytes>,
    pub hold_open: bool,
    /// Delay before each chunk.
    pub pace: std::time::Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: vec![],
            chunks: vec![body.into()],
            hold_open: false,
            pace: std::time::Duration::ZERO,
        }
    }

    /// A 200 of these chunks, the body then ended or held open.
    pub fn chunks(chunks: Vec<Bytes>, hold_open: bool) -> Reply {
        Reply {
            status: 200,
            headers: vec![],
            chunks,
            hold_open,
            pace: std::time::Duration::ZERO,
        }
    }

    pub fn paced(mut self, pace: std::time::Duration) -> Reply {
        self.pace = pace;
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
}

pub type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct Server {
    pub endpoint: String,
    pub addr: std::net::SocketAddr,
    pub log: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.starts_with(path))
            .cloned()
            .collect()
    }
}

/// Serves `handler` over plain HTTP on an ephemeral loopback port.
pub async fn serve(handler: Arc<Handler>) -> Server {
    serve_on(handler, None).await
}

/// Serves `handler` over HTTPS with this certificate chain and key (PEM).
pub async fn serve_tls(handler: Arc<Handler>, cert_pem: &str, key_pem: &str) -> Server {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    serve_on(
        handler,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    )
    .await
}

async fn serve_on(handler: Arc<Handler>, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(vec![]));
    let log2 = log.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (handler, log, tls) = (handler.clone(), log2.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (handler, log) = (handler.clone(), log.clone());
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string()
                        };
                        let (auth, accept_encoding) =
                            (header("authorization"), header("accept-encoding"));
                        let method = req.method().to_string();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let seen = Seen {
                            method,
                            path,
                            auth,
                            accept_encoding,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        };
                        log.lock().unwrap().push(seen.clone());
                        let reply = handler(&seen);
                        let pace = reply.pace;
                        let frames = stream::iter(reply.chunks).then(move |c| async move {
                            if !pace.is_zero() {
                                tokio::time::sleep(pace).await;
                            }
                            Ok::<_, std::convert::Infallible>(Frame::data(c))
                        });
                        let body = if reply.hold_open {
                            frames.chain(stream::pending()).boxed()
                        } else {
                            frames.boxed()
                        };
                        let mut resp = hyper::Response::builder()
                            .status(reply.status)
                            .header("content-type", "application/x-ndjson");
                        for (k, v) in reply.headers {
                            resp = resp.header(k, v);
                        }
                        Ok::<_, hyper::Error>(resp.body(StreamBody::new(body)).unwrap())
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(sock), svc).await;
                    }
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(sock).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    Server {
        endpoint: format!("{scheme}://{addr}"),
        addr,
        log,
    }
}

/// A private certificate authority, made fresh for a test.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost: (chain PEM, key PEM).
    pub fn server_cert(&self) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write_pem(&self, dir: &Path, name: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &self.cert_pem).unwrap();
        path
    }
}

/// A TCP proxy to `target`. [`Proxy::freeze`] makes every connection open at that
/// moment stop forwarding in both directions while staying open (what a dead
/// NAT entry or a crashed middlebox looks like); later connections forward.
pub struct Proxy {
    pub endpoint: String,
    frozen_below: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (fb, acc) = (frozen_below.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let n = acc.fetch_add(1, Ordering::SeqCst);
                let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pipe(cr, uw, n, fb.clone()));
                tokio::spawn(pipe(ur, cw, n, fb.clone()));
            }
        });
        Proxy {
            endpoint: format!("http://{addr}"),
            frozen_below,
            accepted,
        }
    }

    /// Freezes every connection accepted so far.
    pub fn freeze(&self) {
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    n: u64,
    frozen_below: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buf).await else {
            return;
        };
        if n < frozen_below.load(Ordering::SeqCst) {
            // Keep both halves open and forward nothing, ever.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if read == 0 || to.write_all(&buf[..read]).await.is_err() {
            return;
        }
    }
}

/// A PUT op of a `todos` row.
pub fn put(op: u64, id: &str, title: &str, cs: u32) -> serde_json::Value {
    serde_json::json!({"op_id": op.to_string(), "op": "PUT", "object_type": "todos", "object_id": id, "subkey": "s",
           "checksum": cs, "data": serde_json::json!({"id": id, "title": title, "done": 0}).to_string()})
}

/// Lines as an NDJSON body.
pub fn stream(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// A complete checkpoint "2" with two todos.
pub fn good_stream() -> String {
    use serde_json::json;
    stream(&[
        json!({"checkpoint": {"last_op_id": "2", "buckets": [{"bucket": "b[]", "checksum": 3, "count": 2}]}}),
        json!({"token_expires_in": 3600}),
        json!({"unknown_future_line": {}}),
        json!({"data": {"bucket": "b[]", "data": [put(1, "t1", "one", 1), put(2, "t2", "two", 2)]}}),
        json!({"checkpoint_complete": {"last_op_id": "2"}}),
    ])
}

/// A handler answering a status and a whole body.
pub type SimpleHandler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// [`serve`] for a [`SimpleHandler`]; returns the endpoint and the request log.
pub async fn serve_simple(handler: Arc<SimpleHandler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let server = serve(Arc::new(move |s: &Seen| {
        let (status, body) = handler(s);
        Reply::new(status, body)
    }))
    .await;
    (server.endpoint, server.log)
}
