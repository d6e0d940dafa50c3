//! The client on real networks (all on 127.0.0.1): half-open connections through
//! a TCP proxy, a proxy answering 403 to uploads, HTTPS with a private CA,
//! compressed streams, and the async runtime staying free while SQLite works.

mod support;

use bytes::Bytes;
use outpost_client::schema::Schema;
use outpost_client::{
    Credentials, Database, Error, SchemaMode, StaticConnector, SyncClient, SyncOptions,
    TransportOptions,
};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{good_stream, put, stream, Proxy, Reply, Seen, TestCa};

fn schema() -> Schema {
    Schema::from_json(
        r#"{"tables": [
            {"name": "todos", "columns": [{"name": "title", "type": "text"}, {"name": "done", "type": "integer"}]},
            {"name": "lists", "columns": [{"name": "name", "type": "text"}]}]}"#,
    )
    .unwrap()
}

fn connector(endpoint: &str) -> Arc<StaticConnector> {
    Arc::new(StaticConnector(Credentials {
        endpoint: endpoint.to_string(),
        token: "tok".into(),
    }))
}

fn options(once: bool) -> SyncOptions {
    SyncOptions {
        once,
        max_attempts: Some(if once { 1 } else { 100 }),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..SyncOptions::default()
    }
}

fn count(db: &Database, table: &str) -> i64 {
    db.query(&format!("SELECT count(*) AS n FROM {table}"), &[])
        .unwrap()[0]["n"]
        .as_i64()
        .unwrap()
}

/// Waits (bounded) until the status satisfies `f`.
async fn until(db: &Database, what: &str, f: impl Fn(&outpost_client::SyncStatus) -> bool) {
    let mut rx = db.status();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", db.status().borrow()))
        .unwrap();
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("outpost-net-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_dropped_and_the_client_reconnects() {
    // Stream k delivers checkpoint k, then keepalives every 100 ms, forever.
    let streams = Arc::new(AtomicU32::new(0));
    let n = streams.clone();
    let server = support::serve(Arc::new(move |s: &Seen| {
        if s.path != "/sync/stream" {
            return Reply::new(404, "{}");
        }
        let k = n.fetch_add(1, Ordering::SeqCst) + 1;
        let lines = if k == 1 {
            stream(&[
                json!({"checkpoint": {"last_op_id": "1", "buckets": [{"bucket": "b[]", "checksum": 1}]}}),
                json!({"data": {"bucket": "b[]", "data": [put(1, "t1", "one", 1)]}}),
                json!({"checkpoint_complete": {"last_op_id": "1"}}),
            ])
        } else {
            stream(&[
                json!({"checkpoint": {"last_op_id": "2", "buckets": [{"bucket": "b[]", "checksum": 3}]}}),
                json!({"data": {"bucket": "b[]", "data": [put(2, "t2", "two", 2)]}}),
                json!({"checkpoint_complete": {"last_op_id": "2"}}),
            ])
        };
        let keepalive = Bytes::from(format!("{}\n", json!({"token_expires_in": 3600})));
        let mut chunks = vec![Bytes::from(lines)];
        chunks.extend(std::iter::repeat_n(keepalive, 600));
        Reply::chunks(chunks, true).paced(Duration::from_millis(100))
    }))
    .await;
    let proxy = Proxy::start(server.addr).await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    let mut opts = options(false);
    opts.transport = TransportOptions {
        idle_timeout: Duration::from_millis(1500),
        ..TransportOptions::default()
    };
    let sync = tokio::spawn(SyncClient::new(db.clone(), connector(&proxy.endpoint)).run(opts));

    until(&db, "checkpoint 1", |s| {
        s.last_checkpoint.as_deref() == Some("1")
    })
    .await;
    // Keepalives keep a live connection open past the idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        streams.load(Ordering::SeqCst),
        1,
        "no reconnect while keepalives flow"
    );
    assert!(db.status().borrow().connected);

    // The path dies without a FIN or RST: nothing arrives any more.
    let t = Instant::now();
    proxy.freeze();
    until(&db, "checkpoint 2 over a new connection", |s| {
        s.last_checkpoint.as_deref() == Some("2")
    })
    .await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "reconnected after {took:?}"
    );
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    assert!(proxy.connections() >= 2);
    assert_eq!(count(&db, "todos"), 2);
    sync.abort();
}

#[tokio::test]
async fn a_proxys_403_keeps_the_upload_queue() {
    // A firewall in front of the relay answers /crud with an HTML 403 for a while.
    let refusals = Arc::new(AtomicU32::new(0));
    let r = refusals.clone();
    let server = support::serve(Arc::new(move |seen: &Seen| {
        if seen.path == "/crud" {
            if r.fetch_add(1, Ordering::SeqCst) < 4 {
                return Reply::new(403, "<html><body><h1>403 Forbidden</h1>Request blocked.</body></html>")
                    .header("content-type", "text/html");
            }
            Reply::new(200, r#"{"data":{"applied":2}}"#)
        } else if seen.path.starts_with("/write-checkpoint2.json") {
            Reply::new(200, r#"{"data":{"write_checkpoint":"5"}}"#)
        } else {
            Reply::new(200, stream(&[
                json!({"checkpoint": {"last_op_id": "2", "write_checkpoint": "5", "buckets": [{"bucket": "b[]", "checksum": 3}]}}),
                json!({"data": {"bucket": "b[]", "data": [put(1, "a", "x", 1), put(2, "b", "x", 2)]}}),
                json!({"checkpoint_complete": {"last_op_id": "2"}}),
            ]))
        }
    }))
    .await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    for id in ["a", "b"] {
        db.execute(
            "INSERT INTO todos(id, title, done) VALUES (?1, 'x', 0)",
            &[json!(id)],
        )
        .unwrap();
    }
    let mut opts = options(true);
    opts.max_attempts = Some(1000);
    let cp = tokio::time::timeout(
        Duration::from_secs(30),
        SyncClient::new(db.clone(), connector(&server.endpoint)).run(opts),
    )
    .await
    .expect("the upload went through once the proxy stopped refusing")
    .unwrap();
    assert_eq!(cp.as_deref(), Some("2"));
    assert!(refusals.load(Ordering::SeqCst) >= 5);
    let rejected = db
        .query("SELECT count(*) AS n FROM ps_crud_rejected", &[])
        .unwrap();
    assert_eq!(rejected[0]["n"], 0, "nothing was set aside");
    let status = db.status().borrow().clone();
    assert_eq!(status.last_rejected, None);
    assert_eq!(status.upload_pending, 0);
    // The batch that finally went up holds both writes.
    let last: Value = serde_json::from_str(&server.requests("/crud").last().unwrap().body).unwrap();
    let ids: Vec<&str> = last["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test]
async fn https_with_a_private_ca_and_an_unknown_ca() {
    let ca = TestCa::new("outpost test CA");
    let (cert, key) = ca.server_cert();
    let body = good_stream();
    let server = support::serve_tls(
        Arc::new(move |_: &Seen| Reply::new(200, body.clone())),
        &cert,
        &key,
    )
    .await;
    let dir = temp_dir("tls");

    // Not trusted by default (the public roots only): a clear error, no request served.
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    let err = SyncClient::new(db.clone(), connector(&server.endpoint))
        .run(options(true))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("certificate is not trusted") && msg.contains("ca_cert"),
        "{msg}"
    );
    assert!(server.requests("/").is_empty());

    // Another private CA does not help either.
    let mut opts = options(true);
    opts.transport.ca_cert = Some(TestCa::new("someone else").write_pem(&dir, "other.pem"));
    let err = SyncClient::new(db.clone(), connector(&server.endpoint))
        .run(opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not trusted"), "{err}");

    // Trusting the CA that signed it: synced over TLS.
    let mut opts = options(true);
    opts.transport.ca_cert = Some(ca.write_pem(&dir, "ca.pem"));
    let cp = SyncClient::new(db.clone(), connector(&server.endpoint))
        .run(opts)
        .await
        .unwrap();
    assert_eq!(cp.as_deref(), Some("2"));
    assert_eq!(count(&db, "todos"), 2);
    assert_eq!(server.requests("/sync/stream").len(), 1);

    // A CA file that holds no certificate is refused up front.
    std::fs::write(dir.join("empty.pem"), "not a certificate").unwrap();
    let mut opts = options(true);
    opts.transport.ca_cert = Some(dir.join("empty.pem"));
    let err = SyncClient::new(db.clone(), connector(&server.endpoint))
        .run(opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn gzip_part(e: &mut flate2::write::GzEncoder<Vec<u8>>, text: &str) -> Bytes {
    e.write_all(text.as_bytes()).unwrap();
    e.flush().unwrap();
    Bytes::from(std::mem::take(e.get_mut()))
}

fn zstd_part(e: &mut zstd::stream::write::Encoder<'static, Vec<u8>>, text: &str) -> Bytes {
    e.write_all(text.as_bytes()).unwrap();
    e.flush().unwrap();
    Bytes::from(std::mem::take(e.get_mut()))
}

#[tokio::test]
async fn compressed_streams_are_decoded_as_they_arrive() {
    for encoding in ["gzip", "zstd"] {
        // The compressed stream stays open after checkpoint 2 (flushed, not
        // finished): the client must apply it from the bytes it has.
        let server = support::serve(Arc::new(move |seen: &Seen| {
            let wants = seen
                .accept_encoding
                .split(',')
                .any(|e| e.trim() == encoding);
            let text = good_stream();
            let chunk = if !wants {
                Bytes::from(text)
            } else if encoding == "gzip" {
                let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
                gzip_part(&mut e, &text)
            } else {
                let mut e = zstd::stream::write::Encoder::new(vec![], 3).unwrap();
                zstd_part(&mut e, &text)
            };
            let mut reply = Reply::chunks(vec![chunk], true);
            if wants {
                reply = reply.header("content-encoding", encoding);
            }
            reply
        }))
        .await;
        let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
        // The test server is on loopback, where the client asks for no
        // compression unless told to.
        let mut opts = options(true);
        opts.transport.compress_loopback = true;
        let cp = tokio::time::timeout(
            Duration::from_secs(20),
            SyncClient::new(db.clone(), connector(&server.endpoint)).run(opts),
        )
        .await
        .unwrap_or_else(|_| panic!("{encoding}: the checkpoint was not decoded incrementally"))
        .unwrap();
        assert_eq!(cp.as_deref(), Some("2"), "{encoding}");
        assert_eq!(count(&db, "todos"), 2, "{encoding}");
        let seen = &server.requests("/sync/stream")[0];
        assert!(
            seen.accept_encoding.contains("gzip") && seen.accept_encoding.contains("zstd"),
            "{}",
            seen.accept_encoding
        );
    }
}

#[tokio::test]
async fn a_loopback_relay_is_asked_for_a_plain_stream() {
    let server = support::serve(Arc::new(|_: &Seen| {
        Reply::chunks(vec![Bytes::from(good_stream())], true)
    }))
    .await;
    assert!(server.endpoint.contains("127.0.0.1"), "{}", server.endpoint);
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    let cp = SyncClient::new(db.clone(), connector(&server.endpoint))
        .run(options(true))
        .await
        .unwrap();
    assert_eq!(cp.as_deref(), Some("2"));
    let seen = &server.requests("/sync/stream")[0];
    assert_eq!(
        seen.accept_encoding, "",
        "loopback: no compression asked for"
    );
}

#[tokio::test]
async fn a_corrupt_compressed_stream_is_an_error() {
    let server = support::serve(Arc::new(|_: &Seen| {
        Reply::new(200, "definitely not gzip\n").header("content-encoding", "gzip")
    }))
    .await;
    let db = Database::open_in_memory(SchemaMode::Fixed(schema())).unwrap();
    let err = SyncClient::new(db.clone(), connector(&server.endpoint))
        .run(options(true))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("gzip"), "{err}");
    assert_eq!(count(&db, "todos"), 0);
}

/// A single-bucket checkpoint of `rows` todos, 1,000 ops per data line.
fn big_checkpoint(rows: u64) -> String {
    let title = "a title of some length";
    let mut out = String::new();
    let mut sum = 0u32;
    let mut data = vec![];
    for i in 1..=rows {
        sum = sum.wrapping_add(i as u32);
        data.push(put(i, &format!("t{i}"), title, i as u32));
        if data.len() == 1000 || i == rows {
            out.push_str(&format!(
                "{}\n",
                json!({"data": {"bucket": "b[]", "data": std::mem::take(&mut data)}})
            ));
        }
    }
    let head = json!({"checkpoint": {"last_op_id": rows.to_string(), "buckets": [{"bucket": "b[]", "checksum": sum, "count": rows}]}});
    format!(
        "{head}\n{out}{}\n",
        json!({"checkpoint_complete": {"last_op_id": rows.to_string()}})
    )
}

// One runtime thread: any SQLite work done on it would stop everything else.
#[tokio::test(flavor = "current_thread")]
async fn live_queries_and_timers_run_while_a_large_checkpoint_applies() {
    const ROWS: u64 = 200_000;
    let body = big_checkpoint(ROWS);
    let server = support::serve(Arc::new(move |_: &Seen| {
        Reply::chunks(vec![Bytes::from(body.clone())], true)
    }))
    .await;
    let dir = temp_dir("apply");
    let db = Database::open(dir.join("app.db"), SchemaMode::Inferred).unwrap();

    // While the sync runs: a 10 ms timer on the same runtime adds up how long it
    // was held up beyond that, and a new live query on another table (the upload
    // queue) is opened every 20 ms and counted when it answers.
    #[derive(Default)]
    struct Observed {
        blocked: Duration,
        answers: u32,
    }
    let seen = Arc::new(Mutex::new(Observed::default()));
    let s = seen.clone();
    let ticker = tokio::spawn(async move {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            s.lock().unwrap().blocked += last.elapsed().saturating_sub(Duration::from_millis(15));
            last = Instant::now();
        }
    });
    let (s, d) = (seen.clone(), db.clone());
    let watcher = tokio::spawn(async move {
        loop {
            let mut queue = d.watch("SELECT count(*) AS n FROM ps_crud", &[]).unwrap();
            assert_eq!(queue.next().await.unwrap()[0]["n"], 0);
            s.lock().unwrap().answers += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let t = Instant::now();
    let cp = tokio::time::timeout(
        Duration::from_secs(300),
        SyncClient::new(db.clone(), connector(&server.endpoint)).run(options(true)),
    )
    .await
    .expect("synced")
    .unwrap();
    let took = t.elapsed();
    ticker.abort();
    watcher.abort();
    assert_eq!(cp, Some(ROWS.to_string()));
    assert_eq!(count(&db, "todos"), ROWS as i64);
    // Decoding, storing and applying on the runtime thread held it up for most
    // of the sync (about 65%, 3 live answers a second); off it, about 15%.
    let seen = seen.lock().unwrap();
    assert!(
        seen.blocked < took.mul_f64(0.4),
        "the runtime was held up {:?} of a {took:?} sync",
        seen.blocked
    );
    assert!(
        f64::from(seen.answers) >= took.as_secs_f64() * 10.0,
        "{} live query answers during a {took:?} sync",
        seen.answers
    );
    let _ = std::fs::remove_dir_all(&dir);
}
