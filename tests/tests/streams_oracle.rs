//! Sync Streams against an oracle: random inserts, updates, deletes and
//! ownership moves over orgs → memberships → lists → todos by several
//! writer threads while ticks run, and after every checked tick each
//! subscription's bucket rows (folded from the op log of the buckets
//! `sync_checkpoint` gives it) equal the stream's query evaluated by
//! Postgres for that subscription's parameters.
//!
//! The streams cover a three-level nested `IN (SELECT …)`, a JOIN chain
//! whose joined table's column is selected (kept current when a list is
//! renamed), and a LEFT JOIN (NULL when the list is missing); lists are
//! now and then truncated.
//!
//! Writers hold a shared advisory lock for each transaction; the checker
//! takes it exclusively, so once it has the lock every writer transaction
//! has committed or not started, and the tick it runs then must have
//! materialized all of them. A background thread ticks all the while, so
//! most ticks run concurrently with writers. The seed is fixed (override
//! with `OUTPOST_ORACLE_SEED`) and printed on failure; the run stops after
//! `ROUNDS` checks or `BUDGET`, whichever comes first.

use outpost_tests::{fold_bucket, ops, sum_checksums, tick, TestDb};
use postgres::Client;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCHEMA: &str = "
CREATE TABLE orgs (id int PRIMARY KEY, active boolean NOT NULL);
CREATE TABLE memberships (id int PRIMARY KEY, user_id text NOT NULL, org_id int NOT NULL);
CREATE TABLE lists (id int PRIMARY KEY, org_id int, name text NOT NULL);
CREATE TABLE todos (id int PRIMARY KEY, list_id int, title text NOT NULL, assignee text);
CREATE INDEX ON memberships (user_id);
CREATE INDEX ON lists (org_id);
CREATE INDEX ON todos (list_id);
INSERT INTO orgs SELECT g, g % 3 <> 0 FROM generate_series(1, 4) g;
INSERT INTO memberships SELECT g, 'u' || (g % 5), 1 + g % 4 FROM generate_series(1, 8) g;
INSERT INTO lists SELECT g, 1 + g % 4, 'list ' || g FROM generate_series(1, 10) g;
INSERT INTO todos SELECT g, 1 + g % 12, 'todo ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'u' || (g % 5) END
  FROM generate_series(1, 60) g;
";

/// The streams, each query written once: the rules use it as is and the
/// oracle runs it with the request values bound.
const ORG_TODOS: &str = "SELECT * FROM todos WHERE list_id IN (SELECT id FROM lists WHERE org_id IN (SELECT id FROM orgs WHERE active = true AND id IN (SELECT org_id FROM memberships WHERE user_id = auth.user_id())))";
const LIST_TODOS: &str = "SELECT todos.*, lists.name AS list_name FROM todos JOIN lists ON todos.list_id = lists.id JOIN memberships ON memberships.org_id = lists.org_id WHERE memberships.user_id = auth.user_id() AND lists.id = subscription.parameter('list')";
const ASSIGNED: &str = "SELECT todos.id, todos.title, todos.list_id, lists.name AS list_name, lists.org_id AS list_org FROM todos LEFT JOIN lists ON todos.list_id = lists.id WHERE todos.assignee = auth.user_id()";

fn rules() -> String {
    format!(
        "config:\n  edition: 3\nstreams:\n  org_todos:\n    auto_subscribe: true\n    query: \"{ORG_TODOS}\"\n  list_todos:\n    query: \"{LIST_TODOS}\"\n  assigned:\n    auto_subscribe: true\n    query: \"{ASSIGNED}\"\n"
    )
}

const USERS: usize = 5;
const LISTS: i32 = 12; // ids 1..=12; 11 and 12 start missing
const ORGS: i32 = 5; // ids 1..=5; 5 starts missing
const WRITERS: usize = 3;
const ROUNDS: usize = 30;
const BUDGET: Duration = Duration::from_secs(20);
const LOCK: i64 = 0x5eed_0017;

/// One random transaction's statements.
fn random_transaction(rng: &mut StdRng, next_id: &mut i32) -> Vec<String> {
    let user = |rng: &mut StdRng| format!("'u{}'", rng.random_range(0..USERS + 1));
    let list = |rng: &mut StdRng| rng.random_range(1..=LISTS + 1);
    let org = |rng: &mut StdRng| rng.random_range(1..=ORGS);
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..=4) {
        // Rarely, every list at once (the joined table's TRUNCATE path).
        if rng.random_range(0..400) == 0 {
            out.push("TRUNCATE lists".to_string());
            continue;
        }
        let s = match rng.random_range(0..100) {
            0..=17 => {
                *next_id += 1;
                let assignee = if rng.random_bool(0.3) {
                    "NULL".to_string()
                } else {
                    user(rng)
                };
                format!(
                    "INSERT INTO todos VALUES ({}, {}, 'new {}', {assignee})",
                    next_id,
                    list(rng),
                    next_id
                )
            }
            18..=29 => format!(
                "UPDATE todos SET list_id = {} WHERE id = (SELECT min(id) FROM todos WHERE id >= {})",
                list(rng),
                rng.random_range(0..*next_id + 60)
            ),
            30..=37 => format!(
                "UPDATE todos SET assignee = {}, title = title || '+' WHERE id = (SELECT max(id) FROM todos WHERE id <= {})",
                user(rng),
                rng.random_range(0..*next_id + 60)
            ),
            38..=45 => format!(
                "DELETE FROM todos WHERE id = (SELECT min(id) FROM todos WHERE id >= {})",
                rng.random_range(0..*next_id + 60)
            ),
            46..=55 => format!(
                "UPDATE lists SET name = name || '*' WHERE id = {}",
                list(rng)
            ),
            56..=63 => format!(
                "UPDATE lists SET org_id = {} WHERE id = {}",
                org(rng),
                list(rng)
            ),
            64..=67 => format!("DELETE FROM lists WHERE id = {}", list(rng)),
            68..=72 => format!(
                "INSERT INTO lists VALUES ({}, {}, 'again') ON CONFLICT (id) DO UPDATE SET name = 'again ' || lists.id",
                list(rng),
                org(rng)
            ),
            73..=78 => {
                *next_id += 1;
                format!(
                    "INSERT INTO memberships VALUES ({}, {}, {})",
                    next_id,
                    user(rng),
                    org(rng)
                )
            }
            79..=83 => format!(
                "UPDATE memberships SET user_id = {}, org_id = {} WHERE id = (SELECT min(id) FROM memberships WHERE id >= {})",
                user(rng),
                org(rng),
                rng.random_range(0..*next_id + 8)
            ),
            84..=87 => format!(
                "DELETE FROM memberships WHERE id = (SELECT min(id) FROM memberships WHERE id >= {})",
                rng.random_range(0..*next_id + 8)
            ),
            88..=92 => format!("UPDATE orgs SET active = NOT active WHERE id = {}", org(rng)),
            93..=94 => format!("DELETE FROM orgs WHERE id = {}", org(rng)),
            95..=96 => format!(
                "INSERT INTO orgs VALUES ({}, true) ON CONFLICT DO NOTHING",
                org(rng)
            ),
            // Bulk: rename every list of an org (many todos re-PUT), move
            // every todo of a list.
            97..=98 => format!(
                "UPDATE lists SET name = 'renamed ' || id || ' ' || {} WHERE org_id = {}",
                rng.random_range(0..1000),
                org(rng)
            ),
            _ => format!(
                "UPDATE todos SET list_id = {} WHERE list_id = {}",
                list(rng),
                list(rng)
            ),
        };
        out.push(s);
    }
    out
}

fn writer(url: String, seed: u64, idx: usize, stop: Arc<AtomicBool>, commits: Arc<AtomicU64>) {
    let mut c = Client::connect(&url, postgres::NoTls).expect("writer connects");
    let mut rng = StdRng::seed_from_u64(seed ^ (idx as u64 + 1).wrapping_mul(0x9e37_79b9));
    // Ids of new rows: per writer, so inserts never collide.
    let mut next_id = 1_000_000 * (idx as i32 + 1);
    while !stop.load(Ordering::Relaxed) {
        let stmts = random_transaction(&mut rng, &mut next_id);
        let mut t = c.transaction().expect("begin");
        t.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&LOCK])
            .expect("shared lock");
        let mut ok = true;
        for s in &stmts {
            if let Err(e) = t.batch_execute(s) {
                // Two writers moving the same rows may deadlock; that
                // transaction rolls back, which the oracle sees too.
                let code = e.code().map(|c| c.code().to_string());
                assert!(
                    matches!(code.as_deref(), Some("40P01") | Some("40001")),
                    "writer {idx}: `{s}` failed: {e}"
                );
                ok = false;
                break;
            }
        }
        if ok {
            t.commit().expect("commit");
            commits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `id → row` of a query's rows (as JSON), with the request values bound:
/// `$1` the user, `$2` the subscription's list.
fn oracle(c: &mut Client, query: &str, user: &str, list: Option<i32>) -> BTreeMap<String, Value> {
    let sql = query
        .replace("auth.user_id()", "$1::text")
        .replace("subscription.parameter('list')", "$2::int");
    let list = list.unwrap_or(0);
    let rows = if sql.contains("$2") {
        c.query(
            &format!("SELECT to_jsonb(q) FROM ({sql}) q"),
            &[&user, &list],
        )
    } else {
        c.query(&format!("SELECT to_jsonb(q) FROM ({sql}) q"), &[&user])
    }
    .unwrap_or_else(|e| panic!("oracle `{sql}`: {e}"));
    let mut out = BTreeMap::new();
    for r in rows {
        let v: Value = r.get(0);
        let id = v["id"].to_string();
        // A todo reached twice (two memberships of one org) is one row.
        if let Some(prev) = out.insert(id, v.clone()) {
            assert_eq!(prev, v, "the oracle's duplicate rows differ");
        }
    }
    out
}

/// What each subscription of a user holds: `sync_checkpoint` with the
/// defaults and one `list_todos` subscription per list, every bucket's ops
/// folded (checksums and counts checked against the op log), rows merged
/// per reason. Keys: `default:<stream>` or `list_todos:<list>`.
fn synced(c: &mut Client, user: &str, lists: &[i32]) -> BTreeMap<String, BTreeMap<String, Value>> {
    let subs: Vec<Value> = lists
        .iter()
        .map(|l| json!({"stream": "list_todos", "parameters": {"list": l}, "override_priority": null}))
        .collect();
    let streams = json!({"include_defaults": true, "subscriptions": subs});
    let cp: Value = c
        .query_one(
            "SELECT outpost.sync_checkpoint($1, '{}'::jsonb, 'oracle', $2)",
            &[&json!({"sub": user}), &streams],
        )
        .unwrap()
        .get(0);
    let names: Vec<String> = cp["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["errors"], json!([]), "{cp}");
            s["name"].as_str().unwrap().to_string()
        })
        .collect();
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for name in ["org_todos", "assigned"] {
        out.insert(format!("default:{name}"), BTreeMap::new());
    }
    for l in lists {
        out.insert(format!("list_todos:{l}"), BTreeMap::new());
    }
    for b in cp["buckets"].as_array().unwrap() {
        let bucket = b["bucket"].as_str().unwrap();
        let log = ops(c, bucket);
        assert_eq!(
            b["checksum"].as_i64().unwrap() as u32,
            sum_checksums(&log),
            "checksum of {bucket}"
        );
        let rows = fold_bucket(&log);
        for reason in b["subscriptions"].as_array().unwrap() {
            let key = if let Some(k) = reason.get("default") {
                format!("default:{}", names[k.as_u64().unwrap() as usize])
            } else {
                let i = reason["sub"].as_u64().unwrap() as usize;
                format!("list_todos:{}", lists[i])
            };
            let held = out.entry(key.clone()).or_default();
            for ((_, id), v) in &rows {
                if let Some(prev) = held.insert(id.clone(), v.clone()) {
                    assert_eq!(&prev, v, "{key}: row {id} differs between buckets");
                }
            }
        }
    }
    out
}

/// Bucket data is SQLite-shaped JSON; the oracle's `to_jsonb` keys every
/// column too, so the two compare as JSON objects with ids as text.
fn normalize(rows: BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    rows.into_values()
        .map(|v| {
            let id = match &v["id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (id, v)
        })
        .collect()
}

fn diff(want: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>) -> String {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing {v}")),
            Some(g) if g != v => out.push(format!("stale {g}, want {v}")),
            _ => {}
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            out.push(format!("extra {v}"));
        }
    }
    out.join("\n  ")
}

#[test]
fn subscriptions_match_their_queries_after_every_tick_under_concurrent_writers() {
    let seed: u64 = std::env::var("OUTPOST_ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(17_2026);
    let db = TestDb::with_rules("streams_oracle", SCHEMA, &rules());
    let mut c = db.connect();
    tick(&mut c);
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..WRITERS {
        let (url, stop, commits) = (db.url.clone(), stop.clone(), commits.clone());
        threads.push(std::thread::spawn(move || {
            writer(url, seed, i, stop, commits)
        }));
    }
    {
        let (url, stop) = (db.url.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut t = Client::connect(&url, postgres::NoTls).unwrap();
            while !stop.load(Ordering::Relaxed) {
                tick(&mut t);
            }
        }));
    }
    let users: Vec<String> = (0..USERS).map(|u| format!("u{u}")).collect();
    let lists: Vec<i32> = (1..=LISTS + 1).collect();
    let started = Instant::now();
    let mut rounds = 0;
    let mut failure = None;
    while rounds < ROUNDS && started.elapsed() < BUDGET {
        // Let the writers commit a few transactions (while ticks run).
        let before = commits.load(Ordering::Relaxed);
        while commits.load(Ordering::Relaxed) < before + 15 && started.elapsed() < BUDGET {
            std::thread::sleep(Duration::from_millis(5));
        }
        c.execute("SELECT pg_advisory_lock($1)", &[&LOCK]).unwrap();
        let cp = tick(&mut c);
        for user in &users {
            let got = synced(&mut c, user, &lists);
            for (key, rows) in got {
                let (query, list) = match key.split_once(':').unwrap() {
                    ("default", "org_todos") => (ORG_TODOS, None),
                    ("default", "assigned") => (ASSIGNED, None),
                    ("list_todos", l) => (LIST_TODOS, Some(l.parse().unwrap())),
                    other => panic!("unexpected subscription {other:?}"),
                };
                let want = normalize(oracle(&mut c, query, user, list));
                let got = normalize(rows);
                if want != got {
                    failure.get_or_insert_with(|| {
                        format!(
                            "seed {seed} (OUTPOST_ORACLE_SEED), round {rounds}, checkpoint {cp}: user {user}, {key}:\n  {}",
                            diff(&want, &got)
                        )
                    });
                }
            }
        }
        c.execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
            .unwrap();
        rounds += 1;
        if failure.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer or ticker thread");
    }
    if let Some(f) = failure {
        panic!("{f}");
    }
    let n = commits.load(Ordering::Relaxed);
    eprintln!(
        "streams oracle: seed {seed}, {rounds} checked ticks, {n} writer transactions, {:?}",
        started.elapsed()
    );
    assert!(rounds >= 5, "only {rounds} rounds ran (seed {seed})");
    assert!(
        n >= 50,
        "only {n} writer transactions committed (seed {seed})"
    );
}
