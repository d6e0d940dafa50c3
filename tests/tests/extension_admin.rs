//! The extension under an operator's hands on real Postgres: schema changes of
//! captured tables, a restored dump, and unprivileged roles.

mod extension_support;

use extension_support::*;
use outpost_tests::{ops, tick, TestDb};
use serde_json::json;

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
