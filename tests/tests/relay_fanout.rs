//! Fan-out on real Postgres: with rules whose bucket sets depend only on the
//! token (static parameter queries), streams advance from one shared read of
//! what changed per checkpoint instead of a `sync_checkpoint` each, and still
//! end every checkpoint with exactly the database's ops and checksums. Write
//! checkpoints still reach only their own client.

use outpost_tests::relay::{Relay, SyncStream};
use outpost_tests::{ops, sum_checksums, TestDb};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const SCHEMA: &str = "
CREATE TABLE items (id int PRIMARY KEY, v text);
CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text);
INSERT INTO items VALUES (1, 'one'), (2, 'two');
INSERT INTO notes VALUES (1, 'u0', 'n'), (2, 'u1', 'n');
";

const RULES: &str = "
bucket_definitions:
  global:
    data: SELECT * FROM items
  mine:
    parameters: SELECT request.user_id() AS uid
    data: SELECT * FROM notes WHERE owner = bucket.uid
";

const USERS: usize = 5;

fn op_id(v: &Value) -> i64 {
    v.as_str().unwrap().parse().unwrap()
}

/// What one client holds: checkpoint, announced checksums, received op checksums.
#[derive(Default)]
struct View {
    checkpoint: i64,
    write_checkpoint: Option<i64>,
    expected: BTreeMap<String, u32>,
    got: BTreeMap<String, u32>,
}

impl View {
    /// Reads up to the next `checkpoint_complete`.
    fn read_checkpoint(&mut self, s: &mut SyncStream) {
        loop {
            let l = s.line();
            if let Some(cp) = l.get("checkpoint") {
                self.checkpoint = op_id(&cp["last_op_id"]);
                for b in cp["buckets"].as_array().unwrap() {
                    let c = b["checksum"].as_i64().unwrap() as u32;
                    self.expected
                        .insert(b["bucket"].as_str().unwrap().into(), c);
                }
            } else if let Some(d) = l.get("checkpoint_diff") {
                self.checkpoint = op_id(&d["last_op_id"]);
                if let Some(w) = d["write_checkpoint"].as_str() {
                    self.write_checkpoint = Some(w.parse().unwrap());
                }
                for b in d["updated_buckets"].as_array().unwrap() {
                    let c = b["checksum"].as_i64().unwrap() as u32;
                    self.expected
                        .insert(b["bucket"].as_str().unwrap().into(), c);
                }
                assert!(d["removed_buckets"].as_array().unwrap().is_empty(), "{l}");
            } else if let Some(d) = l.get("data") {
                let sum = self
                    .got
                    .entry(d["bucket"].as_str().unwrap().into())
                    .or_default();
                for op in d["data"].as_array().unwrap() {
                    assert!(op_id(&op["op_id"]) <= self.checkpoint, "{l}");
                    *sum = sum.wrapping_add(op["checksum"].as_i64().unwrap() as u32);
                }
            } else if let Some(c) = l.get("checkpoint_complete") {
                assert_eq!(op_id(&c["last_op_id"]), self.checkpoint);
                return;
            } else {
                assert!(l.get("token_expires_in").is_some(), "unexpected line {l}");
            }
        }
    }
}

fn metric(relay: &Relay, name: &str) -> u64 {
    let text = relay.request("GET", "/metrics", None, None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .parse()
        .unwrap()
}

#[test]
fn streams_share_reads_and_stay_exact() {
    let db = TestDb::new("relay_fanout");
    let mut c = db.connect();
    c.batch_execute(SCHEMA).unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap();
    let relay = Relay::start(&db);
    let mut clients: Vec<(SyncStream, View)> = (0..USERS)
        .map(|u| {
            let req = json!({"buckets": [], "raw_data": true, "client_id": format!("c{u}")});
            let mut s = relay.stream(&relay.token(&format!("u{u}"), 300), &req);
            let mut v = View::default();
            v.read_checkpoint(&mut s);
            (s, v)
        })
        .collect();

    for round in 0..5 {
        // One transaction: one checkpoint that changes every user's global[]
        // and one user's own bucket.
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO items VALUES ({id}, 'x'); UPDATE items SET v = 'y{round}' WHERE id = 1; \
             INSERT INTO notes VALUES ({id}, 'u{u}', 'n'); COMMIT;",
            id = 100 + round,
            u = round % USERS
        ))
        .unwrap();
        let target: i64 = c.query_one("SELECT outpost.tick()", &[]).unwrap().get(0);
        for (s, v) in clients.iter_mut() {
            while v.checkpoint < target {
                v.read_checkpoint(s);
            }
            assert_eq!(v.checkpoint, target);
        }
    }
    for (u, (_, v)) in clients.iter().enumerate() {
        for bucket in ["global[]".to_string(), format!("mine[\"u{u}\"]")] {
            let want = sum_checksums(&ops(&mut c, &bucket));
            assert_eq!(v.expected[&bucket], want, "u{u} {bucket}: announced");
            assert_eq!(
                v.got.get(&bucket).copied().unwrap_or(0),
                want,
                "u{u} {bucket}: received"
            );
        }
    }
    assert_eq!(metric(&relay, "outpost_relay_sync_checkpoints_total"), 0);
    let shared = metric(&relay, "outpost_relay_states_shared_total");
    assert!(shared >= (5 * USERS) as u64, "{shared} advances shared");
    let reads = metric(&relay, "outpost_relay_changes_queries_total");
    assert!(reads <= 2 * 5 + 2, "{reads} shared reads for 5 checkpoints");

    // A write checkpoint: only its own client sees it, and still without a query of its own.
    let token = relay.token("u2", 300);
    let wc = relay.request(
        "GET",
        "/write-checkpoint2.json?client_id=c2",
        Some(&token),
        None,
    );
    let wc: i64 = wc.json()["data"]["write_checkpoint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (s, v) = &mut clients[2];
    while v.write_checkpoint.is_none() {
        v.read_checkpoint(s);
    }
    assert_eq!(v.write_checkpoint, Some(wc));
    assert_eq!(metric(&relay, "outpost_relay_sync_checkpoints_total"), 0);
    let c0 = clients[0].1.checkpoint;
    // u0 got no line for that checkpoint; a later write still reaches it.
    c.batch_execute("INSERT INTO items VALUES (999, 'z')")
        .unwrap();
    let target: i64 = c.query_one("SELECT outpost.tick()", &[]).unwrap().get(0);
    let (s, v) = &mut clients[0];
    while v.checkpoint < target {
        v.read_checkpoint(s);
    }
    assert!(v.checkpoint > c0);
    assert_eq!(v.write_checkpoint, None);
    assert_eq!(v.got["global[]"], sum_checksums(&ops(&mut c, "global[]")));
}
