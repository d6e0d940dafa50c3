//! HTTP transport: `POST /sync/stream` read as NDJSON, and small JSON requests,
//! over `http://` or `https://` (see [`super::tls`]).
//!
//! Nothing waits on the network without a bound: connecting has
//! [`TransportOptions::connect_timeout`], and every wait for response headers or
//! body bytes has [`TransportOptions::idle_timeout`]. The relay sends a line at
//! least every 20 s, so a stream silent for longer than the idle timeout (60 s by
//! default) is a dead or half-open connection: it fails, and the driver
//! reconnects with backoff. TCP keepalive probes idle pooled connections too.

use super::decode::{BodyDecoder, ACCEPT_ENCODING};
use super::lines::{parse_line, LineSplitter, MAX_LINE};
use super::tls;
use crate::error::{Error, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use outpost_protocol::{SyncLine, SyncRequest};
use std::path::PathBuf;
use std::time::Duration;

/// How the client reaches the relay.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportOptions {
    /// Time to open a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for response headers or the next body bytes before the
    /// connection is given up (the relay's keepalive interval is 20 s).
    pub idle_timeout: Duration,
    /// TCP keepalive probes on open connections (`None`: off).
    pub tcp_keepalive: Option<Duration>,
    /// A PEM file of CA certificates to trust besides the public roots (a private CA).
    pub ca_cert: Option<PathBuf>,
    /// Ask a relay on a loopback address (`127.0.0.0/8`, `::1`, `localhost`)
    /// for a compressed stream too. Off by default: there the relay's
    /// compression and the client's decompression are CPU spent to save
    /// bytes that cost next to nothing, on cores both processes share.
    pub compress_loopback: bool,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tcp_keepalive: Some(Duration::from_secs(30)),
            ca_cert: None,
            compress_loopback: false,
        }
    }
}

/// Where and as whom to connect.
#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    /// Base URL of the relay, e.g. `http://127.0.0.1:8080`.
    pub endpoint: String,
    pub token: String,
}

impl Credentials {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint.trim_end_matches('/'), path)
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    idle: Duration,
    compress_loopback: bool,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// A client with [`TransportOptions::default`].
    pub fn new() -> Http {
        Http::with_options(&TransportOptions::default())
            .expect("the default TLS configuration is valid")
    }

    /// A client with these timeouts and trusted CAs; fails if `ca_cert` cannot be read.
    pub fn with_options(o: &TransportOptions) -> Result<Http> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(o.connect_timeout));
        tcp.set_keepalive(o.tcp_keepalive);
        tcp.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(o.ca_cert.as_deref())?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Http {
            client: Client::builder(TokioExecutor::new()).build(https),
            idle: o.idle_timeout,
            compress_loopback: o.compress_loopback,
        })
    }

    async fn send(
        &self,
        method: Method,
        creds: &Credentials,
        path: &str,
        body: Option<Vec<u8>>,
        accept_encoding: Option<&str>,
    ) -> Result<hyper::Response<Incoming>> {
        let url = creds.url(path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Token {}", creds.token))
            .header("accept", "application/x-ndjson, application/json");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(enc) = accept_encoding {
            req = req.header("accept-encoding", enc);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Transport(format!("{url}: {e}")))?;
        let resp = tokio::time::timeout(self.idle, self.client.request(req))
            .await
            .map_err(|_| Error::Transport(format!("{url}: no response within {:?}", self.idle)))?
            .map_err(|e| Error::Transport(format!("{url}: {}", tls::describe(&e))))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = read_limited(resp.into_body(), 64 * 1024, self.idle)
                .await
                .unwrap_or_default();
            return Err(Error::Http {
                status,
                url,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(resp)
    }

    /// A JSON request whose JSON answer is returned (bounded to 16 MiB).
    pub async fn json(
        &self,
        method: Method,
        creds: &Credentials,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let resp = self.send(method, creds, path, body, None).await?;
        let bytes = read_limited(resp.into_body(), MAX_LINE, self.idle).await?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Opens `POST /sync/stream`, accepting a compressed stream unless the
    /// relay is on a loopback address (see [`TransportOptions::compress_loopback`]).
    pub async fn sync_stream(
        &self,
        creds: &Credentials,
        request: &SyncRequest,
    ) -> Result<SyncStream> {
        let body = serde_json::to_vec(request)?;
        let accept =
            (self.compress_loopback || !is_loopback(&creds.endpoint)).then_some(ACCEPT_ENCODING);
        let resp = self
            .send(Method::POST, creds, "/sync/stream", Some(body), accept)
            .await?;
        let encoding = resp
            .headers()
            .get(hyper::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").to_string());
        Ok(SyncStream {
            decoder: BodyDecoder::for_encoding(encoding.as_deref())?,
            body: resp.into_body(),
            splitter: LineSplitter::new(MAX_LINE),
            pending: Default::default(),
            done: false,
            idle: self.idle,
        })
    }
}

/// Whether `endpoint` (a base URL) names this machine: a loopback IP or `localhost`.
fn is_loopback(endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<hyper::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn read_limited(mut body: Incoming, limit: usize, idle: Duration) -> Result<Vec<u8>> {
    let mut out = vec![];
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| Error::Transport(format!("response stalled for {idle:?}")))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| Error::Transport(e.to_string()))?;
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
            if out.len() > limit {
                return Err(Error::Transport(format!(
                    "response larger than {limit} bytes"
                )));
            }
        }
    }
    Ok(out)
}

/// An open sync stream, yielding decoded lines.
pub struct SyncStream {
    body: Incoming,
    decoder: BodyDecoder,
    splitter: LineSplitter,
    pending: std::collections::VecDeque<String>,
    done: bool,
    idle: Duration,
}

impl SyncStream {
    /// The next line; `Ok(None)` when the server ended the stream cleanly. Lines with
    /// unknown keys are skipped; a corrupt line is an error, and so is a stream
    /// silent for longer than the idle timeout.
    pub async fn next_line(&mut self) -> Result<Option<SyncLine>> {
        while let Some(text) = self.next_text().await? {
            if let Some(line) = parse_line(&text)? {
                return Ok(Some(line));
            }
        }
        Ok(None)
    }

    /// The next line if one can be had without waiting (see [`SyncStream::next_text_ready`]).
    pub fn next_line_ready(&mut self) -> Result<Option<SyncLine>> {
        while let Some(text) = self.next_text_ready()? {
            if let Some(line) = parse_line(&text)? {
                return Ok(Some(line));
            }
        }
        Ok(None)
    }

    /// The next line's text, undecoded (callers decode it with [`parse_line`]
    /// where it suits them, e.g. off the async runtime).
    pub async fn next_text(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(text) = self.pending.pop_front() {
                return Ok(Some(text));
            }
            if self.done {
                return Ok(None);
            }
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| {
                    Error::Transport(format!(
                        "stream: nothing received for {:?} (the relay sends a keepalive every 20 s): connection lost",
                        self.idle
                    ))
                })?;
            self.receive(frame)?;
        }
    }

    /// The next line's text if one can be had without waiting: from lines already
    /// split, or from body frames already received. `Ok(None)` means "not now" (or
    /// the end of the stream, which the next [`SyncStream::next_text`] reports).
    pub fn next_text_ready(&mut self) -> Result<Option<String>> {
        use hyper::body::Body;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        loop {
            if let Some(text) = self.pending.pop_front() {
                return Ok(Some(text));
            }
            if self.done {
                return Ok(None);
            }
            // Polled with a no-op waker: the real one is registered again by the
            // next `next_text`, which polls the same body.
            match std::pin::Pin::new(&mut self.body).poll_frame(&mut cx) {
                std::task::Poll::Pending => return Ok(None),
                std::task::Poll::Ready(frame) => self.receive(frame)?,
            }
        }
    }

    fn receive(
        &mut self,
        frame: Option<std::result::Result<hyper::body::Frame<Bytes>, hyper::Error>>,
    ) -> Result<()> {
        match frame {
            None => {
                self.done = true;
                let tail = self.decoder.finish()?;
                self.pending.extend(self.splitter.push(&tail)?);
                self.splitter.finish()
            }
            Some(Err(e)) => Err(Error::Transport(format!("stream: {e}"))),
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    let plain = self.decoder.push(d)?;
                    self.pending.extend(self.splitter.push(&plain)?);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_endpoints_are_recognised() {
        for e in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3/",
            "http://localhost:8080/relay",
            "https://LOCALHOST",
            "http://[::1]:8080",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in [
            "http://10.0.0.1:8080",
            "https://relay.example.com",
            "http://[::2]:80",
            "http://localhost.example.com",
            "not a url",
        ] {
            assert!(!is_loopback(e), "{e}");
        }
    }
}
