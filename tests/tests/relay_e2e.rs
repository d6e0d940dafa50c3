//! The relay end to end on real Postgres: an in-process relay
//! ([`outpost_tests::relay::Relay`]) streaming a TestDb's buckets over HTTP.
//! Initial sync, incremental diffs driven by the relay's own ticks, resume
//! with `after`, bucket removal, token expiry, two relays on one database,
//! and `GET /schema`. Every wait is on the next stream line, with a timeout.

use outpost_tests::relay::{Relay, SyncStream};
use outpost_tests::{bucket_names, ops, sum_checksums, sync_checkpoint, tick, TestDb};
use postgres::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE lists (id int PRIMARY KEY, owner_id text NOT NULL, name text);
CREATE TABLE todos (id int PRIMARY KEY, list_id int, title text, done boolean NOT NULL DEFAULT false);
INSERT INTO lists VALUES (1, 'u1', 'one'), (2, 'u2', 'two');
INSERT INTO todos VALUES (10, 1, 'a', false), (11, 1, 'b', true), (20, 2, 'c', false);
";

const RULES: &str = "
bucket_definitions:
  user_lists:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM todos WHERE list_id = bucket.list_id
  global:
    data: SELECT id, name FROM lists
";

fn setup(label: &str) -> (TestDb, Client) {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(SCHEMA).unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap();
    (db, c)
}

fn request() -> Value {
    json!({"buckets": [], "include_checksum": true, "raw_data": true, "client_id": "c1"})
}

/// A checksum from a line (bucket checksums are signed i32, op checksums u32).
fn u32_of(v: &Value) -> u32 {
    v.as_i64()
        .unwrap_or_else(|| panic!("checksum is not an integer: {v}")) as u32
}

/// Op ids are strings on the wire.
fn op_id(v: &Value) -> i64 {
    v.as_str()
        .unwrap_or_else(|| panic!("op id is not a string: {v}"))
        .parse()
        .unwrap()
}

/// The next line that is not a `token_expires_in` keepalive.
fn next(s: &mut SyncStream) -> Value {
    loop {
        let l = s.line();
        if l.get("token_expires_in").is_none() {
            return l;
        }
    }
}

/// What a client holds: per bucket, the checkpoint's checksum and the ops received.
#[derive(Default, Debug)]
struct View {
    checkpoint: i64,
    /// bucket → checksum the checkpoint announced.
    expected: BTreeMap<String, u32>,
    /// bucket → ops received (op_id, checksum, object_id, op).
    ops: BTreeMap<String, Vec<(i64, u32, String, String)>>,
}

impl View {
    /// Applies lines up to and including the next `checkpoint_complete`;
    /// returns the lines read.
    fn read_checkpoint(&mut self, s: &mut SyncStream) -> Vec<Value> {
        let mut lines = Vec::new();
        loop {
            let l = next(s);
            lines.push(l.clone());
            if let Some(cp) = l.get("checkpoint") {
                self.expected.clear();
                self.checkpoint = op_id(&cp["last_op_id"]);
                for b in cp["buckets"].as_array().unwrap() {
                    let name = b["bucket"].as_str().unwrap().to_string();
                    self.expected.insert(name, u32_of(&b["checksum"]));
                }
                self.ops.retain(|b, _| self.expected.contains_key(b));
            } else if let Some(d) = l.get("checkpoint_diff") {
                self.checkpoint = op_id(&d["last_op_id"]);
                for b in d["updated_buckets"].as_array().unwrap() {
                    let name = b["bucket"].as_str().unwrap().to_string();
                    self.expected.insert(name, u32_of(&b["checksum"]));
                }
                for b in d["removed_buckets"].as_array().unwrap() {
                    self.expected.remove(b.as_str().unwrap());
                    self.ops.remove(b.as_str().unwrap());
                }
            } else if let Some(d) = l.get("data") {
                let bucket = d["bucket"].as_str().unwrap().to_string();
                assert!(
                    self.expected.contains_key(&bucket),
                    "data for a bucket not in the checkpoint: {l}"
                );
                let held = self.ops.entry(bucket).or_default();
                for op in d["data"].as_array().unwrap() {
                    let id = op_id(&op["op_id"]);
                    assert!(
                        id <= self.checkpoint,
                        "op {id} beyond checkpoint {}",
                        self.checkpoint
                    );
                    if let Some(last) = held.last() {
                        assert!(id > last.0, "op ids must increase within a bucket: {l}");
                    }
                    held.push((
                        id,
                        u32_of(&op["checksum"]),
                        op["object_id"].as_str().unwrap_or_default().to_string(),
                        op["op"].as_str().unwrap().to_string(),
                    ));
                }
            } else if let Some(c) = l.get("checkpoint_complete") {
                assert_eq!(op_id(&c["last_op_id"]), self.checkpoint, "{l}");
                return lines;
            } else {
                panic!("unexpected line {l}");
            }
        }
    }

    /// Every bucket's received ops sum to the announced checksum.
    fn assert_consistent(&self) {
        for (b, want) in &self.expected {
            let got = self
                .ops
                .get(b)
                .map(|o| o.iter().fold(0u32, |a, x| a.wrapping_add(x.1)))
                .unwrap_or(0);
            assert_eq!(got, *want, "checksum of {b}: ops {:?}", self.ops.get(b));
        }
    }
}

#[test]
fn initial_sync_streams_checkpoint_data_complete() {
    let (db, mut c) = setup("relay_initial");
    let relay = Relay::start(&db);
    let mut s = relay.stream(&relay.token("u1", 300), &request());
    let mut view = View::default();
    let lines = view.read_checkpoint(&mut s);

    // Shape: checkpoint first, then data lines, then checkpoint_complete.
    assert!(lines[0].get("checkpoint").is_some(), "{}", lines[0]);
    assert!(lines[1..lines.len() - 1]
        .iter()
        .all(|l| l.get("data").is_some()));
    view.assert_consistent();

    // The checkpoint is the database's view for u1.
    let cp = sync_checkpoint(&mut c, "u1", "c1");
    assert_eq!(view.checkpoint, cp["checkpoint"].as_i64().unwrap());
    assert_eq!(
        view.expected.keys().cloned().collect::<Vec<_>>(),
        bucket_names(&cp)
    );
    assert_eq!(bucket_names(&cp), vec!["global[]", "user_lists[1]"]);
    for b in bucket_names(&cp) {
        let o = ops(&mut c, &b);
        assert_eq!(view.expected[&b], sum_checksums(&o), "{b}");
        let ids: Vec<i64> = view.ops[&b].iter().map(|x| x.0).collect();
        assert_eq!(ids, o.iter().map(|x| x.op_id).collect::<Vec<_>>(), "{b}");
    }
    // Data is a JSON string (raw_data) of the row.
    let data = lines.iter().find_map(|l| {
        let d = l.get("data")?;
        (d["bucket"] == "user_lists[1]").then(|| d["data"][0]["data"].clone())
    });
    let row: Value = serde_json::from_str(data.unwrap().as_str().unwrap()).unwrap();
    assert_eq!(
        row,
        json!({"id": 10, "list_id": 1, "title": "a", "done": 0})
    );
}

#[test]
fn writes_reach_the_stream_as_a_diff() {
    let (db, mut c) = setup("relay_diff");
    let relay = Relay::start(&db);
    let mut s = relay.stream(&relay.token("u1", 300), &request());
    let mut view = View::default();
    view.read_checkpoint(&mut s);
    let first = view.checkpoint;

    // No manual tick: the relay LISTENs on outpost_changes and ticks itself.
    c.batch_execute("INSERT INTO todos VALUES (12, 1, 'new', false)")
        .unwrap();
    let lines = view.read_checkpoint(&mut s);
    let diff = &lines[0]["checkpoint_diff"];
    assert!(
        !diff.is_null(),
        "expected a checkpoint_diff, got {}",
        lines[0]
    );
    assert!(view.checkpoint > first);
    let updated: Vec<&str> = diff["updated_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucket"].as_str().unwrap())
        .collect();
    assert_eq!(updated, vec!["user_lists[1]"]);
    assert!(diff["removed_buckets"].as_array().unwrap().is_empty());
    // Only the new op was sent.
    let sent: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l.get("data"))
        .flat_map(|d| d["data"].as_array().unwrap())
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["object_id"], "12");
    assert!(op_id(&sent[0]["op_id"]) > first);
    view.assert_consistent();

    // An update and a delete in one transaction: one more diff, still consistent.
    c.batch_execute(
        "BEGIN; UPDATE todos SET done = true WHERE id = 10; DELETE FROM todos WHERE id = 11; COMMIT;",
    )
    .unwrap();
    view.read_checkpoint(&mut s);
    view.assert_consistent();
    let o = ops(&mut c, "user_lists[1]");
    assert_eq!(view.expected["user_lists[1]"], sum_checksums(&o));
    assert!(view.ops["user_lists[1]"]
        .iter()
        .any(|x| x.2 == "11" && x.3 == "REMOVE"));
}

#[test]
fn resume_with_after_sends_only_newer_ops() {
    let (db, mut c) = setup("relay_resume");
    let relay = Relay::start(&db);
    let token = relay.token("u1", 300);
    let mut view = View::default();
    {
        let mut s = relay.stream(&token, &request());
        view.read_checkpoint(&mut s);
    }
    let held = view.checkpoint;

    c.batch_execute("INSERT INTO todos VALUES (13, 1, 'later', false)")
        .unwrap();
    let latest = tick(&mut c);
    assert!(latest > held);

    let buckets: Vec<Value> = view
        .expected
        .keys()
        .map(|b| json!({"name": b, "after": held.to_string()}))
        .collect();
    let mut req = request();
    req["buckets"] = Value::Array(buckets);
    let mut s = relay.stream(&token, &req);
    let lines = view.read_checkpoint(&mut s);
    assert!(lines[0].get("checkpoint").is_some());
    assert_eq!(view.checkpoint, latest);
    let sent: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l.get("data"))
        .flat_map(|d| d["data"].as_array().unwrap())
        .collect();
    assert_eq!(sent.len(), 1, "only the op after {held}: {sent:?}");
    assert_eq!(sent[0]["object_id"], "13");
    assert!(sent.iter().all(|o| op_id(&o["op_id"]) > held));
    // What was held plus what was sent matches the new checksums.
    view.assert_consistent();
}

#[test]
fn parameter_change_removes_bucket() {
    let (db, mut c) = setup("relay_removed");
    let relay = Relay::start(&db);
    let mut s = relay.stream(&relay.token("u1", 300), &request());
    let mut view = View::default();
    view.read_checkpoint(&mut s);
    assert!(view.expected.contains_key("user_lists[1]"));

    // u1 no longer owns list 1: its bucket goes away.
    c.batch_execute("UPDATE lists SET owner_id = 'u2' WHERE id = 1")
        .unwrap();
    let lines = view.read_checkpoint(&mut s);
    let diff = &lines[0]["checkpoint_diff"];
    assert_eq!(diff["removed_buckets"], json!(["user_lists[1]"]), "{diff}");
    assert_eq!(
        view.expected.keys().cloned().collect::<Vec<_>>(),
        vec!["global[]"]
    );
    view.assert_consistent();

    // And it comes back (from the start) when the row returns.
    c.batch_execute("UPDATE lists SET owner_id = 'u1' WHERE id = 1")
        .unwrap();
    view.read_checkpoint(&mut s);
    assert!(view.expected.contains_key("user_lists[1]"));
    view.assert_consistent();
}

#[test]
fn stream_ends_when_token_expires() {
    let (db, _c) = setup("relay_expiry");
    let relay = Relay::start(&db);
    let mut s = relay.stream(&relay.token("u1", 2), &request());
    View::default().read_checkpoint(&mut s);
    // The next line announces expiry, then the stream ends.
    let l = s.next_line(Duration::from_secs(10)).expect("expiry line");
    assert_eq!(l, json!({"token_expires_in": 0}));
    assert!(
        s.next_line(Duration::from_secs(10)).is_none(),
        "stream should end"
    );
}

#[test]
fn expired_and_missing_tokens_are_refused() {
    let (db, _c) = setup("relay_auth");
    let relay = Relay::start(&db);
    let r = relay.request("POST", "/sync/stream", None, Some(&request()));
    assert_eq!(r.status, 401, "{}", r.body);
    let foreign =
        outpost_relay::auth::dev_token("another-secret-0123456789", "u1", 60, None).unwrap();
    let r = relay.request("POST", "/sync/stream", Some(&foreign), Some(&request()));
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn two_relays_serve_the_same_checkpoints() {
    let (db, mut c) = setup("relay_two");
    let a = Relay::start(&db);
    let b = Relay::start(&db);
    let mut sa = a.stream(&a.token("u1", 300), &request());
    let mut sb = b.stream(&b.token("u1", 300), &request());
    let (mut va, mut vb) = (View::default(), View::default());
    let la = va.read_checkpoint(&mut sa);
    let lb = vb.read_checkpoint(&mut sb);
    assert_eq!(la, lb, "both relays stream the same initial checkpoint");

    c.batch_execute("INSERT INTO todos VALUES (14, 1, 'both', false)")
        .unwrap();
    // Both relays tick on the notification; ticks serialize. Our own tick
    // returns the checkpoint that includes the write.
    let target = tick(&mut c);
    for (v, s) in [(&mut va, &mut sa), (&mut vb, &mut sb)] {
        while v.checkpoint < target {
            v.read_checkpoint(s);
        }
        assert_eq!(v.checkpoint, target);
        v.assert_consistent();
    }
    assert_eq!(va.expected, vb.expected);
    assert_eq!(va.ops, vb.ops);
}

#[test]
fn schema_endpoint_serves_client_schema() {
    let (db, mut c) = setup("relay_schema");
    let relay = Relay::start(&db);
    let r = relay.request("GET", "/schema", None, None);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = relay.request("GET", "/schema", Some(&relay.token("u1", 300)), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let want: Value = c
        .query_one("SELECT outpost.client_schema()", &[])
        .unwrap()
        .get(0);
    assert_eq!(r.json(), want);
    let names: Vec<&str> = want["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["lists", "todos"]);
}

/// (bucket, op) of every data line up to the next `checkpoint_complete`.
fn ops_until_complete(s: &mut SyncStream) -> Vec<(String, Value)> {
    let mut ops = Vec::new();
    loop {
        let l = s
            .next_line(Duration::from_secs(120))
            .expect("stream ended early");
        if l.get("checkpoint_complete").is_some() {
            return ops;
        }
        if let Some(d) = l.get("data") {
            for op in d["data"].as_array().unwrap() {
                ops.push((d["bucket"].as_str().unwrap().to_string(), op.clone()));
            }
        }
    }
}

/// No hard bucket limit: a user holding 100,000 buckets gets a checkpoint
/// listing all of them, then every bucket's data, then checkpoint_complete;
/// reconnecting with its 100,000 positions (a body of megabytes) it gets
/// only what changed since. A checkpoint of 100,000 buckets is a large line:
/// it may take longer than the default line timeout on a loaded machine.
#[test]
fn a_user_with_100k_buckets_gets_a_checkpoint_and_resumes() {
    const N: i32 = 100_000;
    let db = TestDb::new("relay_100k");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE lists (id int PRIMARY KEY, owner_id text NOT NULL, name text);
         INSERT INTO lists SELECT g, 'many', 'list ' || g FROM generate_series(1, {N}) g;"
    ))
    .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  one_list:\n    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()\n    data: SELECT id, name FROM lists WHERE id = bucket.list_id\n"],
    )
    .unwrap();
    let relay = Relay::start(&db);
    let token = relay.token("many", 600);
    let mut s = relay.stream(&token, &request());
    let cp = s
        .next_line(Duration::from_secs(120))
        .expect("a checkpoint line");
    let buckets = cp["checkpoint"]["buckets"]
        .as_array()
        .expect("a checkpoint line");
    assert_eq!(buckets.len(), N as usize);
    // Per bucket, the position a client resumes from: its last op.
    let mut positions = BTreeMap::new();
    for (bucket, op) in ops_until_complete(&mut s) {
        let p = positions.entry(bucket).or_insert(0);
        *p = op_id(&op["op_id"]).max(*p);
    }
    assert_eq!(
        positions.len(),
        N as usize,
        "every bucket's data arrived before completion"
    );
    drop(s);

    c.execute("UPDATE lists SET name = 'renamed' WHERE id = 77777", &[])
        .unwrap();
    let resume = json!({
        "buckets": positions
            .iter()
            .map(|(name, after)| json!({"name": name, "after": after.to_string()}))
            .collect::<Vec<_>>(),
        "include_checksum": true,
        "raw_data": true,
        "client_id": "c1",
    });
    assert!(
        resume.to_string().len() > 1 << 20,
        "the resume body passes the /crud limit"
    );
    let mut s = relay.stream(&token, &resume);
    let cp = s
        .next_line(Duration::from_secs(120))
        .expect("a checkpoint line");
    assert_eq!(
        cp["checkpoint"]["buckets"].as_array().map(Vec::len),
        Some(N as usize)
    );
    let got = ops_until_complete(&mut s);
    assert_eq!(got.len(), 1, "only the new op: {got:?}");
    assert_eq!(got[0].0, "one_list[77777]");
    assert!(got[0].1["data"].to_string().contains("renamed"), "{got:?}");
}
