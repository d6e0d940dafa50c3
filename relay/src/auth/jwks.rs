//! Keys from identity providers' JWKS URLs (`OUTPOST_JWKS_URL`).
//!
//! Each URL is fetched at start, then every `refresh` interval, and again
//! when a token names a `kid` no set holds: providers publish a new key
//! before they sign with it, so an unknown kid usually means "fetch now".
//! Forged kids must not turn that into traffic against the provider: such
//! fetches are single-flight (requests arriving during a fetch wait for its
//! result) and at most one per `min_refetch` interval ([`Cooldown`]); a kid
//! still unknown after that is refused without a fetch.
//!
//! A failed fetch (provider down, HTTP error, not a JWKS) keeps the last
//! good set of that URL, so tokens keep verifying through an outage; a key
//! leaves only when a successful fetch no longer lists it.

use super::keys::{parse_fetched_set, VerifyKey};
use crate::outbound_tls;
use crate::Error;
use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Bound on one fetch, connect to last body byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Real key sets are a few KB.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// First retry after a failed scheduled round; doubles up to `refresh`.
const RETRY_MIN: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct JwksOptions {
    pub urls: Vec<String>,
    /// PEM CA certificates trusted for the URLs, besides the system roots.
    pub ca_cert: Option<PathBuf>,
    pub refresh: Duration,
    pub min_refetch: Duration,
}

/// A JWKS URL must be `https://`, or `http://` to a loopback host (a sidecar
/// or a test): keys fetched in clear text over a network could be swapped.
pub fn check_url(url: &str) -> Result<Uri, Error> {
    let bad = |why: &str| Error::Config(format!("OUTPOST_JWKS_URL {url:?}: {why}"));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let host = uri.host().ok_or_else(|| bad("has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(bad(
            "http:// is allowed only for loopback hosts; use https://",
        )),
        _ => Err(bad("must start with https://")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// At most one event per `every`: the limit on fetches caused by unknown kids.
#[derive(Debug)]
pub struct Cooldown {
    every: Duration,
    last: Option<Instant>,
}

impl Cooldown {
    pub fn new(every: Duration) -> Cooldown {
        Cooldown { every, last: None }
    }

    /// True (and starts a new interval) if the last event is `every` ago.
    pub fn try_take(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// The last good keys of every URL (`None`: never fetched successfully).
pub struct KeySnapshot {
    sets: Vec<Option<Arc<Vec<VerifyKey>>>>,
}

impl KeySnapshot {
    pub fn keys(&self) -> impl Iterator<Item = &VerifyKey> {
        self.sets.iter().flatten().flat_map(|s| s.iter())
    }

    /// Whether every URL has delivered a set at least once.
    pub fn complete(&self) -> bool {
        self.sets.iter().all(Option::is_some)
    }
}

struct Source {
    uri: Uri,
    url: String,
}

pub struct RemoteJwks {
    sources: Vec<Source>,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    refresh: Duration,
    current: RwLock<Arc<KeySnapshot>>,
    cooldown: Mutex<Cooldown>,
    /// Held for the whole of a fetch round: rounds never overlap.
    fetching: tokio::sync::Mutex<()>,
    /// Rounds completed; tells a waiter that a round ran while it waited.
    rounds: AtomicU64,
    last_round_ok: AtomicBool,
}

impl RemoteJwks {
    /// Checks the URLs and builds the HTTPS client; fetches nothing yet.
    pub fn new(opts: &JwksOptions) -> Result<RemoteJwks, Error> {
        let sources = opts
            .urls
            .iter()
            .map(|u| {
                Ok(Source {
                    uri: check_url(u)?,
                    url: u.clone(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let any_https = sources.iter().any(|s| s.uri.scheme_str() == Some("https"));
        let roots = match outbound_tls::system_roots_plus(
            opts.ca_cert.as_deref(),
            "OUTPOST_JWKS_CA_CERT",
        ) {
            Ok(r) => r,
            // Loopback http:// needs no roots at all.
            Err(_) if !any_https => rustls::RootCertStore::empty(),
            Err(e) => return Err(e),
        };
        let tls = outbound_tls::config_with_roots(roots)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let n = sources.len();
        Ok(RemoteJwks {
            sources,
            client,
            refresh: opts.refresh,
            current: RwLock::new(Arc::new(KeySnapshot {
                sets: (0..n).map(|_| None).collect(),
            })),
            cooldown: Mutex::new(Cooldown::new(opts.min_refetch)),
            fetching: tokio::sync::Mutex::new(()),
            rounds: AtomicU64::new(0),
            last_round_ok: AtomicBool::new(false),
        })
    }

    pub fn snapshot(&self) -> Arc<KeySnapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fetches every URL once; true if all succeeded.
    pub async fn refresh_now(&self) -> bool {
        let _round = self.fetching.lock().await;
        self.round().await
    }

    /// Called when a token names a kid no set holds. Returns once the sets
    /// are as fresh as the rate limit allows.
    pub async fn refresh_for_unknown_kid(&self) {
        let seen = self.rounds.load(Ordering::Acquire);
        let _round = self.fetching.lock().await;
        if self.rounds.load(Ordering::Acquire) != seen {
            return; // a round finished while we waited: judge by its result
        }
        let allowed = self
            .cooldown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(Instant::now());
        if allowed {
            self.round().await;
        }
    }

    /// Refreshes on schedule until `stop`; after a failed round it retries
    /// sooner (from 5 s, doubling up to the refresh interval).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut retry = RETRY_MIN.min(self.refresh);
        loop {
            let wait = if self.last_round_ok.load(Ordering::Acquire) {
                self.refresh
            } else {
                retry
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::stopped(&mut stop) => return,
            }
            if self.refresh_now().await {
                retry = RETRY_MIN.min(self.refresh);
            } else {
                retry = (retry * 2).min(self.refresh);
            }
        }
    }

    async fn round(&self) -> bool {
        let results =
            futures_util::future::join_all(self.sources.iter().map(|s| self.fetch(s))).await;
        let mut ok = true;
        {
            let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
            let mut sets = current.sets.clone();
            for ((i, source), result) in self.sources.iter().enumerate().zip(results) {
                match result {
                    Ok(keys) => {
                        log_change(&source.url, sets[i].as_deref(), &keys);
                        sets[i] = Some(Arc::new(keys));
                    }
                    Err(e) => {
                        ok = false;
                        if sets[i].is_some() {
                            tracing::warn!(url = %source.url, error = %e, "JWKS fetch failed; keeping the last good keys");
                        } else {
                            tracing::error!(url = %source.url, error = %e, "JWKS fetch failed; no keys from this URL yet");
                        }
                    }
                }
            }
            *current = Arc::new(KeySnapshot { sets });
        }
        self.last_round_ok.store(ok, Ordering::Release);
        self.rounds.fetch_add(1, Ordering::Release);
        ok
    }

    async fn fetch(&self, source: &Source) -> Result<Vec<VerifyKey>, String> {
        let req = http::Request::get(source.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("outpost-relay/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let body = tokio::time::timeout(FETCH_TIMEOUT, async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| crate::error::error_chain(&e))?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("HTTP {}", resp.status()));
            }
            Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the body: {e}"))
        })
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        let (keys, skipped) = parse_fetched_set(&body)?;
        for why in skipped {
            tracing::warn!(url = %source.url, "skipping a JWKS key: {why}");
        }
        Ok(keys)
    }
}

fn log_change(url: &str, old: Option<&Vec<VerifyKey>>, new: &[VerifyKey]) {
    let kids = |keys: &mut dyn Iterator<Item = &VerifyKey>| {
        let mut v: Vec<String> = keys
            .map(|k| k.kid.clone().unwrap_or_else(|| "<no kid>".into()))
            .collect();
        v.sort();
        v
    };
    let new_kids = kids(&mut new.iter());
    if old.map(|o| kids(&mut o.iter())) != Some(new_kids.clone()) {
        tracing::info!(url, kids = ?new_kids, "JWKS keys loaded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_or_loopback_http() {
        assert!(check_url("https://p.supabase.co/auth/v1/.well-known/jwks.json").is_ok());
        for ok in [
            "http://127.0.0.1:9999/jwks",
            "http://localhost/jwks",
            "http://[::1]:80/jwks",
            "http://127.8.0.1/jwks",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/jwks",
            "http://10.0.0.1/jwks",
            "http://localhost.example.com/jwks",
            "ftp://127.0.0.1/jwks",
            "/jwks.json",
        ] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.contains("OUTPOST_JWKS_URL"), "{bad}: {e}");
        }
        assert!(check_url("http://example.com/jwks")
            .unwrap_err()
            .to_string()
            .contains("loopback"));
    }

    #[test]
    fn cooldown_allows_one_event_per_interval() {
        let t0 = Instant::now();
        let mut c = Cooldown::new(Duration::from_secs(30));
        assert!(c.try_take(t0));
        assert!(!c.try_take(t0 + Duration::from_secs(1)));
        assert!(!c.try_take(t0 + Duration::from_secs(29)));
        assert!(c.try_take(t0 + Duration::from_secs(30)));
        assert!(!c.try_take(t0 + Duration::from_secs(31)));
    }
}
