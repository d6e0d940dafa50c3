//! Shared pieces of the extension tests (`extension*.rs`): a two-table schema,
//! rules with a parameter bucket and a global one, and readers of a bucket's
//! folded rows and stored state.
#![allow(dead_code)]

use outpost_tests::{fold_bucket, ops, TestDb};
use postgres::Client;

pub const SCHEMA: &str = "
CREATE TABLE lists (id int PRIMARY KEY, owner_id text NOT NULL, name text);
CREATE TABLE todos (id int PRIMARY KEY, list_id int, title text, done boolean NOT NULL DEFAULT false);
INSERT INTO lists VALUES (1, 'u1', 'one'), (2, 'u2', 'two');
INSERT INTO todos VALUES (10, 1, 'a', false), (11, 1, 'b', true), (20, 2, 'c', false);
";

pub const RULES: &str = "
bucket_definitions:
  user_lists:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM todos WHERE list_id = bucket.list_id
  global:
    data: SELECT id, name FROM lists
";

pub fn setup(label: &str) -> (TestDb, Client) {
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

pub fn rows(c: &mut Client, bucket: &str) -> Vec<(String, String, serde_json::Value)> {
    fold_bucket(&ops(c, bucket))
        .into_iter()
        .map(|((t, id), v)| (t, id, v))
        .collect()
}

pub fn state(c: &mut Client, bucket: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT checksum, op_count FROM outpost.bucket_state WHERE bucket = $1",
            &[&bucket],
        )
        .unwrap();
    (r.get(0), r.get(1))
}
