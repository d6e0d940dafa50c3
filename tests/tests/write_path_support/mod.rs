//! Shared pieces of the write-path tests (`write_path_*.rs`): real Postgres
//! with RLS ([`TestDb`]), an in-process relay with `POST /crud` ([`Relay`]) and
//! `outpost_client::Database`s syncing into SQLite files, each reaching the
//! relay through its own [`Proxy`] that a test can cut.
//!
//! Every wait is on a client's sync status or a live query, bounded by the
//! harness' timeout; nothing sleeps for a fixed time.
#![allow(dead_code)]

use outpost_client::net::connector::open_with_relay_schema;
use outpost_client::{Connector, Credentials, Database, Http, SyncClient, SyncOptions, SyncStatus};
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_tests::client::todo_app;

/// Besides the shared todo app: anyone may update a todo of the shared list
/// (so two users can PATCH the same row).
pub const SHARED_UPDATE_POLICY: &str = "
CREATE POLICY todos_update_shared ON todos FOR UPDATE TO outpost_test_writer
  USING (list_id = '00000000-0000-4000-8000-000000000001')
  WITH CHECK (list_id = '00000000-0000-4000-8000-000000000001');
";

pub const INSERT: &str =
    "INSERT INTO todos(id, list_id, owner_id, description, completed, created_at) \
                      VALUES (?1, ?2, ?3, ?4, 0, '2024-05-01T10:00:00Z')";

/// The database with schema, RLS, seed rows and rules deployed.
pub fn setup(label: &str) -> (TestDb, postgres::Client) {
    todo_app::setup(label, SHARED_UPDATE_POLICY, &todo_app::seed(20, 20, 10))
}

/// A TCP proxy in front of the relay that can be cut: offline, it drops every
/// open connection and closes new ones at once, so the client behind it sees
/// the relay as unreachable (stream and uploads fail) until it is back online.
pub struct Proxy {
    pub url: String,
    online: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub fn start(rt: &tokio::runtime::Runtime, target: SocketAddr) -> Proxy {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (online, rx) = tokio::sync::watch::channel(true);
        rt.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                if !*rx.borrow() {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|on| !on) => {}
                    }
                });
            }
        });
        Proxy { url, online }
    }

    pub fn set_online(&self, on: bool) {
        self.online.send_replace(on);
    }
}

/// Credentials the test can change while the client runs (e.g. a bad token);
/// uploads go to the relay's `/crud` (the default `upload_data`).
pub struct Switchable(pub Mutex<Credentials>);

impl Connector for Switchable {
    async fn fetch_credentials(&self) -> outpost_client::Result<Credentials> {
        Ok(self.0.lock().unwrap().clone())
    }
}

pub static FILES: AtomicU32 = AtomicU32::new(0);

/// A syncing client database file, removed (with its WAL files) on drop.
pub struct Client {
    pub db: Database,
    pub path: PathBuf,
    pub task: tokio::task::JoinHandle<outpost_client::Result<Option<String>>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
        }
    }
}

pub fn temp_db(sub: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "outpost-wp-{}-{}-{sub}.db",
        std::process::id(),
        FILES.fetch_add(1, Ordering::SeqCst)
    ));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    path
}

pub fn options() -> SyncOptions {
    SyncOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..SyncOptions::default()
    }
}

/// Opens a client database for `sub` reaching the relay at `endpoint` (the
/// relay itself or a [`Proxy`]) with the schema from `GET /schema`, and starts
/// syncing it in the background with `connector(credentials)`.
pub fn start_with<C: Connector>(
    rt: &tokio::runtime::Runtime,
    relay: &Relay,
    endpoint: &str,
    sub: &str,
    connector: impl FnOnce(Credentials) -> C,
) -> Client {
    let path = temp_db(sub);
    let creds = Credentials {
        endpoint: endpoint.to_string(),
        token: relay.token(sub, 600),
    };
    let db = rt
        .block_on(open_with_relay_schema(&path, &Http::new(), &creds))
        .expect("open client database");
    let connector = Arc::new(connector(creds));
    let d = db.clone();
    let task = rt.spawn(async move { SyncClient::new(d, connector).run(options()).await });
    Client { db, path, task }
}

pub fn start_client(
    rt: &tokio::runtime::Runtime,
    relay: &Relay,
    endpoint: &str,
    sub: &str,
) -> Client {
    start_with(rt, relay, endpoint, sub, |c| Switchable(Mutex::new(c)))
}

/// Waits until the client's sync status satisfies `pred`.
pub fn wait_status(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    what: &str,
    pred: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    outpost_tests::client::wait_status(rt, &c.db, what, || c.task.is_finished(), pred)
}

pub fn wait_synced(rt: &tokio::runtime::Runtime, c: &Client) {
    wait_status(rt, c, "the first checkpoint", |s| {
        s.last_checkpoint.is_some()
    });
}

/// Waits until every queued write was uploaded (and no upload is running).
pub fn wait_drained(rt: &tokio::runtime::Runtime, c: &Client, what: &str) -> SyncStatus {
    wait_status(rt, c, what, |s| {
        s.connected && s.upload_pending == 0 && !s.uploading
    })
}

pub fn wait_offline(rt: &tokio::runtime::Runtime, c: &Client, what: &str) {
    wait_status(rt, c, what, |s| !s.connected);
}

use outpost_tests::client::Rows;

/// Runs `sql` as a live query until `pred` holds for its rows; returns them.
pub fn wait_rows(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    sql: &str,
    what: &str,
    pred: impl FnMut(&Rows) -> bool,
) -> Rows {
    outpost_tests::client::wait_rows(rt, &c.db, sql, what, pred)
}

pub fn query(c: &Client, sql: &str) -> Rows {
    c.db.query(sql, &[]).unwrap()
}

pub fn count(c: &Client, sql: &str) -> i64 {
    query(c, sql)[0]["n"].as_i64().unwrap()
}

pub fn exec(c: &Client, sql: &str, params: &[Value]) {
    c.db.execute(sql, params).unwrap();
}

pub const LOCAL_TODOS: &str =
    "SELECT id, list_id, owner_id, description, completed FROM todos ORDER BY id";

/// The full rows (all columns but `created_at`, whose text form differs) of the
/// todos in `lists`, as the client stores them (booleans as 0/1), sorted by id.
pub fn pg_todos(pg: &mut postgres::Client, lists: &[&str]) -> Rows {
    let lists: Vec<String> = lists.iter().map(|s| s.to_string()).collect();
    let mut rows: Rows = pg
        .query(
            "SELECT id::text, list_id::text, owner_id, description, completed FROM todos
              WHERE list_id::text = ANY($1)",
            &[&lists],
        )
        .unwrap()
        .into_iter()
        .map(|r| {
            json!({
                "id": r.get::<_, String>(0),
                "list_id": r.get::<_, String>(1),
                "owner_id": r.get::<_, String>(2),
                "description": r.get::<_, String>(3),
                "completed": r.get::<_, bool>(4) as i64,
            })
            .as_object()
            .unwrap()
            .clone()
        })
        .collect();
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    rows
}

pub fn pg_lists(pg: &mut postgres::Client, lists: &[&str]) -> Rows {
    let lists: Vec<String> = lists.iter().map(|s| s.to_string()).collect();
    let mut rows: Rows = pg
        .query(
            "SELECT id::text, owner_id, name FROM lists WHERE id::text = ANY($1)",
            &[&lists],
        )
        .unwrap()
        .into_iter()
        .map(|r| {
            json!({"id": r.get::<_, String>(0), "owner_id": r.get::<_, Option<String>>(1), "name": r.get::<_, String>(2)})
                .as_object()
                .unwrap()
                .clone()
        })
        .collect();
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    rows
}

/// Waits until the client holds exactly Postgres' rows of `lists` (lists and
/// todos); Postgres must not change meanwhile.
pub fn wait_converged(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    pg: &mut postgres::Client,
    lists: &[&str],
    who: &str,
) {
    let todos = pg_todos(pg, lists);
    wait_rows(rt, c, LOCAL_TODOS, &format!("{who} to converge"), |r| {
        *r == todos
    });
    assert_eq!(
        query(c, "SELECT id, owner_id, name FROM lists ORDER BY id"),
        pg_lists(pg, lists),
        "{who}'s lists"
    );
}

pub fn pg_todo(pg: &mut postgres::Client, id: &str) -> Option<(String, bool)> {
    pg.query_opt(
        "SELECT description, completed FROM todos WHERE id::text = $1",
        &[&id],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

pub fn local_todo(c: &Client, id: &str) -> Option<(String, bool)> {
    c.db.query(
        "SELECT description, completed FROM todos WHERE id = ?1",
        &[json!(id)],
    )
    .unwrap()
    .first()
    .map(|r| {
        (
            r["description"].as_str().unwrap().to_string(),
            r["completed"] == 1,
        )
    })
}

/// `(op, id, data)` of every queued upload entry, in order.
pub fn queue(c: &Client) -> Vec<(String, String, Value)> {
    query(
        c,
        "SELECT json_extract(data, '$.op') AS op, json_extract(data, '$.id') AS id,
                coalesce(json_extract(data, '$.data'), 'null') AS d
           FROM ps_crud ORDER BY ps_crud.id",
    )
    .into_iter()
    .map(|r| {
        (
            r["op"].as_str().unwrap().to_string(),
            r["id"].as_str().unwrap().to_string(),
            serde_json::from_str(r["d"].as_str().unwrap()).unwrap(),
        )
    })
    .collect()
}

/// `n` ids of not completed todos of `owner` in `list`, in Postgres.
pub fn pg_ids(pg: &mut postgres::Client, list: &str, owner: &str, n: i64) -> Vec<String> {
    pg.query(
        "SELECT id::text FROM todos WHERE list_id::text = $1 AND owner_id = $2 AND NOT completed
          ORDER BY id LIMIT $3",
        &[&list, &owner, &n],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

pub fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}
