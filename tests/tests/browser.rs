//! A real browser as the user: headless Chromium loads a page from one
//! loopback origin and syncs from the relay on another, with `fetch`
//! streaming and the NDJSON lines read as they come (CORS preflights,
//! `Authorization` and `X-User-Agent` headers, the browser's own
//! `Accept-Encoding`, so a compressed stream). The page reports to the
//! server it came from; the test asserts on the rows it received, on a live
//! change it saw without reloading, and that a relay restricted to another
//! origin is refused by the browser.
//!
//! Chromium is Debian's package; a missing one is installed by
//! `scripts/install-chromium.sh`. Only when it is absent and cannot be
//! installed is the test skipped, saying so.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the page gets for each report.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

fn chromium() -> Option<PathBuf> {
    for b in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(b).exists() {
            return Some(b.into());
        }
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-chromium.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

const PAGE: &str = r#"<!doctype html>
<html><body><pre id="out">running</pre><script>
const relay = "RELAY", token = "TOKEN";
const headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
                 "X-User-Agent": "outpost-browser-test"};
function report(path, v) {
  document.getElementById("out").textContent = JSON.stringify(v);
  return fetch(path, {method: "POST", body: JSON.stringify(v)});
}
async function run() {
  const res = await fetch(relay + "/sync/stream", {method: "POST", headers,
    body: JSON.stringify({raw_data: true, client_id: "browser", buckets: []})});
  if (res.status !== 200) throw new Error("status " + res.status);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "", rows = {}, lines = 0;
  async function untilComplete() {
    for (;;) {
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = JSON.parse(buf.slice(0, i)); buf = buf.slice(i + 1); lines++;
        if (line.data) for (const op of line.data.data) {
          if (op.op === "PUT") rows[op.object_id] = JSON.parse(op.data);
          if (op.op === "REMOVE") delete rows[op.object_id];
        }
        if (line.checkpoint_complete) return line.checkpoint_complete.last_op_id;
      }
      const {value, done} = await reader.read();
      if (done) throw new Error("stream ended");
      buf += value;
    }
  }
  const first = await untilComplete();
  await report("/progress", {checkpoint: first, rows: Object.keys(rows).length});
  const second = await untilComplete();
  await reader.cancel();
  const wc = await (await fetch(relay + "/write-checkpoint2.json?client_id=browser", {headers})).json();
  const cr = await (await fetch(relay + "/sync/checkpoint-request", {method: "POST", headers,
    body: JSON.stringify({client_id: "browser", checkpoint_request_id: "10"})})).json();
  const schema = await (await fetch(relay + "/schema", {headers})).json();
  return {first, second, lines, rows, wc, cr, tables: schema.tables.map(t => t.name)};
}
run().then(r => report("/result", {ok: r}), e => report("/result", {error: String(e)}));
</script></body></html>"#;

/// Serves the page on its own origin and forwards what it reports.
struct PageServer {
    url: String,
    reports: mpsc::Receiver<(String, Value)>,
    _rt: tokio::runtime::Runtime,
}

impl PageServer {
    fn start(page: String) -> PageServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, reports) = mpsc::channel();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let page = page.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let page = page.clone();
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let reply = match path.as_str() {
                                "/" => page.clone(),
                                "/progress" | "/result" => {
                                    let v: Value =
                                        serde_json::from_slice(&body).unwrap_or(Value::Null);
                                    let _ = tx.send((path, v));
                                    "ok".to_string()
                                }
                                _ => String::new(),
                            };
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "text/html; charset=utf-8")
                                    .body(Full::new(Bytes::from(reply)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        PageServer {
            url,
            reports,
            _rt: rt,
        }
    }

    fn next(&self, what: &str) -> (String, Value) {
        self.reports
            .recv_timeout(PAGE_TIMEOUT)
            .unwrap_or_else(|_| panic!("the page sent no {what} within {PAGE_TIMEOUT:?}"))
    }
}

/// Headless Chromium on `url` with a fresh profile; killed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    fn open(chromium: &PathBuf, url: &str, label: &str) -> Browser {
        let profile =
            std::env::temp_dir().join(format!("outpost-chromium-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Browser { child, profile }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn setup() -> TestDb {
    TestDb::with_rules(
        "browser",
        "CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
         INSERT INTO notes SELECT g, CASE WHEN g % 4 = 0 THEN 'bob' ELSE 'alice' END,
                                  'note ' || g || ' – ünïcødé' FROM generate_series(1, 400) g;",
        MINE,
    )
}

/// Each user syncs the notes they own.
const MINE: &str = "
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, body FROM notes WHERE owner = bucket.owner
";

fn page_for(relay: &Relay, token: &str) -> String {
    PAGE.replace("RELAY", &relay.url).replace("TOKEN", token)
}

#[test]
fn a_page_on_another_origin_syncs_from_the_relay_with_fetch_streaming() {
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed and scripts/install-chromium.sh could not install it");
        return;
    };
    let db = setup();
    let mut c = db.connect();
    let relay = Relay::start(&db);
    let page = PageServer::start(page_for(&relay, &relay.token("alice", 600)));
    assert_ne!(page.url, relay.url, "two origins");
    let _browser = Browser::open(&chromium, &format!("{}/", page.url), "sync");

    let (kind, progress) = page.next("progress");
    assert_eq!(kind, "/progress", "{progress}");
    assert_eq!(
        progress["rows"], 300,
        "alice's rows after the first checkpoint: {progress}"
    );
    // A live change while the page keeps reading its stream.
    c.batch_execute(
        "UPDATE notes SET body = 'edited live' WHERE id = 1; DELETE FROM notes WHERE id = 2;",
    )
    .unwrap();
    let (kind, result) = page.next("result");
    assert_eq!(kind, "/result");
    let ok = result
        .get("ok")
        .unwrap_or_else(|| panic!("the page failed: {result}"));
    let rows = ok["rows"].as_object().unwrap();
    assert_eq!(rows.len(), 299, "{ok}");
    assert_eq!(rows["1"]["body"], "edited live");
    assert!(
        !rows.contains_key("2") && !rows.contains_key("4"),
        "removed, and bob's"
    );
    assert_eq!(rows["3"]["body"], "note 3 – ünïcødé");
    let (first, second): (u64, u64) = (
        ok["first"].as_str().unwrap().parse().unwrap(),
        ok["second"].as_str().unwrap().parse().unwrap(),
    );
    assert!(second > first, "{ok}");
    assert_eq!(ok["wc"], json!({"data": {"write_checkpoint": "1"}}));
    assert_eq!(ok["cr"], json!({"data": {"checkpoint_request_id": "10"}}));
    assert_eq!(ok["tables"], json!(["notes"]));
    // The browser asked for compression and decoded it: fewer bytes went
    // on the wire than NDJSON was produced.
    let metrics = relay.request("GET", "/metrics", None, None).body;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let (plain, wire) = (
        value("outpost_relay_bytes_sent_total"),
        value("outpost_relay_wire_bytes_sent_total"),
    );
    assert!(wire * 2.0 < plain, "wire {wire} vs plain {plain}");
}

#[test]
fn a_relay_restricted_to_other_origins_is_refused_by_the_browser() {
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed and scripts/install-chromium.sh could not install it");
        return;
    };
    let db = setup();
    let relay = Relay::start_with(&db, |a| {
        a.cors_origins = vec!["https://app.example.com".into()]
    });
    let page = PageServer::start(page_for(&relay, &relay.token("alice", 600)));
    let _browser = Browser::open(&chromium, &format!("{}/", page.url), "refused");
    let (kind, result) = page.next("result");
    assert_eq!(kind, "/result", "{result}");
    let error = result["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not refused: {result}"));
    assert!(error.contains("Failed to fetch"), "{error}");
}
