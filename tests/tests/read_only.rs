//! The sync path's read functions run in a READ ONLY transaction, as they
//! must on a hot standby (`--replica-url`): no writes and no sequences on
//! the read path. (Temp tables are allowed in a read-only transaction but
//! not on a standby; `faults_replica.rs`, run by `make test-faults`, calls
//! the same functions on a real standby.)

use outpost_tests::TestDb;
use serde_json::json;

#[test]
fn sync_reads_run_in_a_read_only_transaction() {
    let db = TestDb::with_rules(
        "read_only",
        "CREATE TABLE items (id int PRIMARY KEY, owner text NOT NULL);
         CREATE TABLE members (id int PRIMARY KEY, list text NOT NULL, who text NOT NULL);
         INSERT INTO items SELECT g, 'u' || (g % 2) FROM generate_series(1, 20) g;
         INSERT INTO members VALUES (1, 'u1', 'u1');",
        "
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, owner FROM items WHERE owner = bucket.owner
  shared:
    parameters: SELECT list FROM members WHERE who = request.user_id()
    data:
      - SELECT id, owner FROM items WHERE owner = bucket.list
  by_param:
    parameters: SELECT (request.parameters() ->> 'n')::int AS n
    data:
      - SELECT id, owner FROM items WHERE id = bucket.n
",
    );
    let mut c = db.connect();
    c.query_one("SELECT outpost.tick()", &[]).unwrap();
    let mut tx = c.build_transaction().read_only(true).start().unwrap();
    let claims = json!({"sub": "u1"});
    for params in [json!({"n": 3}), json!({"n": "not a number"})] {
        let state: serde_json::Value = tx
            .query_one(
                "SELECT outpost.sync_checkpoint($1, $2, 'c1')",
                &[&claims, &params],
            )
            .unwrap()
            .get(0);
        assert!(state["checkpoint"].as_i64().unwrap() > 0, "{state}");
    }
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM outpost.bucket_ops(ARRAY['mine[\"u1\"]', 'shared[\"u1\"]'], \
             ARRAY[0, 0]::bigint[], outpost.checkpoint(), 1000)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
    tx.query_one("SELECT count(*) FROM outpost.changes_since(0)", &[])
        .unwrap();
    tx.query_one("SELECT outpost.client_schema()", &[]).unwrap();
    tx.query_one("SELECT outpost.checkpoint(), pg_is_in_recovery()", &[])
        .unwrap();
    tx.commit().unwrap();
}
