//! The extension on real Postgres: deploy → snapshot → writes → tick → ops and
//! checksums; redeploy; rows moving between buckets; parameter rows; TRUNCATE;
//! validation errors; the queued keys capture builds.

mod extension_support;

use extension_support::*;
use outpost_tests::{bucket_names, ops, sum_checksums, sync_checkpoint, tick};
use serde_json::json;

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

/// Capture builds integer, text and uuid keys as jsonb itself (no
/// `jsonb_build_array` on the writer's path): every queued key must equal the
/// one the compiled rules compute, `jsonb_build_array` of the key columns,
/// for edge values of each type and a composite key.
#[test]
fn captured_keys_equal_jsonb_build_array() {
    let db = outpost_tests::TestDb::new("capture_keys");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE k8 (id bigint PRIMARY KEY);
         CREATE TABLE k4 (id int PRIMARY KEY);
         CREATE TABLE ku (id uuid PRIMARY KEY);
         CREATE TABLE kc (a text, b smallint, c varchar, PRIMARY KEY (a, b, c));",
    )
    .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"
bucket_definitions:
  all:
    data:
      - SELECT id FROM k8
      - SELECT id FROM k4
      - SELECT id FROM ku
      - SELECT a AS id, b, c FROM kc
"],
    )
    .unwrap();
    tick(&mut c);
    c.batch_execute(
        "INSERT INTO k8 VALUES (0), (-1), (1), (100000), (9223372036854775807), (-9223372036854775808);
         INSERT INTO k4 VALUES (0), (-2147483648), (2147483647), (10);
         INSERT INTO ku VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), ('00000000-0000-0000-0000-000000000000');
         INSERT INTO kc VALUES ('', 0, ''), ('hé \"q\" \\ ☃', -32768, 'x'), (repeat('long', 5000), 32767, 'y');",
    )
    .unwrap();
    // Keys come in batches (kind 'b', a jsonb array of keys) except where a
    // batch would hold one key: a statement's last, or one too long to share.
    let queued = "(SELECT q.relid, q.pk FROM outpost.changes q WHERE q.kind = 'k'
                   UNION ALL SELECT q.relid, e.pk FROM outpost.changes q, jsonb_array_elements(q.pk) e(pk)
                    WHERE q.kind = 'b')";
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {queued} c"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 15, "one queued key per inserted row");
    let kinds: Vec<(String, i64)> = c
        .query(
            "SELECT relid::regclass::text || ' ' || kind::text, count(*) FROM outpost.changes GROUP BY 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        kinds,
        [
            ("k4 b".to_string(), 1),
            ("k8 b".to_string(), 1),
            ("kc b".to_string(), 1),
            ("kc k".to_string(), 1),
            ("ku b".to_string(), 1),
        ],
        "the long key has a row of its own"
    );
    let pending: i64 = c
        .query_one("SELECT pending_changes FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, 15, "pending_changes counts keys, not queue rows");
    let wrong: Vec<String> = c
        .query(
            &format!(
                "SELECT c.relid::regclass::text || ' ' || left(c.pk::text, 40) FROM {queued} c
              WHERE NOT EXISTS (
                SELECT 1 FROM (
                  SELECT 'k8'::regclass AS relid, jsonb_build_array(id) AS pk FROM k8
                  UNION ALL SELECT 'k4'::regclass, jsonb_build_array(id) FROM k4
                  UNION ALL SELECT 'ku'::regclass, jsonb_build_array(id) FROM ku
                  UNION ALL SELECT 'kc'::regclass, jsonb_build_array(a, b, c) FROM kc) w
                 WHERE w.relid = c.relid AND w.pk = c.pk AND w.pk::text = c.pk::text)"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(wrong.is_empty(), "keys unlike jsonb_build_array: {wrong:?}");

    // An update queues a row's key once when it stays, old and new when it
    // changes (text keys compared by value, whatever their header).
    tick(&mut c);
    c.batch_execute(
        "UPDATE k8 SET id = id; UPDATE k4 SET id = 11 WHERE id = 10; UPDATE kc SET b = b;",
    )
    .unwrap();
    let keys: Vec<String> = c
        .query(
            &format!("SELECT c.relid::regclass::text || ' ' || left(c.pk::text, 12) FROM {queued} c ORDER BY 1"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys.len(), 6 + 2 + 3, "{keys:?}");
    assert!(keys.contains(&"k4 [10]".to_string()) && keys.contains(&"k4 [11]".to_string()));
}
