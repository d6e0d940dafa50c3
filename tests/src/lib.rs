//! Test harness for Outpost integration tests: real Postgres, a fresh database
//! per test with `CREATE EXTENSION outpost`, and helpers to read the op log.
//!
//! Layout:
//! - [`TestDb`]: creates and drops a scratch database (`OUTPOST_TEST_DATABASE_URL`
//!   points at the server; `make test` sets one up on 127.0.0.1:5432).
//! - [`fold_bucket`], [`Op`]: read a bucket's ops and replay them the way a client does.
//! - [`relay`]: an in-process relay against a [`TestDb`] and a small HTTP client for it.
//! - [`client`]: waits on client sync status and live queries.
//! - [`dialect`]: deploy rules, a request's buckets, a bucket's rows (dialect tests).
//! - [`replication`]: a primary and `pg_basebackup -R` standbys of its own, for
//!   the hot-standby tests and bench.
//! - `tests/`: the test files, one per area (extension, concurrency, relay, client).
//!
//! The extension must be installed (`scripts/setup.sh` does it).

pub mod client;
pub mod dialect;
pub mod relay;
pub mod replication;
pub mod streams_fixture;

use postgres::{Client, NoTls};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

/// libpq-style connection string of the server tests use.
pub fn server_url() -> String {
    std::env::var("OUTPOST_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".to_string())
}

/// A scratch database with the extension created; dropped at the end of the test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A scratch database with `schema` run and `rules` deployed.
    pub fn with_rules(label: &str, schema: &str, rules: &str) -> TestDb {
        let db = TestDb::new(label);
        let mut c = db.connect();
        c.batch_execute(schema).expect("schema");
        c.query_one("SELECT outpost.deploy_rules($1)", &[&rules])
            .expect("deploy_rules");
        db
    }

    pub fn new(label: &str) -> TestDb {
        let db = TestDb::empty(label);
        db.connect()
            .batch_execute("CREATE EXTENSION outpost")
            .expect("CREATE EXTENSION outpost (is the extension installed? run scripts/setup.sh)");
        db
    }

    /// A scratch database without the extension (e.g. to restore a dump into).
    pub fn empty(label: &str) -> TestDb {
        let name = format!(
            "outpost_t_{}_{}_{}",
            label,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = Client::connect(&server_url(), NoTls).unwrap_or_else(|e| {
            panic!(
                "cannot connect to Postgres at {:?}: {e} (run scripts/setup.sh)",
                server_url()
            )
        });
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .expect("drop stale test database");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create test database");
        let url = format!(
            "{} dbname={name}",
            server_url().replace("dbname=postgres", "")
        );
        TestDb { name, url }
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.url, NoTls).expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("OUTPOST_KEEP_TEST_DB").is_some() {
            return;
        }
        if let Ok(mut admin) = Client::connect(&server_url(), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// One op as stored in `outpost.ops`.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub bucket: String,
    pub op_id: i64,
    pub op: String,
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    pub subkey: Option<String>,
    pub data: Option<String>,
    pub checksum: i64,
}

pub fn ops(c: &mut Client, bucket: &str) -> Vec<Op> {
    c.query(
        "SELECT bucket, op_id, op, object_type, object_id, subkey, data, checksum FROM outpost.ops WHERE bucket = $1 ORDER BY op_id",
        &[&bucket],
    )
    .unwrap()
    .into_iter()
    .map(|r| Op {
        bucket: r.get(0),
        op_id: r.get(1),
        op: r.get(2),
        object_type: r.get(3),
        object_id: r.get(4),
        subkey: r.get(5),
        data: r.get(6),
        checksum: r.get(7),
    })
    .collect()
}

/// Replays a bucket's ops in op_id order: `(object_type, object_id) → data`.
/// Panics if an op's checksum is not what the protocol crate computes.
pub fn fold_bucket(ops: &[Op]) -> BTreeMap<(String, String), serde_json::Value> {
    let mut rows: BTreeMap<(String, String, String), serde_json::Value> = BTreeMap::new();
    let mut last = 0;
    for op in ops {
        assert!(op.op_id > last, "op ids must increase: {op:?}");
        last = op.op_id;
        let t = op.object_type.clone().unwrap_or_default();
        let id = op.object_id.clone().unwrap_or_default();
        let sk = op.subkey.clone().unwrap_or_default();
        let expect = outpost_protocol::op_checksum(&op.op, &t, &id, &sk, op.data.as_deref());
        assert_eq!(op.checksum, expect.0 as i64, "checksum of {op:?}");
        match op.op.as_str() {
            "PUT" => {
                let v: serde_json::Value =
                    serde_json::from_str(op.data.as_deref().expect("PUT has data")).unwrap();
                rows.insert((t, id, sk), v);
            }
            "REMOVE" => {
                rows.remove(&(t, id, sk));
            }
            other => panic!("unexpected op {other}"),
        }
    }
    rows.into_iter()
        .map(|((t, id, _), v)| ((t, id), v))
        .collect()
}

/// The wrapping u32 sum of the bucket's op checksums.
pub fn sum_checksums(ops: &[Op]) -> u32 {
    ops.iter()
        .fold(0u32, |a, o| a.wrapping_add(o.checksum as u32))
}

/// `outpost.sync_checkpoint` for a user, parsed.
pub fn sync_checkpoint(c: &mut Client, sub: &str, client_id: &str) -> serde_json::Value {
    let claims = serde_json::json!({ "sub": sub });
    let params = serde_json::json!({});
    c.query_one(
        "SELECT outpost.sync_checkpoint($1, $2, $3)",
        &[&claims, &params, &client_id],
    )
    .unwrap()
    .get(0)
}

/// Bucket names of a sync_checkpoint result.
pub fn bucket_names(cp: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = cp["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucket"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// One bucket per list a user owns, holding the list's todos: the rules of
/// the tick tests and of the bench's capture, tick and first-sync sections.
pub const LIST_TODOS_RULES: &str = "
bucket_definitions:
  user_lists:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data: SELECT * FROM todos WHERE list_id = bucket.list_id
";

pub fn tick(c: &mut Client) -> i64 {
    c.query_one("SELECT outpost.tick()", &[]).unwrap().get(0)
}
