//! The extension next to roles the operator does not trust: the capture queue
//! cannot be poisoned, a key nobody can read is quarantined while ticks go on,
//! a table owner's search_path cannot run code as the extension owner, and
//! every object in schema `outpost` is closed unless the allow-list below
//! opens it (docs/security.md).

use outpost_tests::{fold_bucket, ops, tick, TestDb};
use postgres::{Client, NoTls};
use std::collections::BTreeSet;

/// Roles are cluster-wide: fixed names, created idempotently; their grants
/// live in each scratch database.
const STRANGER: &str = "outpost_test_stranger";
const TABLE_OWNER: &str = "outpost_test_table_owner";
const RELAY: &str = "outpost_test_relay_role";
const WRITER: &str = "outpost_test_crud_writer";

fn ensure_role(c: &mut Client, role: &str) {
    c.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {role} LOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
    ))
    .unwrap();
}

fn connect_as(db: &TestDb, role: &str) -> Client {
    Client::connect(&format!("{} user={role}", db.url), NoTls).unwrap()
}

fn sqlstate(e: &postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

const RULES: &str = "
bucket_definitions:
  everything:
    data: SELECT * FROM todos
";

fn setup(label: &str) -> (TestDb, Client) {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE todos (id uuid PRIMARY KEY, title text);
         INSERT INTO todos VALUES ('00000000-0000-0000-0000-000000000001', 'first');",
    )
    .unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap();
    (db, c)
}

fn titles(c: &mut Client) -> BTreeSet<String> {
    fold_bucket(&ops(c, "everything[]"))
        .into_values()
        .map(|v| v["title"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_fresh_role_cannot_touch_the_capture_queue() {
    let (db, mut c) = setup("sec_poison");
    ensure_role(&mut c, STRANGER);
    let mut stranger = connect_as(&db, STRANGER);
    for sql in [
        "INSERT INTO outpost.changes (relid, pk, kind) VALUES ('todos'::regclass, '[\"not-a-uuid\"]', 'k')",
        "INSERT INTO outpost.changes (relid, pk, kind, def) VALUES ('todos'::regclass, NULL, 'f', 'everything')",
        "SELECT setval('outpost.notify_clock', 1)",
        "DELETE FROM outpost.changes",
        "SELECT outpost._record_problem('schema', 'fake')",
        "SELECT outpost._clear_problem('schema')",
        "SELECT * FROM outpost._crud_target('{\"op\":\"PUT\",\"type\":\"todos\",\"id\":\"x\"}')",
    ] {
        let err = stranger.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&err), Some("42501"), "{sql}: {err}");
    }
    // Nothing was queued, ticks go on, and honest writes still sync.
    let pending: i64 = c
        .query_one("SELECT count(*) FROM outpost.changes", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);
    c.batch_execute("INSERT INTO todos VALUES ('00000000-0000-0000-0000-000000000002', 'honest')")
        .unwrap();
    tick(&mut c);
    assert!(titles(&mut c).contains("honest"));
}

#[test]
fn writers_need_nothing_in_outpost_and_their_writes_sync() {
    let (db, mut c) = setup("sec_writer");
    ensure_role(&mut c, STRANGER);
    c.batch_execute(&format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON todos TO {STRANGER}"
    ))
    .unwrap();
    let mut w = connect_as(&db, STRANGER);
    w.batch_execute(
        "INSERT INTO todos VALUES ('00000000-0000-0000-0000-000000000003', 'by a writer');
         UPDATE todos SET title = 'renamed' WHERE id = '00000000-0000-0000-0000-000000000001';",
    )
    .unwrap();
    tick(&mut c);
    assert_eq!(
        titles(&mut c),
        BTreeSet::from(["by a writer".to_string(), "renamed".to_string()])
    );
    // The writer still cannot attach the capture function to a table of its own.
    w.batch_execute("CREATE TEMP TABLE mine (id uuid PRIMARY KEY)")
        .unwrap();
    let f: String = c
        .query_one(
            "SELECT DISTINCT t.tgfoid::regprocedure::text FROM pg_trigger t
              WHERE t.tgrelid = 'todos'::regclass AND t.tgname = 'outpost_capture_ins'",
            &[],
        )
        .unwrap()
        .get(0);
    let err = w
        .batch_execute(&format!(
            "CREATE TRIGGER t AFTER INSERT ON mine FOR EACH STATEMENT EXECUTE FUNCTION {f}"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
}

#[test]
fn a_key_nobody_can_read_is_quarantined_and_ticks_go_on() {
    let (_db, mut c) = setup("sec_quarantine");
    // Only the extension owner can still queue a bad key (defence in depth).
    c.batch_execute(
        "INSERT INTO outpost.changes (relid, pk, kind) VALUES ('todos'::regclass, '[\"not-a-uuid\"]', 'k');
         INSERT INTO todos VALUES ('00000000-0000-0000-0000-000000000004', 'honest');",
    )
    .unwrap();
    tick(&mut c);
    assert!(titles(&mut c).contains("honest"));
    let r = c
        .query_one(
            "SELECT kind, table_name, key::text, message FROM outpost.problems",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "quarantine");
    assert_eq!(r.get::<_, String>(1), "public.todos");
    assert_eq!(r.get::<_, String>(2), "[\"not-a-uuid\"]");
    assert!(
        r.get::<_, String>(3).contains("uuid"),
        "{}",
        r.get::<_, String>(3)
    );
    let problems: Vec<String> = c
        .query_one("SELECT problems FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(problems.len(), 1, "{problems:?}");
    // The key left the queue: later ticks do not meet it again.
    c.batch_execute("INSERT INTO todos VALUES ('00000000-0000-0000-0000-000000000005', 'later')")
        .unwrap();
    tick(&mut c);
    assert!(titles(&mut c).contains("later"));
    let n: i64 = c
        .query_one("SELECT count(*) FROM outpost.problems", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// The capture trigger queues most keys in batches (kind 'b'): a bad key in
/// a batch is set aside alone, and the batch's other keys still sync.
#[test]
fn a_bad_key_in_a_batch_is_quarantined_alone() {
    let (_db, mut c) = setup("sec_quarantine_batch");
    c.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO todos VALUES ('00000000-0000-0000-0000-000000000006', 'batched');
         RESET session_replication_role;
         INSERT INTO outpost.changes (relid, pk, kind) VALUES ('todos'::regclass,
           '[[\"00000000-0000-0000-0000-000000000006\"], [\"not-a-uuid\"]]', 'b'),
           ('todos'::regclass, '\"not an array\"', 'b');
         INSERT INTO todos VALUES ('00000000-0000-0000-0000-000000000007', 'honest'),
                                  ('00000000-0000-0000-0000-000000000008', 'honest too');",
    )
    .unwrap();
    let rows: i64 = c
        .query_one("SELECT count(*) FROM outpost.changes WHERE kind = 'b'", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 3, "the two honest keys came as one batch");
    tick(&mut c);
    let t = titles(&mut c);
    for want in ["batched", "honest", "honest too"] {
        assert!(t.contains(want), "{want} missing from {t:?}");
    }
    let problems: Vec<(String, String)> = c
        .query("SELECT kind, key::text FROM outpost.problems", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        problems,
        [("quarantine".to_string(), "[\"not-a-uuid\"]".to_string())]
    );
    let left: i64 = c
        .query_one("SELECT count(*) FROM outpost.changes", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn a_table_owners_search_path_runs_nothing_as_the_extension_owner() {
    let (db, mut c) = setup("sec_hijack");
    ensure_role(&mut c, TABLE_OWNER);
    c.batch_execute(&format!(
        "ALTER TABLE todos OWNER TO {TABLE_OWNER};
         CREATE SCHEMA evil AUTHORIZATION {TABLE_OWNER};"
    ))
    .unwrap();
    let mut owner = connect_as(&db, TABLE_OWNER);
    // Shadows of what the event trigger's code used unqualified: format_type
    // and `=` on text. Each records who ran it.
    owner
        .batch_execute(
            "CREATE TABLE evil.calls (who name, what text);
             GRANT INSERT ON evil.calls TO PUBLIC;
             CREATE FUNCTION evil.format_type(oid, integer) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO evil.calls VALUES (current_user, 'format_type');
                 RETURN pg_catalog.format_type($1, $2);
             END $$;
             CREATE FUNCTION evil.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO evil.calls VALUES (current_user, '=');
                 RETURN $1 OPERATOR(pg_catalog.=) $2;
             END $$;
             CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
             SET search_path = evil, pg_catalog, public;
             ALTER TABLE public.todos ADD COLUMN note text;",
        )
        .unwrap();
    let foreign: Vec<(String, String)> = c
        .query(
            &format!("SELECT who::text, what FROM evil.calls WHERE who <> '{TABLE_OWNER}'"),
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        foreign.is_empty(),
        "the table owner's functions ran as another role: {foreign:?}"
    );
    // The DDL was followed (the rules recompiled, no problem recorded) and sync goes on.
    let problems: Vec<String> = c
        .query_one("SELECT problems FROM outpost.stats", &[])
        .unwrap()
        .get(0);
    assert!(problems.is_empty(), "{problems:?}");
    c.batch_execute(
        "UPDATE todos SET note = 'noted' WHERE id = '00000000-0000-0000-0000-000000000001'",
    )
    .unwrap();
    tick(&mut c);
    let rows = fold_bucket(&ops(&mut c, "everything[]"));
    assert!(
        rows.values().any(|v| v["note"] == "noted"),
        "the added column reaches SELECT * buckets: {rows:?}"
    );
}

/// Every function, procedure, table, view and sequence in schema `outpost`
/// with what `role` may do on it, from the catalog.
fn inventory(c: &mut Client, role: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let schema: bool = c
        .query_one(
            "SELECT has_schema_privilege($1, 'outpost', 'USAGE')",
            &[&role],
        )
        .unwrap()
        .get(0);
    if schema {
        out.insert("schema outpost: USAGE".to_string());
    }
    for r in c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'outpost'::regnamespace
                AND has_function_privilege($1, p.oid, 'EXECUTE')
              ORDER BY 1",
            &[&role],
        )
        .unwrap()
    {
        let f: String = r.get(0);
        // Capture functions are one per synced table, named by its oid.
        let f = if f.starts_with("outpost.capture_") {
            "outpost.capture_<table oid>()".to_string()
        } else {
            f
        };
        out.insert(format!("{f}: EXECUTE"));
    }
    for r in c
        .query(
            "SELECT c.oid::regclass::text, priv FROM pg_class c,
                    unnest(CASE WHEN c.relkind = 'S' THEN ARRAY['USAGE', 'SELECT', 'UPDATE']
                                ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                           'REFERENCES', 'TRIGGER'] END) priv
              WHERE c.relnamespace = 'outpost'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege($1, c.oid, priv)
                         ELSE has_table_privilege($1, c.oid, priv) END
              ORDER BY 1, 2",
            &[&role],
        )
        .unwrap()
    {
        out.insert(format!(
            "{}: {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1)
        ));
    }
    out
}

/// The allow-list: what the relay's role may do after `grant_relay`.
const RELAY_MAY: &[&str] = &[
    "schema outpost: USAGE",
    "outpost.tick(): EXECUTE",
    "outpost.compact(): EXECUTE",
    "outpost.compact_online(bigint): EXECUTE",
    "outpost.checkpoint(): EXECUTE",
    "outpost.client_schema(): EXECUTE",
    "outpost.sync_checkpoint(jsonb,jsonb,text): EXECUTE",
    // Sync Streams: the same snapshot with the request's subscriptions.
    "outpost.sync_checkpoint(jsonb,jsonb,text,jsonb): EXECUTE",
    "outpost.bucket_ops(text[],bigint[],bigint,integer): EXECUTE",
    "outpost.changes_since(bigint): EXECUTE",
    "outpost.request_write_checkpoint(text,text): EXECUTE",
    "outpost.request_checkpoint(text,text,bigint): EXECUTE",
    "outpost._compact_begin(): EXECUTE",
    "outpost._compact_step(bigint,integer): EXECUTE",
    "outpost._defrag_candidates(): EXECUTE",
    "outpost._defragment_step(text[],bigint,integer,tid): EXECUTE",
    "outpost._compact_finish(bigint): EXECUTE",
    "outpost._setting(text,text): EXECUTE",
];

/// The allow-list: what the `/crud` write role may do after `grant_crud`.
const WRITER_MAY: &[&str] = &[
    "schema outpost: USAGE",
    "outpost.apply_crud(jsonb): EXECUTE",
    "outpost._crud_target(jsonb): EXECUTE",
    "outpost._crud_default(jsonb,regclass): EXECUTE",
];

/// The allow-list for PUBLIC and any fresh role: nothing at all.
const ANYONE_MAY: &[&str] = &[];

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_object_is_closed_unless_the_allow_list_opens_it() {
    let (_db, mut c) = setup("sec_inventory");
    ensure_role(&mut c, STRANGER);
    ensure_role(&mut c, RELAY);
    ensure_role(&mut c, WRITER);
    // Something of every kind exists: a capture function, compaction history.
    c.batch_execute("UPDATE todos SET title = 'again'").unwrap();
    tick(&mut c);
    c.query_one("SELECT outpost.compact()", &[]).unwrap();
    let objects: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_proc WHERE pronamespace = 'outpost'::regnamespace)
                  + (SELECT count(*) FROM pg_class WHERE relnamespace = 'outpost'::regnamespace)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(objects > 50, "the inventory sees the extension's objects");

    assert_eq!(inventory(&mut c, "public"), set(ANYONE_MAY), "PUBLIC");
    assert_eq!(inventory(&mut c, STRANGER), set(ANYONE_MAY), "a fresh role");

    c.batch_execute(&format!(
        "SELECT outpost.grant_relay('{RELAY}'); SELECT outpost.grant_crud('{WRITER}');"
    ))
    .unwrap();
    assert_eq!(inventory(&mut c, RELAY), set(RELAY_MAY), "the relay's role");
    assert_eq!(
        inventory(&mut c, WRITER),
        set(WRITER_MAY),
        "the /crud write role"
    );
    assert_eq!(inventory(&mut c, STRANGER), set(ANYONE_MAY), "still closed");
}
