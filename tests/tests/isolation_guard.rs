//! The checkpoint invariant is guarded where op ids are allocated: every entry
//! point that allocates op ids refuses REPEATABLE READ and SERIALIZABLE (their
//! snapshot predates the tick lock and misses the previous tick's commit), and
//! leaves nothing behind when it does. `CALL outpost.compact_online()` does
//! the work of `compact()` in steps that each commit.

use outpost_tests::{fold_bucket, ops, sum_checksums, tick, TestDb};
use postgres::{Client, IsolationLevel};

const RULES: &str = "
bucket_definitions:
  all_items:
    data: SELECT id, v FROM items
";

fn setup(label: &str) -> (TestDb, Client) {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 20) g;",
    )
    .unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap();
    (db, c)
}

/// Catalog and op log as one comparable text.
fn state(c: &mut Client) -> String {
    c.query_one(
        "SELECT concat_ws(' | ',
            (SELECT string_agg(version || ':' || active, ',' ORDER BY version) FROM outpost.rules),
            (SELECT string_agg(op_id::text, ',' ORDER BY op_id) FROM outpost.checkpoints),
            (SELECT count(*) FROM outpost.ops),
            (SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns
              WHERE table_name = 'items'))",
        &[],
    )
    .unwrap()
    .get(0)
}

fn refused_in(c: &mut Client, level: IsolationLevel, sql: &str) {
    let before = state(c);
    let mut tx = c
        .build_transaction()
        .isolation_level(level)
        .start()
        .unwrap();
    let err = tx.batch_execute(sql).unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("25000"),
        "{sql} in {level:?}: {err}"
    );
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("READ COMMITTED"), "{msg}");
    drop(tx);
    assert_eq!(state(c), before, "{sql} left something behind");
}

#[test]
fn every_op_id_allocating_entry_point_refuses_repeatable_read() {
    let (_db, mut c) = setup("guard_rr");
    // Defragmentation has something to do: the bucket is mostly history.
    for v in 1..=5 {
        c.execute("UPDATE items SET v = $1", &[&v]).unwrap();
        tick(&mut c);
    }
    c.batch_execute(
        "ALTER DATABASE CURRENT SET outpost.defrag_min_ops = 1;
         ALTER DATABASE CURRENT SET outpost.defrag_ratio = 0.9;",
    )
    .ok();
    let entry_points = [
        "SELECT outpost.tick()",
        "SELECT outpost.deploy_rules('bucket_definitions: {other: {data: \"SELECT id FROM items\"}}')",
        "SELECT outpost.define_bucket('other', '{}', ARRAY['SELECT id FROM items'])",
        "SELECT outpost.drop_bucket('all_items')",
        "SELECT outpost.redeploy()",
        "ALTER TABLE items ADD COLUMN w int",
        "SET LOCAL outpost.defrag_min_ops = 1; SET LOCAL outpost.defrag_ratio = 0.9; SELECT outpost.compact()",
    ];
    for level in [IsolationLevel::RepeatableRead, IsolationLevel::Serializable] {
        for sql in entry_points {
            refused_in(&mut c, level, sql);
        }
    }
    // The defragmentation step itself, whoever calls it.
    refused_in(
        &mut c,
        IsolationLevel::RepeatableRead,
        "SELECT outpost._defragment_step(ARRAY['all_items[]'], outpost.checkpoint(), 10, '(0,0)')",
    );
    // In READ COMMITTED every one of them works.
    for sql in entry_points {
        let mut tx = c.transaction().unwrap();
        tx.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        tx.rollback().unwrap();
    }
}

#[test]
fn compact_online_commits_in_steps_and_keeps_checksums() {
    let (_db, mut c) = setup("guard_online");
    for v in 1..=10 {
        c.execute("UPDATE items SET v = $1", &[&v]).unwrap();
        tick(&mut c);
    }
    let expected = fold_bucket(&ops(&mut c, "all_items[]"));
    let checksum = sum_checksums(&ops(&mut c, "all_items[]"));
    let cp_before: i64 = c
        .query_one("SELECT outpost.checkpoint()", &[])
        .unwrap()
        .get(0);
    // After the first pass the bucket holds a CLEAR and its 20 live rows:
    // defragment that, in steps of 7 rows.
    c.batch_execute(
        "SET outpost.defrag_min_ops = 1; SET outpost.defrag_ratio = 0.99; SET outpost.defrag_batch = 7",
    )
    .unwrap();
    let removed: i64 = c
        .query_one("CALL outpost.compact_online()", &[])
        .unwrap()
        .get(0);
    // 200 superseded → MOVEs folded into a CLEAR (199), then the 20 re-PUT
    // rows' old PUTs folded into it too (20).
    assert_eq!(removed, 219);
    let after = ops(&mut c, "all_items[]");
    // One CLEAR and the 20 live rows, re-PUT in steps of 7 (3 checkpoints).
    assert_eq!(after.len(), 21, "{after:?}");
    assert_eq!(after[0].op, "CLEAR");
    let puts: Vec<_> = after[1..].to_vec();
    assert_eq!(fold_bucket(&puts), expected);
    let defrag_checkpoints: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.checkpoints WHERE op_id > $1",
            &[&cp_before],
        )
        .unwrap()
        .get(0);
    assert_eq!(defrag_checkpoints, 3);
    // Checksums move only by the re-PUTs, which a client receives as ops.
    let state: (i64, i64) = {
        let r = c
            .query_one(
                "SELECT checksum, op_count FROM outpost.bucket_state WHERE bucket = 'all_items[]'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(state.0 as u32, sum_checksums(&after));
    assert_ne!(checksum, 0);
    // Inside a transaction block it refuses to start (it must commit).
    let mut tx = c.transaction().unwrap();
    let err = tx
        .query_one("CALL outpost.compact_online()", &[])
        .unwrap_err();
    assert!(err.code().is_some(), "{err}");
}
