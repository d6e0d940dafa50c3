//! The write path end to end, beyond the happy round trip of `client_e2e.rs`:
//! real Postgres with RLS ([`TestDb`]), an in-process relay with `POST /crud`
//! ([`Relay`]) and `outpost_client::Database`s syncing into SQLite files, each
//! reaching the relay through its own [`Proxy`] that a test can cut.
//!
//! - offline: a client whose relay is unreachable keeps writing locally (visible
//!   at once, queued in `ps_crud`) while another client and Postgres change
//!   other rows; after reconnecting both converge to Postgres, queue empty;
//! - concurrent PATCHes of one row from two clients: the server applies them in
//!   upload order, last write wins per field, a field only one client changed
//!   keeps that client's value, and both clients end with Postgres' row;
//! - the rejection policy: transient failures (relay unreachable, 401) keep
//!   writes queued; a write the relay refuses for good (403 RLS, 422
//!   constraint) moves its whole local transaction to `ps_crud_rejected`, is
//!   reported in `SyncStatus::last_rejected`, and later writes keep flowing;
//! - an app uploading through its own backend (`Database::upload_batches`, the
//!   pattern of `client/examples/own_backend.rs`) with `/crud` disabled.
//!
//! Every wait is on a client's sync status or a live query, bounded by
//! [`WAIT`]; nothing sleeps for a fixed time.

use outpost_client::net::connector::open_with_relay_schema;
use outpost_client::{Connector, Credentials, Database, Http, SyncClient, SyncOptions, SyncStatus};
use outpost_protocol::http::{CrudBatch, CrudOp};
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_tests::client::todo_app::{self, ALICE_LIST, BOB_LIST, SHARED, WRITE_ROLE};

/// Besides the shared todo app: anyone may update a todo of the shared list
/// (so two users can PATCH the same row).
const SHARED_UPDATE_POLICY: &str = "
CREATE POLICY todos_update_shared ON todos FOR UPDATE TO outpost_test_writer
  USING (list_id = '00000000-0000-4000-8000-000000000001')
  WITH CHECK (list_id = '00000000-0000-4000-8000-000000000001');
";

const INSERT: &str =
    "INSERT INTO todos(id, list_id, owner_id, description, completed, created_at) \
                      VALUES (?1, ?2, ?3, ?4, 0, '2024-05-01T10:00:00Z')";

/// The database with schema, RLS, seed rows and rules deployed.
fn setup(label: &str) -> (TestDb, postgres::Client) {
    todo_app::setup(label, SHARED_UPDATE_POLICY, &todo_app::seed(20, 20, 10))
}

use outpost_tests::client::runtime;

/// A TCP proxy in front of the relay that can be cut: offline, it drops every
/// open connection and closes new ones at once, so the client behind it sees
/// the relay as unreachable (stream and uploads fail) until it is back online.
struct Proxy {
    url: String,
    online: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    fn start(rt: &tokio::runtime::Runtime, target: SocketAddr) -> Proxy {
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

    fn set_online(&self, on: bool) {
        self.online.send_replace(on);
    }
}

/// Credentials the test can change while the client runs (e.g. a bad token);
/// uploads go to the relay's `/crud` (the default `upload_data`).
struct Switchable(Mutex<Credentials>);

impl Connector for Switchable {
    async fn fetch_credentials(&self) -> outpost_client::Result<Credentials> {
        Ok(self.0.lock().unwrap().clone())
    }
}

static FILES: AtomicU32 = AtomicU32::new(0);

/// A syncing client database file, removed (with its WAL files) on drop.
struct Client {
    db: Database,
    path: PathBuf,
    task: tokio::task::JoinHandle<outpost_client::Result<Option<String>>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
        }
    }
}

fn temp_db(sub: &str) -> PathBuf {
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

fn options() -> SyncOptions {
    SyncOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..SyncOptions::default()
    }
}

/// Opens a client database for `sub` reaching the relay at `endpoint` (the
/// relay itself or a [`Proxy`]) with the schema from `GET /schema`, and starts
/// syncing it in the background with `connector(credentials)`.
fn start_with<C: Connector>(
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

fn start_client(rt: &tokio::runtime::Runtime, relay: &Relay, endpoint: &str, sub: &str) -> Client {
    start_with(rt, relay, endpoint, sub, |c| Switchable(Mutex::new(c)))
}

/// Waits until the client's sync status satisfies `pred`.
fn wait_status(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    what: &str,
    pred: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    outpost_tests::client::wait_status(rt, &c.db, what, || c.task.is_finished(), pred)
}

fn wait_synced(rt: &tokio::runtime::Runtime, c: &Client) {
    wait_status(rt, c, "the first checkpoint", |s| {
        s.last_checkpoint.is_some()
    });
}

/// Waits until every queued write was uploaded (and no upload is running).
fn wait_drained(rt: &tokio::runtime::Runtime, c: &Client, what: &str) -> SyncStatus {
    wait_status(rt, c, what, |s| {
        s.connected && s.upload_pending == 0 && !s.uploading
    })
}

fn wait_offline(rt: &tokio::runtime::Runtime, c: &Client, what: &str) {
    wait_status(rt, c, what, |s| !s.connected);
}

use outpost_tests::client::Rows;

/// Runs `sql` as a live query until `pred` holds for its rows; returns them.
fn wait_rows(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    sql: &str,
    what: &str,
    pred: impl FnMut(&Rows) -> bool,
) -> Rows {
    outpost_tests::client::wait_rows(rt, &c.db, sql, what, pred)
}

fn query(c: &Client, sql: &str) -> Rows {
    c.db.query(sql, &[]).unwrap()
}

fn count(c: &Client, sql: &str) -> i64 {
    query(c, sql)[0]["n"].as_i64().unwrap()
}

fn exec(c: &Client, sql: &str, params: &[Value]) {
    c.db.execute(sql, params).unwrap();
}

const LOCAL_TODOS: &str =
    "SELECT id, list_id, owner_id, description, completed FROM todos ORDER BY id";

/// The full rows (all columns but `created_at`, whose text form differs) of the
/// todos in `lists`, as the client stores them (booleans as 0/1), sorted by id.
fn pg_todos(pg: &mut postgres::Client, lists: &[&str]) -> Rows {
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

fn pg_lists(pg: &mut postgres::Client, lists: &[&str]) -> Rows {
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
fn wait_converged(
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

fn pg_todo(pg: &mut postgres::Client, id: &str) -> Option<(String, bool)> {
    pg.query_opt(
        "SELECT description, completed FROM todos WHERE id::text = $1",
        &[&id],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

fn local_todo(c: &Client, id: &str) -> Option<(String, bool)> {
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
fn queue(c: &Client) -> Vec<(String, String, Value)> {
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
fn pg_ids(pg: &mut postgres::Client, list: &str, owner: &str, n: i64) -> Vec<String> {
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

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

#[test]
fn offline_writes_queue_locally_and_converge_after_reconnect() {
    let (db, mut pg) = setup("wp_offline");
    let relay = Relay::start_with(&db, |a| a.write_role = Some(WRITE_ROLE.to_string()));
    let rt = runtime();
    let proxy = Proxy::start(&rt, relay.addr);
    let alice = start_client(&rt, &relay, &proxy.url, "alice");
    let bob = start_client(&rt, &relay, &relay.url, "bob");
    wait_synced(&rt, &alice);
    wait_synced(&rt, &bob);

    // Online, alice adds two todos to the shared list; both sides agree.
    let (a1, a2) = (uuid(0xa001), uuid(0xa002));
    exec(
        &alice,
        INSERT,
        &[json!(a1), json!(SHARED), json!("alice"), json!("alice one")],
    );
    exec(
        &alice,
        INSERT,
        &[json!(a2), json!(SHARED), json!("alice"), json!("alice two")],
    );
    wait_drained(&rt, &alice, "alice's first uploads");
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
    wait_converged(&rt, &bob, &mut pg, &[BOB_LIST, SHARED], "bob");

    // Alice loses the relay.
    proxy.set_online(false);
    wait_offline(&rt, &alice, "alice to notice the relay is gone");
    let checkpoint_offline = alice.db.status().borrow().last_checkpoint.clone();

    // Offline, alice writes; each write is visible at once and queued.
    let (o1, o2, o3, o4) = (uuid(0xa101), uuid(0xa102), uuid(0xa103), uuid(0xa104));
    let alice_own = pg_ids(&mut pg, ALICE_LIST, "alice", 1).remove(0);
    exec(
        &alice,
        INSERT,
        &[json!(o1), json!(SHARED), json!("alice"), json!("offline 1")],
    );
    exec(
        &alice,
        INSERT,
        &[json!(o2), json!(SHARED), json!("alice"), json!("offline 2")],
    );
    exec(
        &alice,
        INSERT,
        &[
            json!(o3),
            json!(ALICE_LIST),
            json!("alice"),
            json!("offline 3"),
        ],
    );
    exec(
        &alice,
        "UPDATE todos SET description = 'alice edited offline' WHERE id = ?1",
        &[json!(a1)],
    );
    exec(&alice, "DELETE FROM todos WHERE id = ?1", &[json!(a2)]);
    // Two statements, one local transaction.
    alice
        .db
        .execute_batch(&format!(
            "UPDATE todos SET completed = 1 WHERE id = '{alice_own}';
             INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
               VALUES ('{o4}', '{SHARED}', 'alice', 'offline 4', 0, '2024-05-01T10:00:00Z');"
        ))
        .unwrap();
    for (id, description) in [
        (&o1, "offline 1"),
        (&o2, "offline 2"),
        (&o3, "offline 3"),
        (&o4, "offline 4"),
        (&a1, "alice edited offline"),
    ] {
        assert_eq!(
            local_todo(&alice, id).map(|t| t.0).as_deref(),
            Some(description),
            "alice's offline write to {id} is visible at once"
        );
    }
    assert_eq!(local_todo(&alice, &a2), None);
    assert!(local_todo(&alice, &alice_own).unwrap().1);
    let queued = queue(&alice);
    let ops: Vec<(&str, &str)> = queued
        .iter()
        .map(|(op, id, _)| (op.as_str(), id.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("PUT", o1.as_str()),
            ("PUT", o2.as_str()),
            ("PUT", o3.as_str()),
            ("PATCH", a1.as_str()),
            ("DELETE", a2.as_str()),
            ("PATCH", alice_own.as_str()),
            ("PUT", o4.as_str()),
        ]
    );
    // A PATCH carries only the columns the write changed.
    assert_eq!(queued[3].2, json!({"description": "alice edited offline"}));
    assert_eq!(queued[5].2, json!({"completed": 1}));
    // The uploader keeps trying and failing; nothing leaves the queue.
    let s = wait_status(&rt, &alice, "alice's upload to fail offline", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("upload:"))
    });
    assert_eq!(s.upload_pending, 7, "{s:?}");
    assert!(s.last_rejected.is_none(), "{s:?}");

    // Meanwhile bob and Postgres itself change other rows (and some of alice's
    // rows in other columns).
    let bobs = pg_ids(&mut pg, SHARED, "bob", 2);
    let b1 = uuid(0xb101);
    exec(
        &bob,
        INSERT,
        &[
            json!(b1),
            json!(SHARED),
            json!("bob"),
            json!("bob while alice away"),
        ],
    );
    exec(
        &bob,
        "UPDATE todos SET description = 'bob edited', completed = 1 WHERE id = ?1",
        &[json!(bobs[0])],
    );
    exec(&bob, "DELETE FROM todos WHERE id = ?1", &[json!(bobs[1])]);
    pg.batch_execute(&format!(
        "UPDATE todos SET completed = true WHERE id = '{a1}';
         UPDATE todos SET description = 'postgres edited a2' WHERE id = '{a2}';
         UPDATE todos SET description = 'postgres edited' WHERE id = '{alice_own}';
         INSERT INTO todos(id, list_id, owner_id, description)
           VALUES ('{}', '{SHARED}', 'bob', 'from postgres');",
        uuid(0xc001)
    ))
    .unwrap();
    wait_drained(&rt, &bob, "bob's uploads");
    wait_converged(&rt, &bob, &mut pg, &[BOB_LIST, SHARED], "bob");
    // Alice saw none of it and still holds her queue.
    assert_eq!(
        alice.db.status().borrow().last_checkpoint,
        checkpoint_offline
    );
    assert_eq!(local_todo(&alice, &b1), None);
    assert_eq!(queue(&alice).len(), 7);
    assert!(pg_todo(&mut pg, &o1).is_none());

    // Back online: the queue uploads in order and both converge to Postgres.
    proxy.set_online(true);
    let s = wait_drained(&rt, &alice, "alice's offline queue to upload");
    assert!(s.last_rejected.is_none(), "{s:?}");
    // Server order: alice's writes came after Postgres' and bob's, per field.
    assert_eq!(
        pg_todo(&mut pg, &a1),
        Some(("alice edited offline".into(), true)),
        "alice's PATCH of description keeps Postgres' completed"
    );
    assert_eq!(pg_todo(&mut pg, &a2), None, "alice's delete wins");
    assert_eq!(
        pg_todo(&mut pg, &alice_own),
        Some(("postgres edited".into(), true))
    );
    for (id, d) in [(&o1, "offline 1"), (&o3, "offline 3"), (&o4, "offline 4")] {
        assert_eq!(pg_todo(&mut pg, id), Some((d.to_string(), false)));
    }
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
    wait_converged(&rt, &bob, &mut pg, &[BOB_LIST, SHARED], "bob");
    assert_eq!(count(&alice, "SELECT count(*) AS n FROM ps_crud"), 0);
    assert_eq!(
        count(&alice, "SELECT count(*) AS n FROM ps_crud_rejected"),
        0
    );
    let s = alice.db.status().borrow().clone();
    assert!(
        s.connected && s.upload_pending == 0 && s.last_rejected.is_none(),
        "{s:?}"
    );
}

#[test]
fn concurrent_patches_merge_per_field_in_server_order() {
    let (db, mut pg) = setup("wp_patch");
    let relay = Relay::start_with(&db, |a| a.write_role = Some(WRITE_ROLE.to_string()));
    let rt = runtime();
    let (pa, pb) = (Proxy::start(&rt, relay.addr), Proxy::start(&rt, relay.addr));
    let alice = start_client(&rt, &relay, &pa.url, "alice");
    let bob = start_client(&rt, &relay, &pb.url, "bob");
    wait_synced(&rt, &alice);
    wait_synced(&rt, &bob);
    let rows = pg_ids(&mut pg, SHARED, "bob", 2);

    // Round 1 uploads alice's PATCH first, round 2 bob's; each on its own row.
    for (round, row) in rows.iter().enumerate() {
        let alice_first = round == 0;
        pa.set_online(false);
        pb.set_online(false);
        wait_offline(&rt, &alice, "alice offline");
        wait_offline(&rt, &bob, "bob offline");

        // Alice sets description and completed, bob only description.
        let (from_alice, from_bob) = (format!("alice says {round}"), format!("bob says {round}"));
        exec(
            &alice,
            "UPDATE todos SET description = ?1, completed = 1 WHERE id = ?2",
            &[json!(from_alice), json!(row)],
        );
        exec(
            &bob,
            "UPDATE todos SET description = ?1 WHERE id = ?2",
            &[json!(from_bob), json!(row)],
        );
        assert_eq!(
            local_todo(&alice, row),
            Some((from_alice.clone(), true)),
            "alice sees her write at once"
        );
        assert_eq!(
            local_todo(&bob, row),
            Some((from_bob.clone(), false)),
            "bob sees his write at once"
        );
        assert_eq!(
            queue(&alice),
            [(
                "PATCH".to_string(),
                row.clone(),
                json!({"description": from_alice, "completed": 1})
            )]
        );
        assert_eq!(
            queue(&bob),
            [(
                "PATCH".to_string(),
                row.clone(),
                json!({"description": from_bob})
            )]
        );

        let (first, first_proxy, first_says, second, second_proxy, second_says) = if alice_first {
            (&alice, &pa, &from_alice, &bob, &pb, &from_bob)
        } else {
            (&bob, &pb, &from_bob, &alice, &pa, &from_alice)
        };
        first_proxy.set_online(true);
        wait_drained(&rt, first, "the first PATCH to upload");
        assert_eq!(
            pg_todo(&mut pg, row).unwrap().0,
            *first_says,
            "the first upload reached Postgres"
        );
        second_proxy.set_online(true);
        wait_drained(&rt, second, "the second PATCH to upload");

        // Last write wins on description; completed, set only by alice, stays set.
        let fin = pg_todo(&mut pg, row).unwrap();
        assert_eq!(fin, (second_says.clone(), true), "round {round}");
        for (c, who) in [(&alice, "alice"), (&bob, "bob")] {
            wait_rows(
                &rt,
                c,
                &format!("SELECT description, completed FROM todos WHERE id = '{row}'"),
                &format!("{who} to show Postgres' row (round {round})"),
                |r| r.len() == 1 && r[0]["description"] == fin.0 && r[0]["completed"] == 1,
            );
        }
        wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
        wait_converged(&rt, &bob, &mut pg, &[BOB_LIST, SHARED], "bob");
        for c in [&alice, &bob] {
            let s = c.db.status().borrow().clone();
            assert!(s.last_rejected.is_none(), "{s:?}");
            assert_eq!(count(c, "SELECT count(*) AS n FROM ps_crud"), 0);
        }
    }
}

#[test]
fn rejected_writes_are_reported_and_set_aside_only_when_refused_for_good() {
    let (db, mut pg) = setup("wp_reject");
    let relay = Relay::start_with(&db, |a| a.write_role = Some(WRITE_ROLE.to_string()));
    let rt = runtime();
    let proxy = Proxy::start(&rt, relay.addr);
    let creds = Arc::new(Mutex::new(None::<Arc<Switchable>>));
    let alice = {
        let slot = creds.clone();
        start_with(&rt, &relay, &proxy.url, "alice", move |c| {
            let s = Arc::new(Switchable(Mutex::new(c)));
            *slot.lock().unwrap() = Some(s.clone());
            SharedConnector(s)
        })
    };
    let switch = creds.lock().unwrap().clone().unwrap();
    wait_synced(&rt, &alice);
    let rejected = |c: &Client| count(c, "SELECT count(*) AS n FROM ps_crud_rejected");

    // 1. Relay unreachable: the write stays queued, nothing is rejected.
    proxy.set_online(false);
    wait_offline(&rt, &alice, "alice offline");
    let w1 = uuid(0xd001);
    exec(
        &alice,
        INSERT,
        &[json!(w1), json!(SHARED), json!("alice"), json!("queued")],
    );
    let s = wait_status(&rt, &alice, "an upload failing offline", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("upload:"))
    });
    assert!(s.last_rejected.is_none() && s.upload_pending == 1, "{s:?}");

    // 2. A bad token (401) is not a refusal either.
    let good = switch.0.lock().unwrap().token.clone();
    switch.0.lock().unwrap().token =
        outpost_relay::auth::dev_token("not-the-relay-secret-0123456789", "alice", 600, None)
            .unwrap();
    proxy.set_online(true);
    let s = wait_status(&rt, &alice, "an upload failing with 401", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("upload:") && e.contains("401"))
    });
    assert!(s.last_rejected.is_none() && s.upload_pending == 1, "{s:?}");
    assert_eq!(rejected(&alice), 0);
    assert_eq!(queue(&alice).len(), 1);
    assert!(pg_todo(&mut pg, &w1).is_none());

    // With a good token again, the write goes through.
    switch.0.lock().unwrap().token = good;
    let s = wait_drained(&rt, &alice, "the queued write to upload");
    assert!(s.last_rejected.is_none(), "{s:?}");
    assert_eq!(pg_todo(&mut pg, &w1), Some(("queued".into(), false)));

    // 3. RLS refuses (403) one entry of a two-entry local transaction: the whole
    //    transaction is set aside, reported, reverted; a later write flows.
    let (ok_in_tx, bad, later) = (uuid(0xd002), uuid(0xd003), uuid(0xd004));
    alice
        .db
        .execute_batch(&format!(
            "INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
               VALUES ('{ok_in_tx}', '{SHARED}', 'alice', 'fine alone', 0, '2024-05-01T10:00:00Z');
             INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
               VALUES ('{bad}', '{BOB_LIST}', 'alice', 'not my list', 0, '2024-05-01T10:00:00Z');"
        ))
        .unwrap();
    exec(
        &alice,
        INSERT,
        &[json!(later), json!(SHARED), json!("alice"), json!("later")],
    );
    let s = wait_status(
        &rt,
        &alice,
        "the refused transaction to be set aside",
        |s| s.last_rejected.is_some() && s.upload_pending == 0 && !s.uploading,
    );
    let why = s.last_rejected.unwrap();
    assert!(
        why.contains(&bad) && why.contains("403") && why.starts_with("PUT todos"),
        "{why}"
    );
    let set_aside = query(
        &alice,
        "SELECT json_extract(data, '$.id') AS id, tx_id, status, reason FROM ps_crud_rejected ORDER BY ps_crud_rejected.id",
    );
    assert_eq!(set_aside.len(), 2, "{set_aside:?}");
    assert_eq!(set_aside[0]["id"], json!(ok_in_tx));
    assert_eq!(set_aside[1]["id"], json!(bad));
    assert_eq!(set_aside[0]["tx_id"], set_aside[1]["tx_id"]);
    assert!(set_aside.iter().all(|r| r["status"] == 403));
    assert!(set_aside[1]["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(pg_todo(&mut pg, &ok_in_tx), None, "rolled back whole");
    assert_eq!(pg_todo(&mut pg, &bad), None);
    assert_eq!(pg_todo(&mut pg, &later), Some(("later".into(), false)));
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");

    // 4. A constraint refuses (422) a PATCH: set aside, reported, reverted to
    //    Postgres' row; the next write flows.
    exec(
        &alice,
        "UPDATE todos SET description = NULL WHERE id = ?1",
        &[json!(later)],
    );
    exec(
        &alice,
        "UPDATE todos SET completed = 1 WHERE id = ?1",
        &[json!(w1)],
    );
    let s = wait_status(&rt, &alice, "the 422 to be set aside", |s| {
        s.last_rejected
            .as_deref()
            .is_some_and(|r| r.contains("422"))
            && s.upload_pending == 0
            && !s.uploading
    });
    let why = s.last_rejected.unwrap();
    assert!(
        why.starts_with("PATCH todos") && why.contains(&later),
        "{why}"
    );
    assert_eq!(rejected(&alice), 3);
    assert_eq!(pg_todo(&mut pg, &later), Some(("later".into(), false)));
    assert_eq!(pg_todo(&mut pg, &w1), Some(("queued".into(), true)));
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
    assert_eq!(count(&alice, "SELECT count(*) AS n FROM ps_crud"), 0);

    // 5. A refused write with nothing after it is reverted too (the checkpoint
    //    that answers its write checkpoint request restores the server's row).
    let lone = uuid(0xd005);
    exec(
        &alice,
        INSERT,
        &[json!(lone), json!(BOB_LIST), json!("alice"), json!("lone")],
    );
    let s = wait_status(&rt, &alice, "the lone refusals to be set aside", |s| {
        s.last_rejected
            .as_deref()
            .is_some_and(|r| r.contains(&lone))
            && s.upload_pending == 0
            && !s.uploading
    });
    assert!(s.last_rejected.unwrap().contains("403"));
    assert_eq!(rejected(&alice), 4);
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
}

/// [`Switchable`] shared with the test, so it can swap the token.
struct SharedConnector(Arc<Switchable>);

impl Connector for SharedConnector {
    async fn fetch_credentials(&self) -> outpost_client::Result<Credentials> {
        self.0.fetch_credentials().await
    }
}

/// The app's own backend, as `client/examples/own_backend.rs` would reach it:
/// here it applies each batch to Postgres directly, in one transaction, as the
/// Postgres superuser (a real backend authenticates the user and checks access).
struct OwnBackend {
    relay: Credentials,
    database_url: String,
    batches: AtomicU32,
}

impl Connector for OwnBackend {
    async fn fetch_credentials(&self) -> outpost_client::Result<Credentials> {
        Ok(self.relay.clone())
    }

    async fn upload_data(&self, db: &Database, _: &Http) -> outpost_client::Result<()> {
        db.upload_batches(|batch| {
            self.batches.fetch_add(1, Ordering::SeqCst);
            let url = self.database_url.clone();
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                // The blocking `postgres` client runs on its own thread.
                std::thread::spawn(move || {
                    let _ = tx.send(apply_batch(&url, &batch));
                });
                rx.await
                    .map_err(|_| outpost_client::Error::Transport("backend gone".into()))?
                    .map_err(|e| outpost_client::Error::Transport(format!("backend: {e}")))
            }
        })
        .await
    }
}

/// Applies a batch of todo writes in one transaction.
fn apply_batch(url: &str, batch: &CrudBatch) -> Result<(), postgres::Error> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    let mut tx = c.transaction()?;
    for e in &batch.batch {
        assert_eq!(e.table, "todos", "this backend only knows todos");
        let data = Value::Object(e.data.clone().unwrap_or_default());
        match e.op {
            CrudOp::Put => {
                tx.execute(
                    "INSERT INTO todos(id, list_id, owner_id, description, completed)
                     SELECT $1::text::uuid, list_id, owner_id, description, completed
                       FROM json_populate_record(NULL::todos, $2::jsonb::json)
                     ON CONFLICT (id) DO UPDATE SET list_id = EXCLUDED.list_id,
                       owner_id = EXCLUDED.owner_id, description = EXCLUDED.description,
                       completed = EXCLUDED.completed",
                    &[&e.id, &data],
                )?;
            }
            CrudOp::Patch => {
                for col in data.as_object().unwrap().keys() {
                    assert!(
                        ["description", "completed"].contains(&col.as_str()),
                        "{col}"
                    );
                    tx.execute(
                        &format!(
                            "UPDATE todos SET {col} = r.{col}
                               FROM json_populate_record(NULL::todos, $2::jsonb::json) r
                              WHERE todos.id = $1::text::uuid"
                        ),
                        &[&e.id, &data],
                    )?;
                }
            }
            CrudOp::Delete => {
                tx.execute("DELETE FROM todos WHERE id = $1::text::uuid", &[&e.id])?;
            }
        }
    }
    tx.commit()
}

#[test]
fn an_app_uploads_through_its_own_backend_without_crud() {
    let (db, mut pg) = setup("wp_own");
    // No write role: the relay's /crud is disabled.
    let relay = Relay::start(&db);
    let rt = runtime();
    let url = db.url.clone();
    let mut backend = None;
    let alice = start_with(&rt, &relay, &relay.url, "alice", |relay| {
        let b = Arc::new(OwnBackend {
            relay,
            database_url: url,
            batches: AtomicU32::new(0),
        });
        backend = Some(b.clone());
        SharedBackend(b)
    });
    let backend = backend.unwrap();
    wait_synced(&rt, &alice);
    let crud = relay.request(
        "POST",
        "/crud",
        Some(&relay.token("alice", 60)),
        Some(&json!({"batch": []})),
    );
    assert_ne!(crud.status, 200, "/crud must be disabled here");

    let (n1, n2) = (uuid(0xe001), uuid(0xe002));
    let mine = pg_ids(&mut pg, ALICE_LIST, "alice", 1).remove(0);
    exec(
        &alice,
        INSERT,
        &[
            json!(n1),
            json!(SHARED),
            json!("alice"),
            json!("via backend"),
        ],
    );
    alice
        .db
        .execute_batch(&format!(
            "UPDATE todos SET completed = 1 WHERE id = '{mine}';
             INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
               VALUES ('{n2}', '{ALICE_LIST}', 'alice', 'also via backend', 0, '2024-05-01T10:00:00Z');
             DELETE FROM todos WHERE id = '{n1}';"
        ))
        .unwrap();
    let s = wait_drained(&rt, &alice, "the own-backend upload");
    assert!(s.last_error.is_none() && s.last_rejected.is_none(), "{s:?}");
    assert!(backend.batches.load(Ordering::SeqCst) >= 1);
    assert_eq!(pg_todo(&mut pg, &n1), None);
    assert_eq!(
        pg_todo(&mut pg, &n2),
        Some(("also via backend".into(), false))
    );
    assert!(pg_todo(&mut pg, &mine).unwrap().1);
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
    // Postgres' own writes still arrive on top.
    pg.execute(
        "UPDATE todos SET description = 'changed on the server' WHERE id::text = $1",
        &[&n2],
    )
    .unwrap();
    wait_rows(
        &rt,
        &alice,
        &format!("SELECT description FROM todos WHERE id = '{n2}'"),
        "the server's change",
        |r| r.len() == 1 && r[0]["description"] == "changed on the server",
    );
}

struct SharedBackend(Arc<OwnBackend>);

impl Connector for SharedBackend {
    async fn fetch_credentials(&self) -> outpost_client::Result<Credentials> {
        self.0.fetch_credentials().await
    }

    async fn upload_data(&self, db: &Database, http: &Http) -> outpost_client::Result<()> {
        self.0.upload_data(db, http).await
    }
}
