//! HTTPS on the relay, with a private CA made here (rcgen) and real TLS
//! clients (hyper-rustls): h1 and h2 chosen by ALPN, the sync stream over
//! both, and the certificate replaced on SIGHUP without a restart.
//!
//! The relay runs in this test process, so SIGHUP is sent to the process
//! itself: the relay's handler (installed before it serves) takes it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outpost_tests::relay::{block_on, Relay, SyncStream, TIMEOUT};
use outpost_tests::TestDb;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CA and a certificate it signed for the relay's loopback names.
struct Pki {
    ca: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Outpost test CA {name}"));
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, format!("relay {name}"));
    let cert = leaf.signed_by(&key, &ca).unwrap();
    Pki {
        ca: ca.der().clone(),
        // The chain a server sends: its certificate, then the issuer's.
        cert_pem: format!("{}{}", cert.pem(), ca.pem()),
        key_pem: key.serialize_pem(),
    }
}

fn write_pki(dir: &Path, pki: &Pki) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
    // Written aside and renamed, as a certificate manager does.
    for (path, text) in [(&cert, &pki.cert_pem), (&key, &pki.key_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    (cert, key)
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A client that trusts only `ca` and speaks only `version`.
fn client(ca: &CertificateDer<'static>, version: http::Version) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_max_idle_per_host(0);
    if version == http::Version::HTTP_2 {
        b.http2_only(true);
        b.build(builder.enable_http2().build())
    } else {
        b.build(builder.enable_http1().build())
    }
}

fn get(
    client: &HttpsClient,
    url: &str,
    token: Option<&str>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let mut b = http::Request::get(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b.body(Full::new(Bytes::new())).unwrap();
    block_on(async {
        tokio::time::timeout(TIMEOUT, client.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("{e:?}"))
    })
}

fn text(res: http::Response<hyper::body::Incoming>) -> String {
    let bytes = block_on(res.into_body().collect()).unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn metric(client: &HttpsClient, base: &str, name: &str) -> u64 {
    let body = text(get(client, &format!("{base}/metrics"), None).unwrap());
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[test]
fn https_with_h1_and_h2_by_alpn_and_certificates_reloaded_on_sighup() {
    let db = TestDb::with_rules(
        "tls",
        "CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text);
         INSERT INTO notes VALUES (1, 'u1', 'over tls'), (2, 'u2', 'not mine');",
        "bucket_definitions:\n  mine:\n    parameters: SELECT request.user_id() AS owner\n    \
         data:\n      - SELECT id, body FROM notes WHERE owner = bucket.owner\n",
    );
    let dir = std::env::temp_dir().join(format!("outpost-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = pki("one");
    let (cert, key) = write_pki(&dir, &first);
    let relay = Relay::start_with(&db, |a| {
        a.tls_cert = Some(cert.clone());
        a.tls_key = Some(key.clone());
    });
    let base = relay.url.clone();
    let token = relay.token("u1", 300);

    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        let client = client(&first.ca, version);
        // /health is 503 until the relay's first tick: wait for it (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let res = loop {
            let res = get(&client, &format!("{base}/health"), None).unwrap();
            if res.status() == 200 || std::time::Instant::now() > deadline {
                break res;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), version, "negotiated by ALPN");
        // The sync stream over TLS, in this HTTP version.
        let req = http::Request::post(format!("{base}/sync/stream"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({"raw_data": true}).to_string(),
            )))
            .unwrap();
        let res = block_on(client.request(req)).unwrap();
        assert_eq!(res.version(), version);
        let mut s = SyncStream::open(res);
        let lines = s.until("checkpoint_complete");
        let text: String = lines.iter().map(|l| l.to_string()).collect();
        assert!(
            text.contains("over tls") && !text.contains("not mine"),
            "{text}"
        );
    }
    // Plain HTTP on the TLS port gets no answer.
    assert!(outpost_tests::relay::block_on(async {
        let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let uri = format!("http://127.0.0.1:{}/health", relay.addr.port());
        tokio::time::timeout(TIMEOUT, plain.get(uri.parse().unwrap())).await
    })
    .map(|r| r.is_err())
    .unwrap_or(true));

    // A new certificate from another CA, then SIGHUP.
    let old_client = client(&first.ca, http::Version::HTTP_11);
    let second = pki("two");
    write_pki(&dir, &second);
    let new_client = client(&second.ca, http::Version::HTTP_2);
    assert!(
        get(&new_client, &format!("{base}/health"), None).is_err(),
        "the new CA is not trusted before the reload"
    );
    let reloads = metric(&old_client, &base, "outpost_relay_tls_reloads_total");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        // Either client may answer while the reload has not happened yet, and
        // the reload may land between the two attempts, so both can fail once.
        let now = get(&new_client, &format!("{base}/metrics"), None)
            .or_else(|_| get(&old_client, &format!("{base}/metrics"), None))
            .map(text);
        if now
            .is_ok_and(|m| m.contains(&format!("outpost_relay_tls_reloads_total {}", reloads + 1)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no reload after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    let res = get(&new_client, &format!("{base}/health"), None).expect("new certificate served");
    assert_eq!(res.status(), 200);
    let err = get(&old_client, &format!("{base}/health"), None)
        .expect_err("the old CA no longer verifies the relay");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A broken file on reload keeps the working certificate.
    std::fs::write(&key, "not a key").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while metric(&new_client, &base, "outpost_relay_tls_reload_errors_total") == 0 {
        assert!(Instant::now() < deadline, "failed reload not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get(&new_client, &format!("{base}/health"), None)
            .unwrap()
            .status(),
        200
    );
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
