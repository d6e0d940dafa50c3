//! Helpers for tests that drive `outpost_client::Database`s against a relay:
//! a runtime, a client file opened and synced in the background, and waits on
//! sync status and live queries — bounded by [`WAIT`], never fixed sleeps.

use outpost_client::net::connector::open_with_relay_schema;
use outpost_client::{
    Credentials, Database, Http, StaticConnector, SyncClient, SyncOptions, SyncStatus,
};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest any wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Rows as `Database::query` and live queries return them.
pub type Rows = Vec<Map<String, Value>>;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The background task of [`spawn_sync`], as `SyncClient::run` ends.
pub type SyncTask = tokio::task::JoinHandle<outpost_client::Result<Option<String>>>;

/// Removes a client file with its `-wal` and `-shm` files (an earlier run's,
/// or the test's own at its end).
pub fn remove_db_file(path: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// Opens the client file `path` with the tables the relay's `/schema` gives.
pub fn open_from_relay(rt: &tokio::runtime::Runtime, path: &Path, creds: &Credentials) -> Database {
    rt.block_on(open_with_relay_schema(path, &Http::new(), creds))
        .expect("open the client file with the relay's /schema")
}

/// Syncs `db` in the background. Reconnects start after 20 ms and back off
/// to `max_backoff`: these tests stop relays and Postgres on purpose, and the
/// client has to come back within the test's waits.
pub fn spawn_sync(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    creds: Credentials,
    max_backoff: Duration,
) -> SyncTask {
    let options = SyncOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff,
        ..SyncOptions::default()
    };
    let d = db.clone();
    rt.spawn(async move {
        SyncClient::new(d, Arc::new(StaticConnector(creds)))
            .run(options)
            .await
    })
}

/// Every checkpoint `db` applies from now on, in order (each once), for tests
/// that check the client never goes back.
pub fn record_checkpoints(rt: &tokio::runtime::Runtime, db: &Database) -> Arc<Mutex<Vec<i64>>> {
    let applied = Arc::new(Mutex::new(Vec::new()));
    let (mut rx, a) = (db.status(), applied.clone());
    rt.spawn(async move {
        while rx.changed().await.is_ok() {
            let cp = rx.borrow_and_update().last_checkpoint.clone();
            if let Some(cp) = cp.and_then(|s| s.parse::<i64>().ok()) {
                let mut a = a.lock().unwrap();
                if a.last() != Some(&cp) {
                    a.push(cp);
                }
            }
        }
    });
    applied
}

/// Waits until the database's sync status satisfies `pred`. `finished` tells,
/// for the failure message, whether the sync task has ended.
pub fn wait_status(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    what: &str,
    finished: impl Fn() -> bool,
    mut pred: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    let mut rx = db.status();
    let got = rt.block_on(async {
        tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s)))
            .await
            .map(|r| r.map(|s| s.clone()))
    });
    match got {
        Ok(Ok(s)) => s,
        _ => panic!(
            "timed out waiting for {what}; status {:?}, sync task finished: {}",
            *db.status().borrow(),
            finished()
        ),
    }
}

/// Waits up to `timeout` until `db` has applied checkpoint `cp` or a later
/// one; `false` if it has not by then.
pub fn reached_checkpoint(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    cp: i64,
    timeout: std::time::Duration,
) -> bool {
    let mut rx = db.status();
    rt.block_on(async {
        tokio::time::timeout(
            timeout,
            rx.wait_for(|s| {
                s.last_checkpoint
                    .as_deref()
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x >= cp)
            }),
        )
        .await
        .is_ok()
    })
}

/// Runs `sql` as a live query until `pred` holds for its rows; returns them.
pub fn wait_rows(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    sql: &str,
    what: &str,
    mut pred: impl FnMut(&Rows) -> bool,
) -> Rows {
    let mut w = db.watch(sql, &[]).unwrap();
    let mut last = Rows::new();
    let r = rt.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                let rows = w.next().await.unwrap();
                if pred(&rows) {
                    return rows;
                }
                last = rows;
            }
        })
        .await
    });
    r.unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}: last rows {last:?}; status {:?}",
            *db.status().borrow()
        )
    })
}

/// The todo app the client end-to-end tests sync: lists and todos, a write
/// role with RLS policies keyed on the JWT `sub`, rules with a per-user bucket
/// and a shared one.
pub mod todo_app {
    use crate::TestDb;

    pub const WRITE_ROLE: &str = "outpost_test_writer";
    pub const SHARED: &str = "00000000-0000-4000-8000-000000000001";
    pub const ALICE_LIST: &str = "00000000-0000-4000-8000-0000000000a1";
    pub const BOB_LIST: &str = "00000000-0000-4000-8000-0000000000b1";

    /// Tables, grants and RLS policies for [`WRITE_ROLE`].
    pub const TABLES: &str = "
CREATE TABLE lists (id uuid PRIMARY KEY, owner_id text, name text NOT NULL);
CREATE TABLE todos (
  id uuid PRIMARY KEY,
  list_id uuid NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
  owner_id text NOT NULL,
  description text NOT NULL,
  completed boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION test_user_id() RETURNS text LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
$$;
GRANT USAGE ON SCHEMA public TO outpost_test_writer;
GRANT EXECUTE ON FUNCTION test_user_id() TO outpost_test_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON lists, todos TO outpost_test_writer;
SELECT outpost.grant_crud('outpost_test_writer');
ALTER TABLE lists ENABLE ROW LEVEL SECURITY;
ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
CREATE POLICY lists_read ON lists FOR SELECT TO outpost_test_writer
  USING (owner_id = test_user_id() OR owner_id IS NULL);
CREATE POLICY todos_read ON todos FOR SELECT TO outpost_test_writer
  USING (list_id IN (SELECT id FROM lists));
CREATE POLICY todos_insert ON todos FOR INSERT TO outpost_test_writer
  WITH CHECK (owner_id = test_user_id() AND list_id IN (SELECT id FROM lists));
CREATE POLICY todos_update ON todos FOR UPDATE TO outpost_test_writer
  USING (owner_id = test_user_id())
  WITH CHECK (owner_id = test_user_id() AND list_id IN (SELECT id FROM lists));
CREATE POLICY todos_delete ON todos FOR DELETE TO outpost_test_writer
  USING (owner_id = test_user_id());
";

    pub const RULES: &str = "
bucket_definitions:
  user_lists:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT id, owner_id, name FROM lists WHERE id = bucket.list_id
      - SELECT * FROM todos WHERE list_id = bucket.list_id
  shared:
    data:
      - SELECT id, owner_id, name FROM lists WHERE owner_id IS NULL
      - SELECT * FROM todos WHERE list_id = '00000000-0000-4000-8000-000000000001'
";

    /// The three lists and `alice`, `bob`, `shared` generated todos in them.
    pub fn seed(alice: u32, bob: u32, shared: u32) -> String {
        format!(
            "INSERT INTO lists VALUES
  ('{SHARED}', NULL, 'shared'),
  ('{ALICE_LIST}', 'alice', 'alice list'),
  ('{BOB_LIST}', 'bob', 'bob list');
INSERT INTO todos(id, list_id, owner_id, description, completed)
SELECT gen_random_uuid(), l, o, o || ' todo ' || g, g % 3 = 0
  FROM (VALUES ('{ALICE_LIST}'::uuid, 'alice', {alice}),
               ('{BOB_LIST}'::uuid, 'bob', {bob}),
               ('{SHARED}'::uuid, 'bob', {shared})) v(l, o, n),
       generate_series(1, n) g;"
        )
    }

    /// A database with [`TABLES`], `extra` SQL, the seed rows and [`RULES`] deployed.
    pub fn setup(label: &str, extra: &str, seed_sql: &str) -> (TestDb, postgres::Client) {
        // Roles are cluster-wide; parallel tests may race to create it.
        let mut admin = postgres::Client::connect(&crate::server_url(), postgres::NoTls)
            .expect("connect to Postgres");
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{WRITE_ROLE}') THEN
                 CREATE ROLE {WRITE_ROLE} NOLOGIN;
               END IF;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$"
            ))
            .unwrap();
        let db = TestDb::new(label);
        let mut c = db.connect();
        c.batch_execute(TABLES).unwrap();
        c.batch_execute(extra).unwrap();
        c.batch_execute(seed_sql).unwrap();
        c.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
            .unwrap();
        (db, c)
    }
}
