//! The relay's HTTP surface for real networks, end to end on real Postgres
//! over real sockets (hyper's client): CORS on every client endpoint,
//! compressed streams whose live lines arrive at once, checkpoint requests,
//! and the connection cap.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use outpost_tests::relay::{block_on, Decoder, Relay, SyncStream, TIMEOUT};
use outpost_tests::TestDb;
use postgres::Client;
use serde_json::{json, Value};

const SCHEMA: &str = "
CREATE TABLE items (id int PRIMARY KEY, owner text NOT NULL, title text NOT NULL);
INSERT INTO items SELECT g, 'u' || (g % 2), 'item number ' || g FROM generate_series(1, 2000) g;
";

const RULES: &str = "
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner, title FROM items WHERE owner = bucket.owner
";

fn setup(label: &str) -> (TestDb, Client) {
    let db = TestDb::with_rules(label, SCHEMA, RULES);
    let c = db.connect();
    (db, c)
}

fn header(res: &http::Response<hyper::body::Incoming>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

const CLIENT_PATHS: [(&str, &str); 5] = [
    ("POST", "/sync/stream"),
    ("GET", "/write-checkpoint2.json"),
    ("POST", "/sync/checkpoint-request"),
    ("POST", "/crud"),
    ("GET", "/schema"),
];

fn preflight(
    relay: &Relay,
    path: &str,
    method: &str,
    origin: &str,
) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::builder()
        .method("OPTIONS")
        .uri(format!("{}{path}", relay.url))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-user-agent",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    relay.send(req)
}

#[test]
fn cors_preflights_and_responses_on_every_client_endpoint() {
    let (db, _c) = setup("http_cors");
    let relay = Relay::start(&db);
    let origin = "http://127.0.0.1:9";
    for (method, path) in CLIENT_PATHS {
        let res = preflight(&relay, path, method, origin);
        assert!(
            res.status().is_success(),
            "{path}: preflight {}",
            res.status()
        );
        assert_eq!(
            header(&res, "access-control-allow-origin").as_deref(),
            Some("*"),
            "{path}"
        );
        let methods = header(&res, "access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains(method), "{path}: {methods}");
        let allowed = header(&res, "access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for h in ["authorization", "content-type", "x-user-agent"] {
            assert!(allowed.contains(h), "{path}: {h} not in {allowed}");
        }
    }
    // Actual responses carry the header too, errors included.
    let token = relay.token("u1", 300);
    let mut req = relay.build("GET", "/schema", Some(&token), None);
    req.headers_mut().insert("origin", origin.parse().unwrap());
    let res = relay.send(req);
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let mut req = relay.build("GET", "/schema", None, None);
    req.headers_mut().insert("origin", origin.parse().unwrap());
    let res = relay.send(req);
    assert_eq!(res.status(), 401);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let mut req = relay.build("POST", "/sync/stream", Some(&token), Some("{}"));
    req.headers_mut().insert("origin", origin.parse().unwrap());
    let res = relay.send(req);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let mut s = SyncStream::open(res);
    assert!(s.line().get("checkpoint").is_some());
    // Operator endpoints are not for browsers.
    let res = preflight(&relay, "/metrics", "GET", origin);
    assert_eq!(res.status(), 405);
}

#[test]
fn cors_origins_restrict_to_the_list() {
    let (db, _c) = setup("http_cors_list");
    let allowed = "https://app.example.com";
    let relay = Relay::start_with(&db, |a| {
        a.cors_origins = vec![allowed.into(), "http://127.0.0.1:3000".into()]
    });
    let res = preflight(&relay, "/sync/stream", "POST", allowed);
    assert!(res.status().is_success());
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(allowed)
    );
    let res = preflight(&relay, "/sync/stream", "POST", "https://evil.example.com");
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    let mut req = relay.build("GET", "/schema", Some(&relay.token("u1", 60)), None);
    req.headers_mut()
        .insert("origin", "https://evil.example.com".parse().unwrap());
    let res = relay.send(req);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
}

/// A compressed sync stream read frame by frame.
struct Compressed {
    body: hyper::body::Incoming,
    decoder: Decoder,
    plain: Vec<u8>,
    wire: usize,
}

impl Compressed {
    /// The next decoded line; fails if it does not arrive within [`TIMEOUT`].
    fn line(&mut self) -> Value {
        loop {
            if let Some(i) = self.plain.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.plain.drain(..=i).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let frame = block_on(async { tokio::time::timeout(TIMEOUT, self.body.frame()).await })
                .expect("the next line arrives without waiting for more data")
                .expect("stream open")
                .unwrap();
            let data = frame.into_data().unwrap();
            self.wire += data.len();
            let decoded = self.decoder.feed(&data);
            self.plain.extend_from_slice(&decoded);
        }
    }

    fn until_complete(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let l = self.line();
            let done = l.get("checkpoint_complete").is_some();
            out.push(l);
            if done {
                return out;
            }
        }
    }
}

fn rows_in(lines: &[Value]) -> usize {
    lines
        .iter()
        .filter_map(|l| l.get("data"))
        .map(|d| d["data"].as_array().unwrap().len())
        .sum()
}

#[test]
fn streams_are_compressed_when_accepted_and_live_lines_arrive_at_once() {
    let (db, mut c) = setup("http_compress");
    let relay = Relay::start(&db);
    let token = relay.token("u1", 300);
    let body = json!({"raw_data": true, "client_id": "c1"}).to_string();
    for (accept, expected) in [
        ("gzip, deflate", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),
    ] {
        let mut req = relay.build("POST", "/sync/stream", Some(&token), Some(&body));
        req.headers_mut()
            .insert("accept-encoding", accept.parse().unwrap());
        let res = relay.send(req);
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "content-encoding").as_deref(), Some(expected));
        assert_eq!(header(&res, "x-accel-buffering").as_deref(), Some("no"));
        let mut s = Compressed {
            body: res.into_body(),
            decoder: Decoder::new(Some(expected)),
            plain: Vec::new(),
            wire: 0,
        };
        let first = s.until_complete();
        let held: i64 = c
            .query_one("SELECT count(*) FROM items WHERE owner = 'u1'", &[])
            .unwrap()
            .get(0);
        assert_eq!(rows_in(&first) as i64, held, "{expected}");
        let plain_len: usize = first.iter().map(|l| l.to_string().len() + 1).sum();
        assert!(
            s.wire * 3 < plain_len,
            "{expected}: {} bytes on the wire for {plain_len} of NDJSON",
            s.wire
        );
        // A live change: its lines must decode from what was sent, with
        // nothing after them to push them out of the encoder.
        let id = if expected == "gzip" { 5000 } else { 5002 };
        c.execute("INSERT INTO items VALUES ($1, 'u1', 'live')", &[&id])
            .unwrap();
        let live = s.until_complete();
        assert!(live[0].get("checkpoint_diff").is_some(), "{live:?}");
        assert_eq!(rows_in(&live), 1, "{live:?}");
        assert!(live.iter().any(|l| l.to_string().contains("live")));
    }
    // Without Accept-Encoding: plain NDJSON.
    let req = relay.build("POST", "/sync/stream", Some(&token), Some(&body));
    let res = relay.send(req);
    assert_eq!(header(&res, "content-encoding"), None);
    let mut s = SyncStream::open(res);
    assert!(s.line().get("checkpoint").is_some());
}

#[test]
fn checkpoint_requests_reach_the_stream_and_client_id_is_optional() {
    let (db, _c) = setup("http_cpreq");
    let relay = Relay::start(&db);
    let token = relay.token("u1", 300);
    let mut s = relay.stream(&token, &json!({"raw_data": true, "client_id": "c1"}));
    s.until("checkpoint_complete");

    let ask = |id: Value| {
        relay.request(
            "POST",
            "/sync/checkpoint-request",
            Some(&token),
            Some(&json!({"client_id": "c1", "checkpoint_request_id": id})),
        )
    };
    let r = ask(json!("5"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"data": {"checkpoint_request_id": "5"}}));
    // The stream acknowledges it in write_checkpoint, with nothing else changed.
    let lines = s.until("checkpoint_complete");
    let diff = lines
        .iter()
        .find_map(|l| l.get("checkpoint_diff"))
        .unwrap_or_else(|| panic!("no diff: {lines:?}"));
    assert_eq!(diff["write_checkpoint"], "5");
    // A stale id changes nothing and learns the stored one; numbers work too.
    assert_eq!(ask(json!(3)).json()["data"]["checkpoint_request_id"], "5");
    for bad in [
        json!("0"),
        json!("-1"),
        json!("9223372036854775808"),
        json!("x"),
    ] {
        let r = ask(bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let r = relay.request(
        "POST",
        "/sync/checkpoint-request",
        None,
        Some(&json!({"checkpoint_request_id": "1"})),
    );
    assert_eq!(r.status, 401);
    // The legacy endpoint continues the same sequence.
    let r = relay.request(
        "GET",
        "/write-checkpoint2.json?client_id=c1",
        Some(&token),
        None,
    );
    assert_eq!(r.json()["data"]["write_checkpoint"], "6");
    let lines = s.until("checkpoint_complete");
    assert!(
        lines
            .iter()
            .any(|l| l["checkpoint_diff"]["write_checkpoint"] == "6"),
        "{lines:?}"
    );
    // Without client_id: the empty client id, as a stream without one reads.
    let r = relay.request("GET", "/write-checkpoint2.json", Some(&token), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["write_checkpoint"], "1");
    // Its stream carries it once a tick published it (in its first
    // checkpoint, or in a diff after).
    let mut anon = relay.stream(&token, &json!({"raw_data": true}));
    let mut seen: Vec<Value> = Vec::new();
    while !seen.iter().any(|l| {
        l["checkpoint"]["write_checkpoint"] == "1"
            || l["checkpoint_diff"]["write_checkpoint"] == "1"
    }) {
        seen.push(anon.line());
    }
}

#[test]
fn connections_over_the_cap_get_503_and_are_closed() {
    let (db, _c) = setup("http_cap");
    let relay = Relay::start_with(&db, |a| a.max_connections = 1);
    let token = relay.token("u1", 300);
    // The one slot: an open stream. The start-up health check's connection
    // holds the slot until the relay has seen it close, so the first tries
    // may still be refused.
    let body = json!({"raw_data": true}).to_string();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut s = loop {
        let res = relay.send(relay.build("POST", "/sync/stream", Some(&token), Some(&body)));
        if res.status() != 503 || std::time::Instant::now() > deadline {
            break outpost_tests::relay::SyncStream::open(res);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    s.until("checkpoint_complete");
    let r = relay.request("GET", "/health", None, None);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("too many connections"), "{}", r.body);
    // On a raw socket: the answer, then the server closes (EOF), at once.
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(relay.addr).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    sock.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    sock.read_to_end(&mut all)
        .expect("closed by the relay, not by our timeout");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    // More than the socket buffers of both ends hold (~20 MB of NDJSON).
    let db = TestDb::with_rules(
        "http_stall",
        "CREATE TABLE blobs (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO blobs SELECT g, repeat(md5(g::text), 5) FROM generate_series(1, 100000) g;",
        "bucket_definitions:\n  all:\n    data: SELECT * FROM blobs\n",
    );
    let relay = Relay::start_with(&db, |a| a.send_timeout_secs = 1);
    let metric = |name: &str| -> u64 {
        let text = relay.request("GET", "/metrics", None, None).body;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(relay.addr).unwrap();
    let body = json!({"raw_data": true}).to_string();
    write!(
        sock,
        "POST /sync/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        relay.token("u1", 300),
        body.len()
    )
    .unwrap();
    // Read nothing until the relay gives up on this client.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while metric("outpost_relay_streams_stalled_total") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled stream was never closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(metric("outpost_relay_streams_open"), 0);
    // What was queued can still be read, then the connection is gone.
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut sink = Vec::new();
    let got = sock.read_to_end(&mut sink);
    assert!(
        got.is_ok()
            || got
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the relay closed the connection: {got:?}"
    );
    let text = String::from_utf8_lossy(&sink[..sink.len().min(100)]).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !String::from_utf8_lossy(&sink).contains("checkpoint_complete"),
        "the stream was cut short"
    );
}
