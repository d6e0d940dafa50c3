//! Sync rules as SQL functions: define_bucket, drop_bucket, rules_yaml, the
//! buckets view; transactional; a change touches only the buckets it names.

use outpost_tests::{ops, tick, Op, TestDb};
use postgres::Client;

const SCHEMA: &str = "
CREATE TABLE lists (id int PRIMARY KEY, owner_id text NOT NULL, name text);
CREATE TABLE todos (id int PRIMARY KEY, list_id int, title text, done boolean NOT NULL DEFAULT false);
CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO lists VALUES (1, 'u1', 'one'), (2, 'u2', 'two');
INSERT INTO todos SELECT g, 1 + g % 2, 't' || g, g % 3 = 0 FROM generate_series(1, 50) g;
INSERT INTO notes VALUES (1, 'n1');
";

fn setup(label: &str) -> (TestDb, Client) {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(SCHEMA).unwrap();
    (db, c)
}

fn define(
    c: &mut Client,
    name: &str,
    params: &[&str],
    data: &[&str],
    prio: i32,
) -> Result<i64, postgres::Error> {
    let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
    let data: Vec<String> = data.iter().map(|s| s.to_string()).collect();
    c.query_one(
        "SELECT outpost.define_bucket($1, $2, $3, $4)",
        &[&name, &params, &data, &prio],
    )
    .map(|r| r.get(0))
}

fn all_ops(c: &mut Client, prefix: &str) -> Vec<Op> {
    let buckets: Vec<String> = c
        .query(
            "SELECT bucket FROM outpost.bucket_state WHERE def = $1 ORDER BY bucket",
            &[&prefix],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    buckets.iter().flat_map(|b| ops(c, b)).collect()
}

fn state(c: &mut Client, def: &str) -> Vec<(String, i64, i64, i64)> {
    c.query("SELECT bucket, checksum, op_count, last_op_id FROM outpost.bucket_state WHERE def = $1 ORDER BY bucket", &[&def])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn triggers(c: &mut Client, table: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal",
        &[&table],
    )
    .unwrap()
    .get(0)
}

#[test]
fn define_and_drop_buckets() {
    let (_db, mut c) = setup("define");
    let v1 = define(
        &mut c,
        "by_list",
        &["SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()"],
        &["SELECT id, title FROM todos WHERE list_id = bucket.list_id"],
        1,
    )
    .unwrap();
    let v2 = define(&mut c, "notes", &[], &["SELECT id, body FROM notes"], 3).unwrap();
    assert_eq!((v1, v2), (1, 2));
    let rows: Vec<(String, i32, Vec<String>)> = c
        .query(
            "SELECT name, priority, data FROM outpost.buckets ORDER BY name",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows[0].0, "by_list");
    assert_eq!(rows[0].1, 1);
    assert_eq!(
        rows[1],
        (
            "notes".to_string(),
            3,
            vec!["SELECT id, body FROM notes".to_string()]
        )
    );
    assert_eq!(ops(&mut c, "notes[]").len(), 1);
    assert_eq!(triggers(&mut c, "notes"), 4);

    // Same validation as deploy_rules, naming bucket, query and problem; nothing changes.
    let err = define(&mut c, "bad", &[], &["SELECT id, nope FROM notes"], 3).unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(
        msg.contains("bucket \"bad\", data query 1: unknown column \"nope\" in table \"notes\""),
        "{msg}"
    );
    let err = define(&mut c, "bad", &[], &[], 3).unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("needs at least one data query"),
        "{err}"
    );
    let err = define(&mut c, "bad", &[], &["SELECT id FROM notes"], 9).unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("priority must be between 0"),
        "{err}"
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM outpost.buckets", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    let v3: i64 = c
        .query_one("SELECT outpost.drop_bucket('notes')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v3, 3);
    assert!(
        ops(&mut c, "notes[]").is_empty(),
        "dropped bucket's ops are gone"
    );
    assert_eq!(
        triggers(&mut c, "notes"),
        0,
        "capture removed where no bucket needs the table"
    );
    assert_eq!(triggers(&mut c, "todos"), 4);
    let err = c
        .query_one("SELECT outpost.drop_bucket('notes')", &[])
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("bucket \"notes\" is not defined"),
        "{err}"
    );
}

#[test]
fn rules_yaml_round_trips() {
    let (_db, mut c) = setup("yaml");
    let yaml = "
bucket_definitions:
  by_list:
    priority: 0
    parameters:
      - SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
      - SELECT id AS list_id FROM lists WHERE name = request.parameters() ->> 'list'
    data:
      - SELECT id, title FROM todos WHERE list_id = bucket.list_id
      - \"SELECT id, name || ': list' AS title FROM lists WHERE id = bucket.list_id\"
  notes:
    data: SELECT * FROM notes
";
    c.query_one("SELECT outpost.deploy_rules($1)", &[&yaml])
        .unwrap();
    let before_defs: Vec<(String, serde_json::Value)> = c
        .query(
            "SELECT name, compiled FROM outpost.bucket_defs ORDER BY name",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let before_ops = c
        .query_one("SELECT count(*), max(op_id) FROM outpost.ops", &[])
        .unwrap();
    let out: String = c
        .query_one("SELECT outpost.rules_yaml()", &[])
        .unwrap()
        .get(0);
    let v: i64 = c
        .query_one("SELECT outpost.deploy_rules($1)", &[&out])
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
    let after_defs: Vec<(String, serde_json::Value)> = c
        .query(
            "SELECT name, compiled FROM outpost.bucket_defs ORDER BY name",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        before_defs, after_defs,
        "rules_yaml() deploys to the same rules:\n{out}"
    );
    let after_ops = c
        .query_one("SELECT count(*), max(op_id) FROM outpost.ops", &[])
        .unwrap();
    assert_eq!(
        before_ops.get::<_, i64>(0),
        after_ops.get::<_, i64>(0),
        "an identical redeploy emits no ops"
    );
    assert_eq!(
        out,
        c.query_one("SELECT outpost.rules_yaml()", &[])
            .unwrap()
            .get::<_, String>(0)
    );
}

#[test]
fn rollback_leaves_rules_capture_and_ops() {
    let (_db, mut c) = setup("rollback");
    define(&mut c, "notes", &[], &["SELECT id, body FROM notes"], 3).unwrap();
    let ops_before = all_ops(&mut c, "notes");
    let mut tx = c.transaction().unwrap();
    tx.query_one(
        "SELECT outpost.define_bucket('todos_all', '{}', ARRAY['SELECT id, title FROM todos'])",
        &[],
    )
    .unwrap();
    tx.query_one("SELECT outpost.drop_bucket('notes')", &[])
        .unwrap();
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket = 'todos_all[]'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        n, 50,
        "inside the transaction the new bucket is materialized"
    );
    tx.rollback().unwrap();
    let names: Vec<String> = c
        .query("SELECT name FROM outpost.buckets", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["notes"]);
    assert_eq!(triggers(&mut c, "todos"), 0);
    assert_eq!(triggers(&mut c, "notes"), 4);
    assert_eq!(all_ops(&mut c, "notes"), ops_before);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket = 'todos_all[]'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Capture still works after the rollback.
    c.batch_execute("UPDATE notes SET body = 'changed'")
        .unwrap();
    tick(&mut c);
    assert_eq!(all_ops(&mut c, "notes").len(), ops_before.len() + 1);
}

#[test]
fn changes_touch_only_the_named_bucket() {
    let (_db, mut c) = setup("touch");
    define(
        &mut c,
        "by_list",
        &["SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()"],
        &["SELECT id, title FROM todos WHERE list_id = bucket.list_id"],
        3,
    )
    .unwrap();
    define(
        &mut c,
        "open",
        &[],
        &["SELECT id, title FROM todos WHERE NOT done"],
        3,
    )
    .unwrap();
    let by_list_ops = all_ops(&mut c, "by_list");
    let by_list_state = state(&mut c, "by_list");
    let open_ops = all_ops(&mut c, "open");

    // A new bucket over the same table: the others do not move.
    define(&mut c, "done", &[], &["SELECT id FROM todos WHERE done"], 3).unwrap();
    assert_eq!(all_ops(&mut c, "by_list"), by_list_ops);
    assert_eq!(state(&mut c, "by_list"), by_list_state);
    assert_eq!(all_ops(&mut c, "open"), open_ops);
    assert_eq!(all_ops(&mut c, "done").len(), 16);

    // Replacing one bucket re-materializes it alone, as a diff.
    define(
        &mut c,
        "open",
        &[],
        &["SELECT id, title FROM todos WHERE NOT done AND id <= 10"],
        3,
    )
    .unwrap();
    assert_eq!(all_ops(&mut c, "by_list"), by_list_ops);
    assert_eq!(state(&mut c, "by_list"), by_list_state);
    let open_after = all_ops(&mut c, "open");
    assert_eq!(
        &open_after[..open_ops.len()],
        &open_ops[..],
        "earlier ops of the replaced bucket stay"
    );
    let removes = open_after[open_ops.len()..]
        .iter()
        .filter(|o| o.op == "REMOVE")
        .count();
    assert_eq!(
        removes,
        open_ops.len() - 7,
        "only rows leaving the bucket get ops"
    );
    assert_eq!(open_after.len() - open_ops.len(), removes);

    // Dropping one leaves the others alone.
    c.query_one("SELECT outpost.drop_bucket('done')", &[])
        .unwrap();
    assert_eq!(all_ops(&mut c, "by_list"), by_list_ops);
    assert_eq!(state(&mut c, "by_list"), by_list_state);
}

#[test]
fn rules_change_while_writers_and_ticks_run() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (db, mut c) = setup("rules_concurrent");
    define(
        &mut c,
        "all_todos",
        &[],
        &["SELECT id, title, done FROM todos"],
        3,
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                for i in 0..150 {
                    let id = 1000 + w * 1000 + i;
                    c.execute("INSERT INTO todos VALUES ($1, 1, 'w', false)", &[&id])
                        .unwrap();
                    c.execute(
                        "UPDATE todos SET done = NOT done WHERE id = $1",
                        &[&(1 + i % 50)],
                    )
                    .unwrap();
                    if i % 7 == 0 {
                        c.execute("DELETE FROM todos WHERE id = $1", &[&(id - 1)])
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    let ticker = {
        let url = db.url.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            while !stop.load(Ordering::SeqCst) {
                c.query_one("SELECT outpost.tick()", &[]).unwrap();
            }
        })
    };
    let mut deploys = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        let filter = if deploys % 2 == 0 { "done" } else { "NOT done" };
        let sql = format!("SELECT id, title FROM todos WHERE {filter}");
        define(&mut c, "some_todos", &[], &[sql.as_str()], 3).unwrap();
        deploys += 1;
        if deploys % 3 == 0 {
            c.query_one("SELECT outpost.drop_bucket('some_todos')", &[])
                .unwrap();
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    ticker.join().unwrap();
    tick(&mut c);
    assert!(deploys > 2, "deploys ran while writing ({deploys})");
    // Every bucket equals its rules over the final table.
    let folded = |c: &mut Client, bucket: &str| -> Vec<String> {
        let mut ids: Vec<String> = outpost_tests::fold_bucket(&ops(c, bucket))
            .into_keys()
            .map(|(_, id)| id)
            .collect();
        ids.sort();
        ids
    };
    let want = |c: &mut Client, filter: &str| -> Vec<String> {
        let mut ids: Vec<String> = c
            .query(&format!("SELECT id::text FROM todos WHERE {filter}"), &[])
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(folded(&mut c, "all_todos[]"), want(&mut c, "true"));
    let active: Option<Vec<String>> = c
        .query_opt(
            "SELECT data FROM outpost.buckets WHERE name = 'some_todos'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0));
    if let Some(data) = active {
        let filter = data[0].split("WHERE ").nth(1).unwrap().to_string();
        assert_eq!(folded(&mut c, "some_todos[]"), want(&mut c, &filter));
    }
}
