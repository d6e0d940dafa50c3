//! Sync Streams end to end on real Postgres with the in-process relay:
//! subscriptions bring exactly their rows, buckets say why they are in and
//! carry the override priority, a bad subscription is reported in its
//! stream's errors while the rest syncs, a row moved out through the
//! subquery's table leaves in the next checkpoint, `include_defaults: false`
//! drops default streams and legacy buckets, and a changed subscription set
//! downloads nothing twice. Also the SQL API (`define_stream`, `drop_stream`,
//! `outpost.streams`, `rules_yaml()`).

use outpost_tests::relay::{Relay, SyncStream};
use outpost_tests::{tick, TestDb};
use postgres::Client;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

use outpost_tests::streams_fixture::{RULES, SCHEMA};

fn setup(label: &str, rules: &str) -> (TestDb, Client) {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(SCHEMA).unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&rules])
        .unwrap();
    (db, c)
}

fn sub(list: Option<&str>, prio: Option<i32>) -> Value {
    json!({
        "stream": "list_todos",
        "parameters": list.map(|l| json!({"list_id": l})).unwrap_or(json!({})),
        "override_priority": prio,
    })
}

fn request(buckets: Value, include_defaults: bool, subs: Vec<Value>) -> Value {
    json!({
        "buckets": buckets, "include_checksum": true, "raw_data": true, "client_id": "c1",
        "streams": {"include_defaults": include_defaults, "subscriptions": subs},
    })
}

fn next(s: &mut SyncStream) -> Value {
    loop {
        let l = s.line();
        if l.get("token_expires_in").is_none() {
            return l;
        }
    }
}

/// What one checkpoint brought: its line and, per bucket, the PUT rows'
/// object ids (REMOVEs take them out); the lines in order.
struct Received {
    checkpoint: Value,
    rows: BTreeMap<String, BTreeSet<String>>,
    lines: Vec<Value>,
}

fn read_checkpoint(s: &mut SyncStream) -> Received {
    let mut r = Received {
        checkpoint: Value::Null,
        rows: BTreeMap::new(),
        lines: Vec::new(),
    };
    loop {
        let l = next(s);
        r.lines.push(l.clone());
        if let Some(cp) = l.get("checkpoint").or_else(|| l.get("checkpoint_diff")) {
            r.checkpoint = cp.clone();
        } else if let Some(d) = l.get("data") {
            let rows = r
                .rows
                .entry(d["bucket"].as_str().unwrap().to_string())
                .or_default();
            for op in d["data"].as_array().unwrap() {
                let id = op["object_id"].as_str().unwrap_or_default().to_string();
                match op["op"].as_str().unwrap() {
                    "PUT" => rows.insert(id),
                    _ => rows.remove(&id),
                };
            }
        } else if l.get("checkpoint_complete").is_some() {
            return r;
        }
    }
}

fn todos_of(list: &str) -> BTreeSet<String> {
    let n = &list[1..];
    (1..=3).map(|i| format!("t{n}-{i}")).collect()
}

fn bucket<'a>(cp: &'a Value, name: &str) -> &'a Value {
    cp["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bucket"] == name)
        .unwrap_or_else(|| panic!("no bucket {name} in {cp}"))
}

fn bucket_names(cp: &Value) -> BTreeSet<String> {
    cp["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucket"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn subscriptions_bring_their_rows_and_report_errors_per_stream() {
    let (db, _c) = setup("streams_subs", RULES);
    let relay = Relay::start(&db);
    let subs = vec![
        sub(Some("l1"), None),
        sub(Some("l2"), None), // not u1's list: nothing
        json!({"stream": "nope", "parameters": null, "override_priority": null}),
        sub(None, Some(1)), // the parameter is missing
        sub(Some("l3"), Some(0)),
    ];
    let mut s = relay.stream(&relay.token("u1", 300), &request(json!([]), true, subs));
    let r = read_checkpoint(&mut s);
    let cp = &r.checkpoint;
    assert_eq!(
        bucket_names(cp),
        BTreeSet::from([
            "list_todos|0[\"l1\"]".to_string(),
            "list_todos|0[\"l3\"]".to_string(),
            "my_lists|0[\"u1\"]".to_string(),
        ]),
        "{cp}"
    );
    let l1 = bucket(cp, "list_todos|0[\"l1\"]");
    assert_eq!(l1["subscriptions"], json!([{"sub": 0}]));
    assert_eq!(l1["priority"], 3);
    let l3 = bucket(cp, "list_todos|0[\"l3\"]");
    assert_eq!(l3["subscriptions"], json!([{"sub": 4}]));
    assert_eq!(l3["priority"], 0, "override_priority applies");
    let mine = bucket(cp, "my_lists|0[\"u1\"]");
    assert_eq!(mine["subscriptions"], json!([{"default": 0}]));

    let streams = cp["streams"].as_array().unwrap();
    assert_eq!(streams[0]["name"], "my_lists");
    assert_eq!(streams[0]["is_default"], true);
    assert_eq!(streams[0]["errors"], json!([]));
    assert_eq!(streams[1]["name"], "list_todos");
    assert_eq!(streams[1]["is_default"], false);
    assert_eq!(
        streams[1]["errors"],
        json!([{"subscription": 3, "message": "missing subscription parameter \"list_id\""}])
    );
    assert_eq!(streams[2]["name"], "nope");
    assert_eq!(
        streams[2]["errors"],
        json!([{"subscription": 2, "message": "unknown stream \"nope\""}])
    );

    // Exactly the subscribed lists' rows, the priority-0 bucket first.
    assert_eq!(r.rows["list_todos|0[\"l1\"]"], todos_of("l1"));
    assert_eq!(r.rows["list_todos|0[\"l3\"]"], todos_of("l3"));
    assert_eq!(
        r.rows["my_lists|0[\"u1\"]"],
        BTreeSet::from(["l1".to_string(), "l3".to_string()])
    );
    let first_data = r.lines.iter().find_map(|l| l.get("data")).unwrap();
    assert_eq!(first_data["bucket"], "list_todos|0[\"l3\"]");
    let partial = r
        .lines
        .iter()
        .position(|l| l.get("partial_checkpoint_complete").is_some())
        .expect("a partial checkpoint for priority 0");
    assert_eq!(
        r.lines[partial]["partial_checkpoint_complete"]["priority"],
        0
    );
}

#[test]
fn a_row_moved_out_through_the_subquery_table_leaves_in_the_next_checkpoint() {
    let (db, mut c) = setup("streams_move", RULES);
    let relay = Relay::start(&db);
    let subs = vec![sub(Some("l1"), None), sub(Some("l3"), None)];
    let mut s = relay.stream(&relay.token("u1", 300), &request(json!([]), true, subs));
    let first = read_checkpoint(&mut s);
    assert_eq!(first.rows["list_todos|0[\"l1\"]"], todos_of("l1"));

    // l1 goes to u2: its todos leave u1's stream, its list leaves my_lists.
    c.batch_execute("UPDATE lists SET owner_id = 'u2' WHERE id = 'l1'")
        .unwrap();
    let moved = tick(&mut c);
    let diff = loop {
        let r = read_checkpoint(&mut s);
        let d = r.checkpoint.clone();
        if d["last_op_id"].as_str().unwrap().parse::<i64>().unwrap() >= moved {
            break (d, r);
        }
    };
    let (d, r) = diff;
    assert_eq!(d["removed_buckets"], json!(["list_todos|0[\"l1\"]"]), "{d}");
    // my_lists lost l1 in the same checkpoint.
    assert_eq!(
        r.rows
            .get("my_lists|0[\"u1\"]")
            .cloned()
            .unwrap_or_default(),
        BTreeSet::new(),
        "only a REMOVE of l1: {:?}",
        r.lines
    );
    assert!(r.lines.iter().any(|l| {
        l["data"]["bucket"] == "my_lists|0[\"u1\"]"
            && l["data"]["data"][0]["op"] == "REMOVE"
            && l["data"]["data"][0]["object_id"] == "l1"
    }));

    // And it comes back when l1 does, with all its rows.
    c.batch_execute("UPDATE lists SET owner_id = 'u1' WHERE id = 'l1'")
        .unwrap();
    let back = tick(&mut c);
    loop {
        let r = read_checkpoint(&mut s);
        if r.checkpoint["last_op_id"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= back
        {
            assert_eq!(r.rows["list_todos|0[\"l1\"]"], todos_of("l1"));
            break;
        }
    }
}

const MIXED: &str = "
config:
  edition: 2
bucket_definitions:
  global_lists:
    data: SELECT id, name FROM lists
streams:
  my_lists:
    auto_subscribe: true
    query: SELECT * FROM lists WHERE owner_id = auth.user_id()
  list_todos:
    query: SELECT * FROM todos WHERE list_id = subscription.parameter('list_id') AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
";

#[test]
fn legacy_buckets_are_default_streams_and_include_defaults_false_drops_them() {
    let (db, _c) = setup("streams_defaults", MIXED);
    let relay = Relay::start(&db);
    let token = relay.token("u1", 300);

    let mut s = relay.stream(
        &token,
        &request(json!([]), true, vec![sub(Some("l1"), None)]),
    );
    let r = read_checkpoint(&mut s);
    let cp = &r.checkpoint;
    let streams: Vec<(String, bool)> = cp["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["is_default"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        streams,
        vec![
            ("global_lists".to_string(), true),
            ("my_lists".to_string(), true),
            ("list_todos".to_string(), false)
        ]
    );
    assert_eq!(
        bucket(cp, "global_lists[]")["subscriptions"],
        json!([{"default": 0}])
    );
    assert_eq!(
        bucket(cp, "my_lists|0[\"u1\"]")["subscriptions"],
        json!([{"default": 1}])
    );
    assert_eq!(r.rows["global_lists[]"].len(), 4);

    // Without defaults: only the subscription.
    let mut s = relay.stream(
        &token,
        &request(json!([]), false, vec![sub(Some("l1"), None)]),
    );
    let r = read_checkpoint(&mut s);
    assert_eq!(
        bucket_names(&r.checkpoint),
        BTreeSet::from(["list_todos|0[\"l1\"]".to_string()])
    );
    assert_eq!(r.rows["list_todos|0[\"l1\"]"], todos_of("l1"));

    // Without a `streams` field at all: the defaults, as before streams.
    let plain =
        json!({"buckets": [], "include_checksum": true, "raw_data": true, "client_id": "c1"});
    let mut s = relay.stream(&token, &plain);
    let r = read_checkpoint(&mut s);
    assert_eq!(
        bucket_names(&r.checkpoint),
        BTreeSet::from([
            "global_lists[]".to_string(),
            "my_lists|0[\"u1\"]".to_string()
        ])
    );
}

#[test]
fn a_changed_subscription_set_downloads_nothing_twice() {
    let (db, _c) = setup("streams_resub", RULES);
    let relay = Relay::start(&db);
    let token = relay.token("u1", 300);
    let mut s = relay.stream(
        &token,
        &request(json!([]), true, vec![sub(Some("l1"), None)]),
    );
    let first = read_checkpoint(&mut s);
    drop(s);
    let held: Vec<Value> = first.checkpoint["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let name = b["bucket"].as_str().unwrap();
            let last = first
                .lines
                .iter()
                .filter_map(|l| l.get("data"))
                .filter(|d| d["bucket"] == name)
                .filter_map(|d| d["next_after"].as_str())
                .next_back()
                .unwrap_or("0")
                .to_string();
            json!({"name": name, "after": last})
        })
        .collect();

    // The SDK reconnects with a new body when the set changes.
    let subs = vec![sub(Some("l1"), None), sub(Some("l3"), None)];
    let mut s = relay.stream(&token, &request(Value::Array(held), true, subs));
    let r = read_checkpoint(&mut s);
    assert_eq!(bucket_names(&r.checkpoint).len(), 3);
    let downloaded: BTreeSet<&String> = r.rows.keys().collect();
    assert_eq!(
        downloaded,
        BTreeSet::from([&"list_todos|0[\"l3\"]".to_string()]),
        "only the new list's bucket is downloaded"
    );
}

#[test]
fn streams_as_sql_define_drop_view_and_rules_yaml_round_trip() {
    let db = TestDb::new("streams_sql");
    let mut c = db.connect();
    c.batch_execute(SCHEMA).unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap();
    let yaml: String = c
        .query_one("SELECT outpost.rules_yaml()", &[])
        .unwrap()
        .get(0);
    // Deploying what rules_yaml() printed changes nothing.
    let before: Vec<(String, Value)> = defs(&mut c);
    c.query_one("SELECT outpost.deploy_rules($1)", &[&yaml])
        .unwrap();
    assert_eq!(defs(&mut c), before, "{yaml}");

    let rows = c
        .query(
            "SELECT name, priority, auto_subscribe, queries FROM outpost.streams ORDER BY name",
            &[],
        )
        .unwrap();
    let view: Vec<(String, i32, bool, Vec<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(view.len(), 2);
    assert_eq!(view[1].0, "my_lists");
    assert!(view[1].2);
    let buckets: i64 = c
        .query_one("SELECT count(*) FROM outpost.buckets", &[])
        .unwrap()
        .get(0);
    assert_eq!(buckets, 0, "streams are not bucket definitions");

    // define_stream adds one; its buckets materialize; others keep their ops.
    let ops_before: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket LIKE 'my_lists|%'",
            &[],
        )
        .unwrap()
        .get(0);
    c.query_one(
        "SELECT outpost.define_stream('all_todos', ARRAY['SELECT * FROM todos WHERE list_id = subscription.parameter(''l'')'], priority => 1)",
        &[],
    )
    .unwrap();
    let ops_after: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket LIKE 'my_lists|%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        ops_before, ops_after,
        "other streams are not re-materialized"
    );
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket = 'all_todos|0[\"l2\"]'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let yaml: String = c
        .query_one("SELECT outpost.rules_yaml()", &[])
        .unwrap()
        .get(0);
    assert!(yaml.contains("all_todos"), "{yaml}");

    // Errors name the stream and the problem; nothing changes.
    let e = c
        .query_one(
            "SELECT outpost.define_stream('bad', ARRAY['SELECT todos.* FROM todos RIGHT JOIN lists ON todos.list_id = lists.id'])",
            &[],
        )
        .unwrap_err();
    let db_err = e.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "22023");
    assert!(
        db_err
            .message()
            .contains("stream \"bad\", query 1: only [INNER] JOIN and LEFT JOIN"),
        "{}",
        db_err.message()
    );

    c.query_one("SELECT outpost.drop_stream('all_todos')", &[])
        .unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket LIKE 'all_todos|%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let e = c
        .query_one("SELECT outpost.drop_stream('all_todos')", &[])
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42704");
}

fn defs(c: &mut Client) -> Vec<(String, Value)> {
    c.query(
        "SELECT name, compiled FROM outpost.bucket_defs ORDER BY name",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// orgs → memberships → lists → todos: a nested subquery (and the same as
/// two joins) is kept current through both lookup tables.
#[test]
fn nested_subqueries_follow_writes_to_every_table() {
    let db = TestDb::new("streams_nested");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE memberships (id text PRIMARY KEY, org_id text NOT NULL, user_id text NOT NULL);
         CREATE TABLE lists (id text PRIMARY KEY, org_id text NOT NULL);
         CREATE TABLE todos (id text PRIMARY KEY, list_id text NOT NULL);
         INSERT INTO memberships VALUES ('m1', 'o1', 'u1'), ('m2', 'o2', 'u2');
         INSERT INTO lists VALUES ('l1', 'o1'), ('l2', 'o2');
         INSERT INTO todos VALUES ('t1', 'l1'), ('t2', 'l1'), ('t3', 'l2');",
    )
    .unwrap();
    let rules = "
config:
  edition: 3
streams:
  org_todos:
    auto_subscribe: true
    queries:
      - SELECT * FROM todos WHERE list_id IN (SELECT id FROM lists WHERE org_id IN (SELECT org_id FROM memberships WHERE user_id = auth.user_id()))
  org_todos_joined:
    auto_subscribe: true
    query: SELECT todos.* FROM todos JOIN lists ON todos.list_id = lists.id JOIN memberships m ON m.org_id = lists.org_id WHERE m.user_id = auth.user_id()
";
    c.query_one("SELECT outpost.deploy_rules($1)", &[&rules])
        .unwrap();
    let relay = Relay::start(&db);
    let plain =
        json!({"buckets": [], "include_checksum": true, "raw_data": true, "client_id": "c1"});
    let mut s = relay.stream(&relay.token("u1", 300), &plain);
    let r = read_checkpoint(&mut s);
    let ids = |r: &Received, b: &str| r.rows.get(b).cloned().unwrap_or_default();
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
    };
    assert_eq!(
        bucket_names(&r.checkpoint),
        set(&["org_todos_joined|0[\"l1\"]", "org_todos|0[\"l1\"]"])
    );
    assert_eq!(ids(&r, "org_todos|0[\"l1\"]"), set(&["t1", "t2"]));

    // u1 joins o2 (the innermost table): l2's todos come in.
    c.batch_execute("INSERT INTO memberships VALUES ('m3', 'o2', 'u1')")
        .unwrap();
    let cp = tick(&mut c);
    let r = loop {
        let r = read_checkpoint(&mut s);
        if r.checkpoint["last_op_id"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= cp
        {
            break r;
        }
    };
    assert_eq!(
        ids(&r, "org_todos|0[\"l2\"]"),
        set(&["t3"]),
        "{:?}",
        r.lines
    );
    assert_eq!(ids(&r, "org_todos_joined|0[\"l2\"]"), set(&["t3"]));

    // l1 moves to o3 (the middle table): its todos leave.
    c.batch_execute("UPDATE lists SET org_id = 'o3' WHERE id = 'l1'")
        .unwrap();
    let cp = tick(&mut c);
    let d = loop {
        let r = read_checkpoint(&mut s);
        if r.checkpoint["last_op_id"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= cp
        {
            break r.checkpoint;
        }
    };
    let mut removed: Vec<String> = d["removed_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "org_todos_joined|0[\"l1\"]".to_string(),
            "org_todos|0[\"l1\"]".to_string()
        ],
        "{d}"
    );
}

/// No cap per connection (PowerSync stops at 1,000 buckets and at 1,000
/// parameter results, PSYNC_S2305): one stream whose subquery gives a user
/// 100,000 lists resolves to 100,000 buckets, and a connection through the
/// relay gets all of them to `checkpoint_complete` with exactly the user's
/// rows (one tiny todo in every tenth list, so 10,000 buckets carry data
/// and the others are listed empty); a request with 1,500 subscriptions
/// syncs each of them.
#[test]
fn no_cap_on_buckets_parameter_results_or_subscriptions() {
    const LISTS: usize = 100_000;
    const SUBS: usize = 1_500;
    let started = std::time::Instant::now();
    let db = TestDb::new("streams_nocap");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE lists (id text PRIMARY KEY, owner_id text NOT NULL);
         CREATE TABLE todos (id text PRIMARY KEY, list_id text NOT NULL);
         INSERT INTO lists SELECT 'l' || g, 'many' FROM generate_series(1, {LISTS}) g;
         INSERT INTO lists VALUES ('other', 'someone else');
         INSERT INTO todos SELECT 't' || g, 'l' || g FROM generate_series(10, {LISTS}, 10) g;
         INSERT INTO todos VALUES ('t-other', 'other');"
    ))
    .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"config:\n  edition: 3\nstreams:\n  all_mine:\n    auto_subscribe: true\n    query: SELECT * FROM todos WHERE list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())\n  one:\n    query: SELECT * FROM todos WHERE list_id = subscription.parameter('list') AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())\n"],
    )
    .unwrap();
    tick(&mut c);

    let relay = Relay::start(&db);
    let token = relay.token("many", 600);
    let mut all = relay.stream(&token, &request(json!([]), true, vec![]));
    let r = read_checkpoint(&mut all);
    let buckets = r.checkpoint["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), LISTS);
    assert!(
        buckets
            .iter()
            .all(|b| b["subscriptions"] == json!([{"default": 0}])),
        "every bucket is the default stream's"
    );
    assert_eq!(r.checkpoint["streams"][0]["errors"], json!([]));
    let want: BTreeMap<String, BTreeSet<String>> = (10..=LISTS)
        .step_by(10)
        .map(|g| {
            (
                format!("all_mine|0[\"l{g}\"]"),
                BTreeSet::from([format!("t{g}")]),
            )
        })
        .collect();
    assert!(
        r.rows == want,
        "exactly the user's todos, each in its list's bucket ({} buckets with data)",
        r.rows.len()
    );
    drop(all);
    eprintln!(
        "no cap: {LISTS} buckets to checkpoint_complete {:.1} s after the test began",
        started.elapsed().as_secs_f64()
    );

    let subs: Vec<Value> = (1..=SUBS)
        .map(|i| json!({"stream": "one", "parameters": {"list": format!("l{}", i * 10)}, "override_priority": null}))
        .collect();
    let mut s = relay.stream(&token, &request(json!([]), false, subs));
    let r = read_checkpoint(&mut s);
    assert_eq!(r.checkpoint["buckets"].as_array().unwrap().len(), SUBS);
    assert_eq!(r.checkpoint["streams"][0]["errors"], json!([]));
    let rows: usize = r.rows.values().map(BTreeSet::len).sum();
    assert_eq!(rows, SUBS, "every subscription's todo arrived");
}

/// Beyond PowerSync: a joined table's column in a stream's rows. Renaming a
/// list re-PUTs exactly its todos, with the new name, in the checkpoint of
/// the rename; with LEFT JOIN a todo whose list is deleted stays with NULL.
#[test]
fn a_joined_column_follows_the_joined_row_in_the_checkpoint_of_the_write() {
    let rules = "config:\n  edition: 3\nstreams:\n  named:\n    auto_subscribe: true\n    query: SELECT todos.*, lists.name AS list_name FROM todos JOIN lists ON todos.list_id = lists.id WHERE lists.owner_id = auth.user_id()\n  loose:\n    query: SELECT todos.id, lists.name AS list_name FROM todos LEFT JOIN lists ON todos.list_id = lists.id WHERE todos.list_id = subscription.parameter('list')\n    accept_potentially_dangerous_queries: true\n";
    let (db, mut c) = setup("streams_joined", rules);
    let relay = Relay::start(&db);
    let subs =
        vec![json!({"stream": "loose", "parameters": {"list": "l3"}, "override_priority": null})];
    let mut s = relay.stream(&relay.token("u1", 300), &request(json!([]), true, subs));
    let names = |r: &Received| -> BTreeMap<String, Value> {
        r.lines
            .iter()
            .filter_map(|l| l.get("data"))
            .flat_map(|d| d["data"].as_array().unwrap().clone())
            .filter(|op| op["op"] == "PUT")
            .map(|op| {
                let data: Value = serde_json::from_str(op["data"].as_str().unwrap()).unwrap();
                (
                    format!(
                        "{}:{}",
                        op["object_id"].as_str().unwrap(),
                        data["description"].is_null()
                    ),
                    data["list_name"].clone(),
                )
            })
            .collect()
    };
    let first = read_checkpoint(&mut s);
    let got = names(&first);
    assert_eq!(
        got.len(),
        9,
        "l1 and l3 todos in named, l3 todos in loose: {got:?}"
    );
    assert_eq!(got["t1-1:false"], json!("one"));
    assert_eq!(got["t3-1:true"], json!("three"), "the LEFT JOIN stream");

    c.batch_execute("UPDATE lists SET name = 'uno' WHERE id = 'l1'")
        .unwrap();
    let cp = tick(&mut c);
    let r = read_checkpoint(&mut s);
    assert!(
        r.checkpoint["last_op_id"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= cp,
        "the rename's checkpoint"
    );
    let got = names(&r);
    let want: BTreeMap<String, Value> = todos_of("l1")
        .into_iter()
        .map(|t| (format!("{t}:false"), json!("uno")))
        .collect();
    assert_eq!(got, want, "exactly l1's todos, renamed");

    c.batch_execute("DELETE FROM lists WHERE id = 'l3'")
        .unwrap();
    tick(&mut c);
    let r = read_checkpoint(&mut s);
    let got = names(&r);
    let want: BTreeMap<String, Value> = todos_of("l3")
        .into_iter()
        .map(|t| (format!("{t}:true"), Value::Null))
        .collect();
    assert_eq!(got, want, "the LEFT JOIN keeps l3's todos, with NULL");
    let removed = r.checkpoint["removed_buckets"].as_array().unwrap();
    assert!(
        removed.iter().any(|b| b == "named|0[\"l3\"]"),
        "the JOIN stream loses l3: {}",
        r.checkpoint
    );
}
