//! `OUTPOST_JWKS_URL` end to end: a real HTTPS JWKS server (rustls, with a
//! certificate from a private CA made here; the relay trusts it through
//! `OUTPOST_JWKS_CA_CERT`) publishes ES256 keys, rotates them mid-run and
//! goes down, while an in-process relay verifies tokens signed with them.
//! The server counts the requests it answers, so the rate limit on fetches
//! caused by unknown kids is measured, not assumed. Also: `iss` checks and
//! the minimum HS256 secret length at startup.

mod faults_support;
mod tls_support;

use base64::Engine as _;
use faults_support::{binary, free_addr, wait_for};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tls_support::{Ca, TempDir};

/// An ES256 signing key and its public JWK.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // Uncompressed point: 0x04 || x || y.
        let raw = pair.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4));
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        SigningKey {
            kid: kid.into(),
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..]),
            }),
        }
    }

    fn token(&self, sub: &str, extra: Value) -> String {
        self.token_as(&self.kid, sub, extra)
    }

    /// A token signed by this key but naming `kid`.
    fn token_as(&self, kid: &str, sub: &str, extra: Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = json!({"sub": sub, "iat": now, "exp": now + 600});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, &self.encoding).unwrap()
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// What the JWKS server answers.
#[derive(Clone)]
enum Answer {
    Keys(String),
    Status(u16),
    Body(String),
}

/// A minimal HTTPS server for one path, one request per connection.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
    ca_file: std::path::PathBuf,
}

impl JwksServer {
    fn start(initial: String) -> JwksServer {
        let dir = TempDir::new("jwks");
        let ca = Ca::new("Outpost test JWKS CA");
        let leaf = ca.issue(&["127.0.0.1", "localhost"]);
        let ca_file = dir.write("ca.pem", &ca.pem());
        let certs = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Keys(initial)));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (answer, requests, stop) = (answer.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(tcp) = conn else { continue };
                    let (config, answer, requests) =
                        (config.clone(), answer.clone(), requests.clone());
                    std::thread::spawn(move || {
                        let _ = serve_one(tcp, config, &answer, &requests);
                    });
                }
            })
        };
        JwksServer {
            addr,
            answer,
            requests,
            stop,
            thread: Some(thread),
            _dir: dir,
            ca_file,
        }
    }

    fn url(&self) -> String {
        format!(
            "https://127.0.0.1:{}/.well-known/jwks.json",
            self.addr.port()
        )
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr); // wakes accept()
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    answer: &Mutex<Answer>,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut request_line = String::new();
    tls.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if tls.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let path_ok = request_line.starts_with("GET /.well-known/jwks.json ");
    requests.fetch_add(1, Ordering::SeqCst);
    let answer = answer.lock().unwrap().clone();
    let (status, body) = match (path_ok, answer) {
        (false, _) => (404, String::new()),
        (true, Answer::Keys(b) | Answer::Body(b)) => (200, b),
        (true, Answer::Status(s)) => (s, "unavailable".into()),
    };
    let tls = tls.get_mut();
    write!(
        tls,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.flush()?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// A relay trusting `server`'s CA, with the given refresh settings.
fn relay_for(db: &TestDb, server: &JwksServer, refresh_secs: u64, issuer: Option<&str>) -> Relay {
    relay_for_all(db, &[server], refresh_secs, issuer)
}

/// A relay fetching from every server, trusting all their CAs (one bundle).
fn relay_for_all(
    db: &TestDb,
    servers: &[&JwksServer],
    refresh_secs: u64,
    issuer: Option<&str>,
) -> Relay {
    let bundle_dir = TempDir::new("jwks-bundle");
    let bundle: String = servers
        .iter()
        .map(|s| std::fs::read_to_string(&s.ca_file).unwrap())
        .collect();
    let ca = bundle_dir.write("bundle.pem", &bundle);
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    Relay::start_with(db, move |a| {
        a.idp.jwks_url = urls;
        a.idp.jwks_ca_cert = Some(ca);
        a.idp.jwks_refresh_secs = refresh_secs;
        a.idp.jwks_min_refetch_secs = 3600;
        a.idp.jwt_issuer = issuer.map(|i| vec![i.to_string()]).unwrap_or_default();
    })
}

/// The status of an authenticated request, and its body.
fn check(relay: &Relay, token: &str) -> (u16, String) {
    let r = relay.request(
        "GET",
        "/write-checkpoint2.json?client_id=c1",
        Some(token),
        None,
    );
    (r.status, r.body)
}

#[test]
fn new_kid_is_fetched_once_and_forged_kids_are_rate_limited() {
    let db = TestDb::new("jwks_rotate");
    let k1 = SigningKey::new("k1");
    let k2 = SigningKey::new("k2");
    let server = JwksServer::start(jwks(&[&k1]));
    let relay = relay_for(&db, &server, 3600, None);
    assert_eq!(server.requests(), 1, "fetched once at start");

    let t1 = k1.token("u1", json!({}));
    assert_eq!(check(&relay, &t1).0, 200);

    // The provider publishes k2 and starts signing with it: the first token
    // naming k2 makes the relay fetch at once; no restart.
    server.set(Answer::Keys(jwks(&[&k1, &k2])));
    let t2 = k2.token("u2", json!({}));
    assert_eq!(check(&relay, &t2).0, 200);
    assert_eq!(server.requests(), 2, "one fetch for the unknown kid");
    // The old key is still in the set: its tokens still work.
    assert_eq!(check(&relay, &t1).0, 200);

    // Forged kids, several at a time: each is refused, none makes the relay
    // fetch again within the interval (here an hour).
    let forged: Vec<String> = (0..40)
        .map(|i| k2.token_as(&format!("forged-{i}"), "u3", json!({})))
        .collect();
    std::thread::scope(|s| {
        for chunk in forged.chunks(10) {
            let relay = &relay;
            s.spawn(move || {
                for t in chunk {
                    let (status, body) = check(relay, t);
                    assert_eq!(status, 401, "{body}");
                    assert!(body.contains("unknown key id"), "{body}");
                }
            });
        }
    });
    assert_eq!(
        server.requests(),
        2,
        "forged kids must not cause fetches beyond the rate limit"
    );
    assert_eq!(check(&relay, &t2).0, 200);
}

#[test]
fn removed_keys_stop_working_and_outages_keep_the_last_good_set() {
    let db = TestDb::new("jwks_outage");
    let k1 = SigningKey::new("k1");
    let k2 = SigningKey::new("k2");
    let server = JwksServer::start(jwks(&[&k1, &k2]));
    // Refresh every second, so the test sees scheduled fetches.
    let relay = relay_for(&db, &server, 1, None);
    let (t1, t2) = (k1.token("u1", json!({})), k2.token("u2", json!({})));
    assert_eq!(check(&relay, &t1).0, 200);
    assert_eq!(check(&relay, &t2).0, 200);

    // k1 leaves the set: its tokens are refused once the relay refreshes.
    server.set(Answer::Keys(jwks(&[&k2])));
    wait_for(
        "k1 tokens refused after k1 left the set",
        Duration::from_secs(15),
        || (check(&relay, &t1).0 == 401).then_some(()),
    );
    assert_eq!(check(&relay, &t2).0, 200);

    // The provider fails (HTTP 503, then a body that is no JWKS): the relay
    // keeps verifying with the last good set. Two more requests seen means
    // at least one failed fetch was complete before the check.
    for broken in [
        Answer::Status(503),
        Answer::Body("<html>oops</html>".into()),
    ] {
        server.set(broken);
        let seen = server.requests();
        wait_for("failed refreshes", Duration::from_secs(30), || {
            (server.requests() >= seen + 2).then_some(())
        });
        assert_eq!(check(&relay, &t2).0, 200, "cached k2 still verifies");
        assert_eq!(check(&relay, &t1).0, 401);
    }

    // The provider is gone altogether (connection refused).
    drop(server);
    assert_eq!(check(&relay, &t2).0, 200);
}

#[test]
fn several_urls_keep_their_own_last_good_sets() {
    let db = TestDb::new("jwks_multi");
    let (ka, kb) = (SigningKey::new("a1"), SigningKey::new("b1"));
    let a = JwksServer::start(jwks(&[&ka]));
    let b = JwksServer::start(jwks(&[&kb]));
    let relay = relay_for_all(&db, &[&a, &b], 1, None);
    let (ta, tb) = (ka.token("u1", json!({})), kb.token("u2", json!({})));
    assert_eq!(check(&relay, &ta).0, 200);
    assert_eq!(check(&relay, &tb).0, 200);
    // One provider fails; the other's keys and the failed one's last good
    // set both keep working.
    b.set(Answer::Status(500));
    let seen = b.requests();
    wait_for("failed refreshes of b", Duration::from_secs(30), || {
        (b.requests() >= seen + 2).then_some(())
    });
    assert_eq!(check(&relay, &ta).0, 200);
    assert_eq!(check(&relay, &tb).0, 200);
}

#[test]
fn issuer_is_checked() {
    let db = TestDb::new("jwks_iss");
    let k = SigningKey::new("k");
    let server = JwksServer::start(jwks(&[&k]));
    let iss = "https://project.supabase.co/auth/v1";
    let relay = relay_for(&db, &server, 3600, Some(iss));
    assert_eq!(check(&relay, &k.token("u1", json!({"iss": iss}))).0, 200);
    let (status, body) = check(
        &relay,
        &k.token("u1", json!({"iss": "https://evil.example"})),
    );
    assert_eq!(status, 401);
    assert!(body.contains("wrong issuer"), "{body}");
    let (status, body) = check(&relay, &k.token("u1", json!({})));
    assert_eq!(status, 401);
    assert!(body.contains("missing iss"), "{body}");
    // The HS256 secret's tokens carry no iss: refused the same way.
    assert_eq!(check(&relay, &relay.token("u1", 60)).0, 401);
}

#[test]
fn short_hs256_secret_and_plain_http_urls_are_startup_errors() {
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(binary("outpost-relay"));
        cmd.arg("serve")
            .env("OUTPOST_DATABASE_URL", "host=127.0.0.1 port=1 user=nobody")
            .env("OUTPOST_LISTEN", free_addr().to_string())
            .env_remove("OUTPOST_JWT_SECRET")
            .env_remove("OUTPOST_JWKS_URL");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run outpost-relay");
        assert!(!out.status.success(), "the relay must refuse to start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&[("OUTPOST_JWT_SECRET", "too-short-secret")]);
    assert!(e.contains("16 bytes") && e.contains("at least 32"), "{e}");
    let e = run(&[("OUTPOST_JWKS_URL", "http://idp.example.com/jwks.json")]);
    assert!(e.contains("loopback") && e.contains("https://"), "{e}");
}
