//! The extension on real Postgres: deploy → snapshot → writes → tick → ops and
//! checksums; redeploy; rows moving between buckets; parameter rows; TRUNCATE;
//! validation errors; value conversion; write checkpoints.

use outpost_tests::{bucket_names, fold_bucket, ops, sum_checksums, sync_checkpoint, tick, TestDb};
use postgres::Client;
use serde_json::json;

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
    let v: i64 = c
        .query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
    (db, c)
}

fn rows(c: &mut Client, bucket: &str) -> Vec<(String, String, serde_json::Value)> {
    fold_bucket(&ops(c, bucket))
        .into_iter()
        .map(|((t, id), v)| (t, id, v))
        .collect()
}

fn state(c: &mut Client, bucket: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT checksum, op_count FROM outpost.bucket_state WHERE bucket = $1",
            &[&bucket],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

#[test]
fn deploy_snapshots_existing_rows() {
    let (_db, mut c) = setup("snapshot");
    assert_eq!(
        rows(&mut c, "user_lists[1]"),
        vec![
            (
                "todos".into(),
                "10".into(),
                json!({"id": 10, "list_id": 1, "title": "a", "done": 0})
            ),
            (
                "todos".into(),
                "11".into(),
                json!({"id": 11, "list_id": 1, "title": "b", "done": 1})
            ),
        ]
    );
    assert_eq!(rows(&mut c, "user_lists[2]").len(), 1);
    assert_eq!(rows(&mut c, "global[]").len(), 2);
    // The running totals equal the op log.
    for b in ["user_lists[1]", "user_lists[2]", "global[]"] {
        let o = ops(&mut c, b);
        let (sum, count) = state(&mut c, b);
        assert_eq!(sum as u32, sum_checksums(&o), "{b}");
        assert_eq!(count as usize, o.len(), "{b}");
    }
    let cp = sync_checkpoint(&mut c, "u1", "c1");
    assert_eq!(bucket_names(&cp), vec!["global[]", "user_lists[1]"]);
    assert_eq!(
        cp["checkpoint"],
        json!(5),
        "five ops, checkpoint is the last op id"
    );
}

#[test]
fn writes_become_ops_after_tick() {
    let (_db, mut c) = setup("writes");
    let before = ops(&mut c, "user_lists[1]").len();
    c.batch_execute("INSERT INTO todos VALUES (12, 1, 'new', false); UPDATE todos SET title = 'A' WHERE id = 10; DELETE FROM todos WHERE id = 11;")
        .unwrap();
    // Nothing is visible before the tick.
    assert_eq!(ops(&mut c, "user_lists[1]").len(), before);
    let cp = tick(&mut c);
    let o = ops(&mut c, "user_lists[1]");
    assert_eq!(o.len(), before + 3);
    let new: Vec<&str> = o[before..].iter().map(|o| o.op.as_str()).collect();
    assert_eq!(new.iter().filter(|x| **x == "PUT").count(), 2);
    assert_eq!(new.iter().filter(|x| **x == "REMOVE").count(), 1);
    assert!(o.iter().all(|op| op.op_id <= cp));
    assert_eq!(
        rows(&mut c, "user_lists[1]"),
        vec![
            (
                "todos".into(),
                "10".into(),
                json!({"id": 10, "list_id": 1, "title": "A", "done": 0})
            ),
            (
                "todos".into(),
                "12".into(),
                json!({"id": 12, "list_id": 1, "title": "new", "done": 0})
            ),
        ]
    );
    let (sum, count) = state(&mut c, "user_lists[1]");
    assert_eq!(sum as u32, sum_checksums(&o));
    assert_eq!(count as usize, o.len());
    // An update that changes nothing a bucket sees produces no op.
    c.batch_execute("UPDATE todos SET title = title WHERE id = 10")
        .unwrap();
    assert_eq!(tick(&mut c), cp, "no ops, no new checkpoint");
    // Other buckets were not touched by writes to list 1.
    assert_eq!(ops(&mut c, "user_lists[2]").len(), 1);
}

#[test]
fn row_moving_between_buckets() {
    let (_db, mut c) = setup("move");
    c.batch_execute("UPDATE todos SET list_id = 2 WHERE id = 10")
        .unwrap();
    tick(&mut c);
    let o1 = ops(&mut c, "user_lists[1]");
    assert_eq!(o1.last().unwrap().op, "REMOVE");
    assert_eq!(o1.last().unwrap().object_id.as_deref(), Some("10"));
    let ids2: Vec<String> = rows(&mut c, "user_lists[2]")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(ids2, vec!["10", "20"]);
    // Primary key change: old key removed, new key put.
    c.batch_execute("UPDATE todos SET id = 99 WHERE id = 20")
        .unwrap();
    tick(&mut c);
    let ids2: Vec<String> = rows(&mut c, "user_lists[2]")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(ids2, vec!["10", "99"]);
}

#[test]
fn parameter_rows_change_bucket_sets() {
    let (_db, mut c) = setup("params");
    assert_eq!(
        bucket_names(&sync_checkpoint(&mut c, "u2", "c")),
        vec!["global[]", "user_lists[2]"]
    );
    let before = outpost_tests::tick(&mut c);
    c.batch_execute("UPDATE lists SET owner_id = 'u2' WHERE id = 1; INSERT INTO lists VALUES (3, 'u3', 'three')").unwrap();
    let after = tick(&mut c);
    assert!(after > before, "a parameter change publishes a checkpoint");
    assert_eq!(
        bucket_names(&sync_checkpoint(&mut c, "u2", "c")),
        vec!["global[]", "user_lists[1]", "user_lists[2]"]
    );
    assert_eq!(
        bucket_names(&sync_checkpoint(&mut c, "u1", "c")),
        vec!["global[]"]
    );
    assert_eq!(
        bucket_names(&sync_checkpoint(&mut c, "u3", "c")),
        vec!["global[]", "user_lists[3]"]
    );
    // A bucket with no rows is listed with checksum 0.
    let cp = sync_checkpoint(&mut c, "u3", "c");
    let b3 = cp["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bucket"] == "user_lists[3]")
        .unwrap();
    assert_eq!(b3["checksum"], json!(0));
    c.batch_execute("DELETE FROM lists WHERE id = 3").unwrap();
    tick(&mut c);
    assert_eq!(
        bucket_names(&sync_checkpoint(&mut c, "u3", "c")),
        vec!["global[]"]
    );
}

#[test]
fn truncate_removes_every_row() {
    let (_db, mut c) = setup("truncate");
    c.batch_execute("TRUNCATE todos; INSERT INTO todos VALUES (30, 1, 'after', false)")
        .unwrap();
    tick(&mut c);
    let ids: Vec<String> = rows(&mut c, "user_lists[1]")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(ids, vec!["30"]);
    assert!(rows(&mut c, "user_lists[2]").is_empty());
    assert_eq!(ops(&mut c, "user_lists[2]").last().unwrap().op, "REMOVE");
}

#[test]
fn redeploy_replaces_rules_and_keeps_untouched_buckets() {
    let (_db, mut c) = setup("redeploy");
    let global_before = ops(&mut c, "global[]");
    let v: i64 = c
        .query_one(
            "SELECT outpost.deploy_rules($1)",
            &[&"
bucket_definitions:
  global:
    data: SELECT id, name FROM lists
  open_todos:
    data: SELECT id, title FROM todos WHERE NOT done
"],
        )
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
    // Removed buckets are gone, the unchanged one did not move.
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket LIKE 'user_lists%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(ops(&mut c, "global[]"), global_before);
    assert_eq!(
        bucket_names(&sync_checkpoint(&mut c, "u1", "c")),
        vec!["global[]", "open_todos[]"]
    );
    let ids: Vec<String> = rows(&mut c, "open_todos[]")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(ids, vec!["10", "20"]);
    // lists is still read by `global`, todos by `open_todos`: both still captured.
    c.batch_execute("UPDATE todos SET done = true WHERE id = 10")
        .unwrap();
    tick(&mut c);
    let ids: Vec<String> = rows(&mut c, "open_todos[]")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(ids, vec!["20"]);
    // Changing a definition re-evaluates in place: only differences become ops.
    let before = ops(&mut c, "open_todos[]").len();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"
bucket_definitions:
  global:
    data: SELECT id, name FROM lists
  open_todos:
    data: SELECT id, title FROM todos WHERE NOT done AND id > 15
"],
    )
    .unwrap();
    let o = ops(&mut c, "open_todos[]");
    assert_eq!(
        o.len(),
        before,
        "row 20 is unchanged, nothing else qualified"
    );
    // A table that leaves the rules loses its capture triggers.
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  global:\n    data: SELECT id, name FROM lists\n"],
    )
    .unwrap();
    let triggers: i64 = c
        .query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'todos'::regclass AND NOT tgisinternal", &[])
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    let pending_before: i64 = c
        .query_one("SELECT pending_changes FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    c.batch_execute("INSERT INTO todos VALUES (40, 1, 'x', false)")
        .unwrap();
    let pending: i64 = c
        .query_one("SELECT pending_changes FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, pending_before, "todos is no longer captured");
}

#[test]
fn invalid_rules_deploy_nothing() {
    let (_db, mut c) = setup("invalid");
    let cases = [
        ("bucket_definitions:\n  b:\n    data: SELECT id, nope FROM todos\n", "bucket \"b\", data query 1: unknown column \"nope\" in table \"todos\""),
        ("bucket_definitions:\n  b:\n    data: SELECT id FROM missing\n", "bucket \"b\", data query 1: unknown table \"missing\""),
        ("bucket_definitions:\n  b:\n    data: SELECT title FROM todos\n", "must select an `id` column"),
        // Caught by Postgres, reported with bucket and query.
        ("bucket_definitions:\n  b:\n    data: SELECT id, title + 1 AS t FROM todos\n", "bucket \"b\", data query 1: operator does not exist"),
        ("bucket_definitions:\n  b:\n    data: SELECT id FROM todos WHERE nosuchfn(title)\n", "bucket \"b\", data query 1: function nosuchfn"),
        // Injection attempts fail validation instead of executing.
        ("bucket_definitions:\n  b:\n    data: \"SELECT id FROM todos; DROP TABLE lists\"\n", "exactly one SELECT"),
        ("bucket_definitions:\n  \"b']); DROP TABLE lists; --\":\n    data: SELECT id FROM todos\n", "invalid bucket name"),
    ];
    for (yaml, want) in cases {
        let err = c
            .query_one("SELECT outpost.deploy_rules($1)", &[&yaml])
            .unwrap_err();
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), "22023", "{yaml}");
        assert!(
            db.message().contains(want),
            "{yaml}\nwant: {want}\ngot:  {}",
            db.message()
        );
        // validate_rules reports the same problem without raising.
        let rows = c
            .query(
                "SELECT level, message, location FROM outpost.validate_rules($1)",
                &[&yaml],
            )
            .unwrap();
        assert!(!rows.is_empty(), "validate_rules found nothing for {yaml}");
        let joined: String = rows
            .iter()
            .map(|r| format!("{}: {}", r.get::<_, String>(2), r.get::<_, String>(1)))
            .collect();
        let short = want.rsplit(": ").next().unwrap();
        assert!(joined.contains(short), "{yaml}: {joined}");
    }
    let v: i64 = c
        .query_one("SELECT rules_version FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, 1, "nothing deployed");
    c.query_one("SELECT 1 FROM lists LIMIT 1", &[]).unwrap();
    assert!(c
        .query("SELECT * FROM outpost.validate_rules($1)", &[&RULES])
        .unwrap()
        .is_empty());
}

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
    assert!(
        cp > before,
        "a write checkpoint alone publishes a checkpoint"
    );
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

#[test]
fn schema_changes_are_followed_or_reported() {
    let (_db, mut c) = setup("schema_change");
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  all_lists:\n    data: SELECT * FROM lists\n  names:\n    data: SELECT id, name FROM lists\n"],
    )
    .unwrap();
    // An added column reaches `SELECT *` buckets; other buckets do not move.
    let names_before = ops(&mut c, "names[]");
    c.batch_execute("ALTER TABLE lists ADD COLUMN color text DEFAULT 'red'")
        .unwrap();
    let all = rows(&mut c, "all_lists[]");
    assert_eq!(all[0].2["color"], json!("red"), "{all:?}");
    assert_eq!(ops(&mut c, "names[]"), names_before);
    let problems: Vec<String> = c
        .query_one("SELECT problems FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert!(problems.is_empty(), "{problems:?}");
    // A referenced column dropped: the DDL succeeds, the problem is reported,
    // and ticks refuse to run rather than stream wrong rows.
    c.batch_execute("ALTER TABLE lists DROP COLUMN name")
        .unwrap();
    let problems: Vec<String> = c
        .query_one("SELECT problems FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0]
            .contains("bucket \"names\", data query 1: unknown column \"name\" in table \"lists\""),
        "{problems:?}"
    );
    c.batch_execute("INSERT INTO lists VALUES (9, 'u9')")
        .unwrap();
    let err = c.query_one("SELECT outpost.tick()", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(
        db.message()
            .starts_with("outpost.tick: the compiled sync rules failed"),
        "{}",
        db.message()
    );
    assert!(
        db.detail()
            .unwrap_or_default()
            .contains("unknown column \"name\""),
        "{:?}",
        db.detail()
    );
    // Fixing the rules clears the problem and sync resumes with the pending write.
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  all_lists:\n    data: SELECT * FROM lists\n"],
    )
    .unwrap();
    let problems: Vec<String> = c
        .query_one("SELECT problems FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert!(problems.is_empty());
    tick(&mut c);
    let ids: Vec<String> = rows(&mut c, "all_lists[]")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert!(ids.contains(&"9".to_string()), "{ids:?}");
    // A dropped synced table is reported too.
    c.batch_execute("DROP TABLE todos").unwrap();
    c.batch_execute("DROP TABLE lists").unwrap();
    let problems: Vec<String> = c
        .query_one("SELECT problems FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("public.lists was dropped")),
        "{problems:?}"
    );
}

#[test]
fn a_restored_dump_redeploys_and_keeps_capturing() {
    let (db, mut c) = setup("dump_src");
    c.query_one("SELECT outpost.request_write_checkpoint('u1', 'dev')", &[])
        .unwrap();
    let source_checkpoint = tick(&mut c);
    // The connection string, not -h/-p: the server may be another major's
    // cluster on its own port (`make test PG=18`).
    let dump = std::process::Command::new("pg_dump")
        .args(["--no-owner", "-d", &db.url])
        .output()
        .expect("run pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let target = TestDb::empty("dump_dst");
    let restore = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &target.url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&dump.stdout)?;
            child.wait_with_output()
        })
        .expect("run psql");
    assert!(
        restore.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let mut r = target.connect();
    let v: i64 = r
        .query_one("SELECT outpost.redeploy()", &[])
        .unwrap()
        .get(0);
    assert!(v >= 2, "the dumped rules were kept (version {v})");
    assert_eq!(
        rows(&mut r, "user_lists[1]").len(),
        2,
        "buckets rebuilt from the source tables"
    );
    let first: i64 = r
        .query_one("SELECT min(op_id) FROM outpost.ops", &[])
        .unwrap()
        .get(0);
    assert!(
        first > source_checkpoint,
        "op ids continue above what clients hold ({first} <= {source_checkpoint})"
    );
    r.batch_execute("INSERT INTO todos VALUES (77, 1, 'after restore', false)")
        .unwrap();
    tick(&mut r);
    assert_eq!(
        rows(&mut r, "user_lists[1]").len(),
        3,
        "capture works with the restored tables' new oids"
    );
    // Write-checkpoint counters continue instead of restarting at 1.
    let next: i64 = r
        .query_one("SELECT outpost.request_write_checkpoint('u1', 'dev')", &[])
        .unwrap()
        .get(0);
    assert_eq!(next, 2);
}

#[test]
fn unprivileged_roles_write_but_cannot_read_across_users() {
    let (db, mut c) = setup("privileges");
    // Roles are cluster-wide: one fixed name, created idempotently.
    let role = "outpost_test_app";
    c.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT SELECT, INSERT, UPDATE, DELETE ON todos, lists TO {role};"
    ))
    .unwrap();
    let mut app =
        postgres::Client::connect(&format!("{} user={role}", db.url), postgres::NoTls).unwrap();
    // Writes by an ordinary role are captured.
    app.batch_execute("INSERT INTO todos VALUES (90, 1, 'by app role', false)")
        .unwrap();
    tick(&mut c);
    assert!(rows(&mut c, "user_lists[1]").iter().any(|r| r.1 == "90"));
    // But it cannot read other users' buckets or change rules.
    for sql in [
        "SELECT outpost.sync_checkpoint('{\"sub\":\"u2\"}', '{}', 'c')",
        "SELECT * FROM outpost.bucket_ops(ARRAY['user_lists[2]'], ARRAY[0::bigint], 100, 10)",
        "SELECT outpost.deploy_rules('bucket_definitions: {x: {data: \"SELECT id FROM lists\"}}')",
        "SELECT outpost._apply('[]', '{}')",
        "SELECT outpost._tick_locked()",
        "SELECT * FROM outpost.ops",
    ] {
        let err = app.query(sql, &[]).unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{sql}: {err}");
    }
    // A relay role gets exactly what it needs.
    c.batch_execute(&format!("SELECT outpost.grant_relay('{role}')"))
        .unwrap();
    app.query_one(
        "SELECT outpost.sync_checkpoint('{\"sub\":\"u1\"}', '{}', 'c')",
        &[],
    )
    .unwrap();
    app.query_one("SELECT outpost.tick()", &[]).unwrap();
}
