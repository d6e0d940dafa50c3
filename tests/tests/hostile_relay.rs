//! The relay under hostile input, end to end on a socket (in-process relay,
//! real Postgres): forged and broken tokens, malformed and oversized bodies,
//! and slow clients (slowloris). Every bad request must get its 4xx, and the
//! relay must keep serving honest clients while and after it is attacked.
//!
//! Each test prints how many hostile inputs it tried (`hostile: …`).

mod faults_support;

use faults_support::{first_checkpoint, post, raw_request, try_get, wait_for};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AUDIENCE: &str = "outpost-hostile";
const WRITE_ROLE: &str = "outpost_hostile_writer";

fn setup(label: &str) -> TestDb {
    let mut admin = postgres::Client::connect(&outpost_tests::server_url(), postgres::NoTls)
        .expect("connect to Postgres");
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{WRITE_ROLE}') THEN
                 CREATE ROLE {WRITE_ROLE} NOLOGIN;
               END IF;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$"
        ))
        .unwrap();
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, owner text NOT NULL, v int NOT NULL);
         INSERT INTO items SELECT g, 'u' || (g % 3), 0 FROM generate_series(1, 30) g;
         GRANT SELECT, INSERT, UPDATE, DELETE ON items TO {WRITE_ROLE};
         SELECT outpost.grant_crud('{WRITE_ROLE}');"
    ))
    .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, v FROM items WHERE owner = bucket.owner
"],
    )
    .unwrap();
    db
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unsigned(header: &Value, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// Both authenticated endpoints answer 401 to `token`.
fn assert_401(addr: SocketAddr, what: &str, token: &str) {
    let (status, body) = first_checkpoint(addr, token);
    assert_eq!(
        status, 401,
        "{what}: /sync/stream answered {status}: {body}"
    );
    assert!(
        body.contains("PSYNC_S2101"),
        "{what}: 401 without the PowerSync auth error code: {body}"
    );
    let (status, body) = raw_request(
        addr,
        &format!(
            "GET /write-checkpoint2.json?client_id=x HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}"
        ),
        b"",
    );
    assert_eq!(
        status, 401,
        "{what}: /write-checkpoint2.json answered {status}: {body}"
    );
}

#[test]
fn bad_tokens_get_401_and_the_relay_keeps_serving() {
    let db = setup("hostile_jwt");
    let relay = Relay::start_with(&db, |a| a.jwt_audience = vec![AUDIENCE.into()]);
    let secret = relay.secret.clone();
    let t = now();
    let good = json!({"sub": "u1", "iat": t, "exp": t + 600, "aud": AUDIENCE});
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let hs = |c: &Value| sign(Algorithm::HS256, &secret, c);

    // The honest token works (and its stream holds u1's 10 rows).
    let (status, lines) = first_checkpoint(relay.addr, &hs(&good));
    assert_eq!(status, 200, "valid token refused: {lines}");
    assert_eq!(lines.matches("\"op\":\"PUT\"").count(), 10, "{lines}");

    let big_claim = "x".repeat(100 * 1024);
    let cases: Vec<(&str, String)> = vec![
        (
            "expired an hour ago",
            hs(&with(json!({"iat": t - 7200, "exp": t - 3600}))),
        ),
        (
            "expired beyond the 60 s leeway",
            hs(&with(json!({"iat": t - 600, "exp": t - 120}))),
        ),
        ("nbf an hour ahead", hs(&with(json!({"nbf": t + 3600})))),
        (
            "iat an hour ahead",
            hs(&with(json!({"iat": t + 3600, "exp": t + 7200}))),
        ),
        (
            "lifetime over 24 h",
            hs(&with(json!({"iat": t, "exp": t + 200_000}))),
        ),
        (
            "wrong signature",
            sign(Algorithm::HS256, "another-secret-0123456789", &good),
        ),
        ("signature of another token", {
            let a = hs(&good);
            let b = hs(&with(json!({"sub": "u2"})));
            let (head, _) = b.rsplit_once('.').unwrap();
            format!("{head}.{}", a.rsplit_once('.').unwrap().1)
        }),
        (
            "HS512 with the right secret",
            sign(Algorithm::HS512, &secret, &good),
        ),
        ("wrong audience", hs(&with(json!({"aud": "another-app"})))),
        (
            "audience list without ours",
            hs(&with(json!({"aud": ["a", "b"]}))),
        ),
        ("no audience", hs(&with(json!({"aud": null})))),
        (
            "alg none",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &good, ""),
        ),
        (
            "alg none with a signature",
            unsigned(&json!({"alg": "none"}), &good, "c2ln"),
        ),
        ("alg NONE", unsigned(&json!({"alg": "NONE"}), &good, "")),
        ("no sub", hs(&with(json!({"sub": null})))),
        ("empty sub", hs(&with(json!({"sub": ""})))),
        ("numeric sub", hs(&with(json!({"sub": 42})))),
        ("no exp", hs(&with(json!({"exp": null})))),
        ("string exp", hs(&with(json!({"exp": "tomorrow"})))),
        (
            "parameters not an object",
            hs(&with(json!({"parameters": "admin"}))),
        ),
        ("100 KB of garbage", "A".repeat(100 * 1024)),
        ("100 KB signed token", hs(&with(json!({"pad": big_claim})))),
        ("three empty parts", "..".into()),
        ("not base64", "!!!.???.***".into()),
        (
            "header not JSON",
            format!("{}.{}.", b64url(b"{{{"), b64url(b"{}")),
        ),
        (
            "two parts",
            hs(&good).rsplit_once('.').unwrap().0.to_string(),
        ),
    ];
    let mut tried = 0;
    for (what, token) in &cases {
        assert_401(relay.addr, what, token);
        tried += 2;
    }
    // Headers that carry no usable token.
    for (what, header) in [
        ("no authorization header", String::new()),
        ("empty bearer", "\r\nAuthorization: Bearer ".to_string()),
        (
            "basic auth",
            "\r\nAuthorization: Basic dTE6cGFzcw==".to_string(),
        ),
        ("scheme only", "\r\nAuthorization: Token".to_string()),
    ] {
        let body = b"{}";
        let (status, text) = raw_request(
            relay.addr,
            &format!(
                "POST /sync/stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}{header}",
                body.len()
            ),
            body,
        );
        assert_eq!(status, 401, "{what}: {status} {text}");
        tried += 1;
    }
    // Still serving, and the honest token still works.
    let (status, lines) = first_checkpoint(relay.addr, &hs(&good));
    assert_eq!(status, 200, "valid token refused after the attack: {lines}");
    assert_eq!(try_get(relay.addr, "/health").map(|r| r.0), Some(200));
    eprintln!("hostile: {tried} bad-token requests, all 401; relay still serving");
}

#[test]
fn malformed_and_oversized_bodies_get_4xx() {
    let db = setup("hostile_body");
    let relay = Relay::start_with(&db, |a| {
        a.write_role = Some(WRITE_ROLE.into());
        a.max_body_bytes = 64 * 1024;
        // Below the 2 MiB bodies sent (its default, 32 MiB, fits big resumes).
        a.max_sync_body_bytes = 1 << 20;
    });
    let token = relay.token("u1", 600);
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("truncated object", b"{".to_vec()),
        ("not JSON", b"hello".to_vec()),
        // (`[]` is accepted: serde reads a struct from a sequence too, and an
        // empty one is the default request; harmless, so not listed.)
        ("string", b"\"x\"".to_vec()),
        ("null", b"null".to_vec()),
        (
            "invalid UTF-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        ),
        ("NUL bytes", vec![0; 64]),
        ("buckets not a list", br#"{"buckets": 5}"#.to_vec()),
        (
            "bucket without name",
            br#"{"buckets": [{"after": "1"}]}"#.to_vec(),
        ),
        (
            "parameters not an object",
            br#"{"parameters": "x"}"#.to_vec(),
        ),
        ("20000-deep nesting", deep.clone().into_bytes()),
        ("trailing garbage", br#"{"buckets": []} xyz"#.to_vec()),
    ];
    let crud_malformed: Vec<(&str, Vec<u8>)> = vec![
        ("truncated object", b"{\"batch\": [".to_vec()),
        ("batch not a list", br#"{"batch": {}}"#.to_vec()),
        (
            "entry without op",
            br#"{"batch": [{"type": "items", "id": "1"}]}"#.to_vec(),
        ),
        (
            "unknown op",
            br#"{"batch": [{"op": "DROP", "type": "items", "id": "1"}]}"#.to_vec(),
        ),
        ("20000-deep nesting", deep.into_bytes()),
    ];
    let mut tried = 0;
    let mut wrong = Vec::new();
    for (path, cases) in [("/sync/stream", &malformed), ("/crud", &crud_malformed)] {
        for (what, body) in cases {
            let (status, text) = post(relay.addr, path, Some(&token), body);
            if status != 400 {
                wrong.push(format!("{path}, {what}: {status} {:.200}", text));
            }
            tried += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "malformed bodies not answered 400:\n{}",
        wrong.join("\n")
    );
    // Oversized: declared (refused before reading), chunked without a length
    // (refused while reading), and a crud batch with too many entries.
    let huge = vec![b' '; 2 << 20];
    for path in ["/sync/stream", "/crud"] {
        let (status, text) = post(relay.addr, path, Some(&token), &huge);
        assert_eq!(
            status, 413,
            "{path}, 2 MiB with Content-Length: {status} {text}"
        );
        let mut chunked = Vec::new();
        for piece in huge.chunks(16 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let (status, text) = raw_request(
            relay.addr,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer {token}"
            ),
            &chunked,
        );
        assert_eq!(status, 413, "{path}, 2 MiB chunked: {status} {text}");
        tried += 2;
    }
    let entries: Vec<Value> = (0..1001)
        .map(|i| json!({"op": "PUT", "type": "items", "id": i.to_string(), "data": {}}))
        .collect();
    let (status, text) = post(
        relay.addr,
        "/crud",
        Some(&token),
        json!({ "batch": entries }).to_string().as_bytes(),
    );
    assert_eq!(status, 413, "1001 crud entries: {status} {text}");
    tried += 1;
    // Huge headers: hyper refuses them (431) or closes; never a 2xx.
    let (status, _) = raw_request(
        relay.addr,
        &format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Junk: {}",
            "j".repeat(1 << 20)
        ),
        b"",
    );
    assert!(status == 0 || status == 431, "1 MiB header: {status}");
    tried += 1;
    // Wrong methods and paths.
    for (head, want) in [
        ("GET /sync/stream", 405),
        ("DELETE /crud", 405),
        ("GET /../../etc/passwd", 404),
        ("GET /nope", 404),
    ] {
        let (status, _) = raw_request(
            relay.addr,
            &format!("{head} HTTP/1.1\r\nHost: x\r\nConnection: close"),
            b"",
        );
        assert_eq!(status, want, "{head}");
        tried += 1;
    }
    // Nothing of it reached Postgres, and the relay still serves.
    let n: i64 = db
        .connect()
        .query_one("SELECT count(*) FROM items", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 30, "a refused request changed the database");
    let (status, lines) = first_checkpoint(relay.addr, &token);
    assert_eq!(
        status, 200,
        "honest stream refused after the attack: {lines}"
    );
    eprintln!("hostile: {tried} malformed/oversized requests, all 4xx; relay still serving");
}

/// What a slow client saw: when the relay gave up on it, and the status it
/// answered (0: closed without one).
struct Cut {
    after: Duration,
    status: u16,
}

/// Sends `head` then `trickle` one byte per `pace`, until the relay closes
/// the connection (or `give_up`).
fn slow_client(addr: SocketAddr, head: String, trickle: Vec<u8>, pace: Duration) -> Cut {
    let start = Instant::now();
    let give_up = Duration::from_secs(20);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(pace)).unwrap();
    let _ = s.write_all(head.as_bytes());
    let mut got = Vec::new();
    let mut i = 0;
    loop {
        // Closed, or answered (408)?
        let mut b = [0u8; 4096];
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if start.elapsed() > give_up {
            break;
        }
        if i < trickle.len() && s.write_all(&trickle[i..=i]).is_err() {
            break;
        }
        i += 1;
    }
    let text = String::from_utf8_lossy(&got);
    Cut {
        after: start.elapsed(),
        status: text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    }
}

#[test]
fn slow_clients_are_cut_off_and_do_not_block_others() {
    const TIMEOUT: u64 = 2;
    let db = setup("hostile_slow");
    let relay = Relay::start_with(&db, |a| a.read_timeout_secs = TIMEOUT);
    let token = relay.token("u1", 600);
    let addr = relay.addr;
    let pace = Duration::from_millis(500);
    let mut slow = Vec::new();
    for i in 0..8 {
        let token = token.clone();
        slow.push(std::thread::spawn(move || {
            let (kind, cut) = match i % 3 {
                // Headers one byte at a time.
                0 => (
                    "headers",
                    slow_client(
                        addr,
                        "POST /sync/stream HTTP/1.1\r\n".into(),
                        format!("Host: x\r\nAuthorization: Bearer {token}\r\nX-Pad: {}\r\n\r\n", "p".repeat(200)).into_bytes(),
                        pace,
                    ),
                ),
                // Complete headers, then the body one byte at a time.
                1 => (
                    "body",
                    slow_client(
                        addr,
                        format!("POST /sync/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"),
                        vec![b' '; 400],
                        pace,
                    ),
                ),
                // Connects and sends nothing.
                _ => ("idle", slow_client(addr, String::new(), vec![], pace)),
            };
            (kind, cut)
        }));
    }
    // Meanwhile honest clients are served promptly.
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(TIMEOUT + 1);
    while Instant::now() < deadline {
        let t = Instant::now();
        let (status, lines) = first_checkpoint(addr, &token);
        assert_eq!(
            status, 200,
            "honest client refused during slowloris: {lines}"
        );
        slowest = slowest.max(t.elapsed());
        served += 1;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "an honest stream took {slowest:?} to its first checkpoint during slowloris"
    );
    let limit = Duration::from_secs(TIMEOUT + 3);
    for h in slow {
        let (kind, cut) = h.join().unwrap();
        assert!(
            cut.after < limit,
            "slow {kind} client held its connection for {:?} (read timeout {TIMEOUT} s)",
            cut.after
        );
        assert_ne!(cut.status / 100, 2, "slow {kind} client got {}", cut.status);
        if kind == "body" {
            assert_eq!(cut.status, 408, "slow body: expected 408");
        }
        eprintln!(
            "slow {kind} client cut after {:?} (status {})",
            cut.after, cut.status
        );
    }
    wait_for("/health after slowloris", Duration::from_secs(5), || {
        (try_get(addr, "/health")?.0 == 200).then_some(())
    });
    eprintln!(
        "hostile: 8 slow clients cut within {limit:?}; {served} honest streams served meanwhile (slowest {slowest:?})"
    );
}
