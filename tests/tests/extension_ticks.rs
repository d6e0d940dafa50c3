//! The extension's ticks on real Postgres: value conversion for SQLite, write
//! checkpoints, the isolation a tick needs, a late-committing writer, the
//! stats view, and ticks of many keys whose rows are gone or whose parameter
//! lookups change.

mod extension_support;

use extension_support::*;
use outpost_tests::{ops, sync_checkpoint, tick, TestDb, LIST_TODOS_RULES};
use postgres::Client;
use serde_json::json;

#[test]
fn values_are_converted_for_sqlite() {
    let db = TestDb::new("values");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE v (id uuid PRIMARY KEY, b boolean, j jsonb, a int[], ts timestamptz, n numeric, r real, t text, blob bytea);
         INSERT INTO v VALUES ('7c0e0000-0000-0000-0000-000000000001', true, '{\"k\": [1, 2]}', '{1,2}', '2024-01-02 03:04:05+00', 1.5, 2.25, 'x', '\\x01');",
    )
    .unwrap();
    let err = c
        .query_one(
            "SELECT outpost.deploy_rules($1)",
            &[&"bucket_definitions:\n  g:\n    data: SELECT * FROM v\n"],
        )
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("column \"blob\" is bytea"),
        "{err}"
    );
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  g:\n    data: SELECT id, b, j, a, ts, n, r, t, encode(blob, 'hex') AS blob FROM v\n"],
    )
    .unwrap();
    let o = ops(&mut c, "g[]");
    let mut data: serde_json::Value = serde_json::from_str(o[0].data.as_deref().unwrap()).unwrap();
    // json and arrays arrive as JSON text; compare what that text means.
    for k in ["j", "a"] {
        let text = data[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} is JSON text: {data}"))
            .to_string();
        data[k] = serde_json::from_str(&text).unwrap();
    }
    assert_eq!(
        data,
        json!({
            "id": "7c0e0000-0000-0000-0000-000000000001", "b": 1, "j": {"k": [1, 2]}, "a": [1, 2],
            "ts": "2024-01-02 03:04:05Z", "n": "1.5", "r": 2.25, "t": "x", "blob": "01"
        })
    );
    assert_eq!(
        o[0].object_id.as_deref(),
        Some("7c0e0000-0000-0000-0000-000000000001")
    );
}

#[test]
fn write_checkpoints_reach_the_next_checkpoint() {
    let (_db, mut c) = setup("wcp");
    assert_eq!(
        sync_checkpoint(&mut c, "u1", "dev")["write_checkpoint"],
        json!(null)
    );
    // A write not ticked yet: the requests wait for the tick that takes it
    // (with nothing queued they are published at once,
    // extension_write_checkpoints.rs).
    c.batch_execute("INSERT INTO todos VALUES (12, 1, 'uploaded', false)")
        .unwrap();
    let w1: i64 = c
        .query_one("SELECT outpost.request_write_checkpoint('u1', 'dev')", &[])
        .unwrap()
        .get(0);
    let w2: i64 = c
        .query_one("SELECT outpost.request_write_checkpoint('u1', 'dev')", &[])
        .unwrap()
        .get(0);
    assert_eq!((w1, w2), (1, 2));
    assert_eq!(
        sync_checkpoint(&mut c, "u1", "dev")["write_checkpoint"],
        json!(null),
        "not before a tick"
    );
    let before = c
        .query_one("SELECT outpost.checkpoint()", &[])
        .unwrap()
        .get::<_, i64>(0);
    let cp = tick(&mut c);
    assert!(cp > before);
    assert_eq!(
        sync_checkpoint(&mut c, "u1", "dev")["write_checkpoint"],
        json!(2)
    );
    assert_eq!(
        sync_checkpoint(&mut c, "u1", "other")["write_checkpoint"],
        json!(null)
    );
}

#[test]
fn tick_refuses_repeatable_read() {
    let (_db, mut c) = setup("isolation");
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let err = tx.query_one("SELECT outpost.tick()", &[]).unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("READ COMMITTED"),
        "{err}"
    );
}

#[test]
fn a_late_committing_writer_is_not_lost() {
    let (db, mut c) = setup("late");
    // A transaction that captures early and commits after a later writer and a tick.
    let mut slow = db.connect();
    let mut tx = slow.transaction().unwrap();
    tx.batch_execute("INSERT INTO todos VALUES (50, 1, 'slow', false)")
        .unwrap();
    c.batch_execute("INSERT INTO todos VALUES (51, 1, 'fast', false)")
        .unwrap();
    let cp1 = tick(&mut c);
    let ids: Vec<String> = rows(&mut c, "user_lists[1]")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(ids, vec!["10", "11", "51"]);
    tx.commit().unwrap();
    let cp2 = tick(&mut c);
    assert!(cp2 > cp1);
    let o = ops(&mut c, "user_lists[1]");
    let slow_op = o
        .iter()
        .find(|o| o.object_id.as_deref() == Some("50"))
        .expect("slow write reached the op log");
    assert!(
        slow_op.op_id > cp1,
        "it got an op id above the already published checkpoint"
    );
}

#[test]
fn stats_view_reports_counts() {
    let (_db, mut c) = setup("stats");
    let r = c
        .query_one("SELECT bucket_definitions, buckets, ops, pending_changes, checkpoint, rules_version, captured_tables FROM outpost.stats", &[])
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 2);
    assert_eq!(r.get::<_, i64>(1), 3);
    assert_eq!(r.get::<_, i64>(2), 5);
    assert_eq!(r.get::<_, i64>(3), 0);
    assert_eq!(r.get::<_, i64>(4), 5);
    assert_eq!(r.get::<_, i64>(5), 1);
    assert_eq!(r.get::<_, i64>(6), 2);
    c.batch_execute("INSERT INTO todos VALUES (60, 1, 'x', false)")
        .unwrap();
    let p: i64 = c
        .query_one("SELECT pending_changes FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(p, 1);
}

/// Ticks of tens of thousands of queued keys whose rows are gone (removed by
/// a TRUNCATE, a DELETE, or inserted and deleted before any tick) stay
/// linear, also when the queue and the op state were last analyzed empty (the
/// planner then estimates a few rows). Each such tick runs under a statement
/// timeout, so a plan that rescans per key fails here instead of hanging.
#[test]
fn ticks_of_many_removed_keys_stay_fast() {
    const N: i64 = 30_000;
    let (_db, mut c) = list_todos_db(
        "removed_keys",
        "INSERT INTO lists SELECT g, 'u' || (g % 50) FROM generate_series(1, 100) g",
    );
    let insert = format!(
        "INSERT INTO todos SELECT g, 1 + g % 100, 'todo ' || g FROM generate_series(1, {N}) g"
    );
    let timed_tick = |c: &mut Client| tick_within(c, "30s");
    let removes = "SELECT count(*) FROM outpost.ops WHERE op = 'REMOVE'";
    let todo_rows = "SELECT count(*) FROM outpost.bucket_rows WHERE object_type = 'todos'";
    let cp0 = tick(&mut c);

    // Rows removed by a TRUNCATE before any tick saw them: nothing to publish.
    c.batch_execute(&insert).unwrap();
    c.batch_execute("TRUNCATE todos").unwrap();
    assert_eq!(timed_tick(&mut c), cp0);
    assert_eq!(count(&mut c, todo_rows), 0);
    // The queue is now empty but keeps its pages: analyzed so, the planner
    // estimates the next queue at one row.
    c.batch_execute("ANALYZE outpost.changes").unwrap();

    // Inserted and deleted before a tick: nothing to publish.
    c.batch_execute(&insert).unwrap();
    c.batch_execute("DELETE FROM todos").unwrap();
    assert_eq!(timed_tick(&mut c), cp0);
    c.batch_execute("ANALYZE outpost.changes").unwrap();

    // Ticked rows deleted: one REMOVE each, and bucket_rows left with dead
    // rows only, analyzed so.
    c.batch_execute(&insert).unwrap();
    let cp1 = tick(&mut c);
    assert_eq!(cp1, cp0 + N);
    assert_eq!(count(&mut c, todo_rows), N);
    c.batch_execute("DELETE FROM todos").unwrap();
    assert_eq!(timed_tick(&mut c), cp1 + N);
    assert_eq!(count(&mut c, removes), N);
    assert_eq!(count(&mut c, todo_rows), 0);
    c.batch_execute("ANALYZE outpost.changes, outpost.bucket_rows")
        .unwrap();

    // The bench's case: keys of rows a TRUNCATE removed, plus the truncate,
    // with no bucket rows left for the table.
    c.batch_execute(&insert).unwrap();
    c.batch_execute("TRUNCATE todos").unwrap();
    assert_eq!(timed_tick(&mut c), cp1 + N);
    assert_eq!(count(&mut c, "SELECT count(*) FROM outpost.changes"), 0);

    // Every ticked row updated while bucket_rows is still analyzed empty
    // (the tick updates its entries by ctid, with no ANALYZE first), then a
    // TRUNCATE of them: one PUT, then one REMOVE each.
    c.batch_execute(&insert).unwrap();
    let cp2 = tick(&mut c);
    c.batch_execute("UPDATE todos SET title = title || '!'")
        .unwrap();
    assert_eq!(timed_tick(&mut c), cp2 + N);
    assert_eq!(count(&mut c, todo_rows), N);
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM outpost.bucket_rows WHERE op_id > {cp2}")
        ),
        N
    );
    c.batch_execute("TRUNCATE todos").unwrap();
    assert_eq!(timed_tick(&mut c), cp2 + 2 * N);
    assert_eq!(count(&mut c, removes), 2 * N);
    assert_eq!(count(&mut c, todo_rows), 0);
}

/// The same for parameter lookups: a parameter table of tens of thousands of
/// rows changing while `outpost.param_rows` was last analyzed empty (its
/// pages kept), so the planner expects one lookup where there are 30k. Each
/// tick that replaces or removes the lookups runs under the statement
/// timeout. Last, the parameter table itself analyzed empty with its pages
/// kept (what autovacuum does after the `DELETE` when it cannot truncate
/// the table): the planner then expected one row of `lists` and ran the
/// keyed parameter query as a scan of it rescanning every changed key per
/// row, 3 minutes for 30k keys (the stall a loaded CI run once hit); the
/// keys now drive the query (rules/src/compile/sqlgen.rs, `pk_exprs`).
#[test]
fn ticks_of_many_parameter_rows_stay_fast() {
    const N: i64 = 30_000;
    let (_db, mut c) = list_todos_db("param_rows_stats", "");
    let insert =
        format!("INSERT INTO lists SELECT g, 'u' || (g % 50) FROM generate_series(1, {N}) g");
    // A quadratic plan over 30k lookups takes minutes; the linear one a few
    // seconds even on a loaded machine: 60 s tells them apart with margin.
    let timed_tick = |c: &mut Client| {
        tick_within(c, "60s");
    };
    let lookups = "SELECT count(*) FROM outpost.param_rows";
    let moved = "SELECT count(*) FROM outpost.param_rows WHERE lookup::text LIKE '%x%'";

    c.batch_execute(&insert).unwrap();
    timed_tick(&mut c);
    assert_eq!(count(&mut c, lookups), N);
    c.batch_execute("DELETE FROM lists").unwrap();
    timed_tick(&mut c);
    assert_eq!(count(&mut c, lookups), 0);
    c.batch_execute("ANALYZE outpost.param_rows").unwrap();

    // Lookups that fill the analyzed-empty table, then replace every one of them.
    c.batch_execute(&insert).unwrap();
    timed_tick(&mut c);
    assert_eq!(count(&mut c, lookups), N);
    c.batch_execute("UPDATE lists SET owner_id = owner_id || 'x'")
        .unwrap();
    timed_tick(&mut c);
    assert_eq!(count(&mut c, lookups), N);
    assert_eq!(count(&mut c, moved), N);

    // Every lookup removed, the statistics still from the empty table.
    c.batch_execute("DELETE FROM lists").unwrap();
    timed_tick(&mut c);
    assert_eq!(count(&mut c, lookups), 0);

    // The source table, the queue and the lookups analyzed while empty.
    c.batch_execute("ANALYZE lists, outpost.changes, outpost.param_rows")
        .unwrap();
    c.batch_execute(&insert).unwrap();
    timed_tick(&mut c);
    assert_eq!(count(&mut c, lookups), N);
}

/// A database with the list-todos tables (`lists` filled by `lists_sql`) and
/// their rules deployed.
fn list_todos_db(label: &str, lists_sql: &str) -> (TestDb, Client) {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE lists (id int PRIMARY KEY, owner_id text NOT NULL);
         {lists_sql};
         CREATE TABLE todos (id bigint PRIMARY KEY, list_id int NOT NULL, title text);"
    ))
    .unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&LIST_TODOS_RULES])
        .unwrap();
    (db, c)
}

/// A tick under a statement timeout of `limit`: a plan that rescans per key
/// fails the test instead of hanging it. Returns the checkpoint.
fn tick_within(c: &mut Client, limit: &str) -> i64 {
    c.batch_execute(&format!("SET statement_timeout = '{limit}'"))
        .unwrap();
    let cp = c
        .query_one("SELECT outpost.tick()", &[])
        .expect("tick within the statement timeout");
    c.batch_execute("RESET statement_timeout").unwrap();
    cp.get(0)
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}
