//! The client library end to end: real Postgres ([`TestDb`]), an in-process
//! relay ([`Relay`]) and `outpost_client::Database`s syncing into SQLite files.
//!
//! - initial sync: each user gets exactly the rows their buckets hold;
//! - Postgres writes (one transaction) reach a connected client in one
//!   checkpoint; bucket membership changes move rows between users;
//! - local writes are visible at once, are uploaded through `POST /crud` (as
//!   the user, under RLS), land in Postgres and reach another client; a write
//!   RLS refuses is set aside (`ps_crud_rejected`) and reverted locally while
//!   later writes keep flowing;
//! - views come from the relay's `GET /schema` (or are inferred without it).
//!
//! Every wait is on the client's sync status or a live query, bounded by
//! [`WAIT`]; nothing sleeps for a fixed time.

use outpost_client::{Credentials, Database, SyncStatus};
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outpost_tests::client::todo_app::{self, ALICE_LIST, BOB_LIST, SHARED, WRITE_ROLE};

/// The database with schema, RLS, seed rows and rules deployed.
fn setup(label: &str) -> (TestDb, postgres::Client) {
    todo_app::setup(label, "", &todo_app::seed(50, 30, 10))
}

use outpost_tests::client::{open_from_relay, remove_db_file, runtime, spawn_sync, SyncTask};

static FILES: AtomicU32 = AtomicU32::new(0);

/// A client database file, removed (with its WAL files) on drop.
struct Client {
    db: Database,
    path: PathBuf,
    task: SyncTask,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
        remove_db_file(&self.path);
    }
}

/// Opens a client database for `sub` (schema from the relay, else inferred) and
/// starts syncing it in the background.
fn start_client(rt: &tokio::runtime::Runtime, relay: &Relay, sub: &str) -> Client {
    let path = std::env::temp_dir().join(format!(
        "outpost-e2e-{}-{}-{sub}.db",
        std::process::id(),
        FILES.fetch_add(1, Ordering::SeqCst)
    ));
    remove_db_file(&path);
    let creds = Credentials {
        endpoint: relay.url.clone(),
        token: relay.token(sub, 600),
    };
    let db = open_from_relay(rt, &path, &creds);
    let task = spawn_sync(rt, &db, creds, Duration::from_millis(500));
    Client { db, path, task }
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

/// Waits for the first applied checkpoint.
fn wait_synced(rt: &tokio::runtime::Runtime, c: &Client) -> String {
    wait_status(rt, c, "the first checkpoint", |s| {
        s.last_checkpoint.is_some()
    })
    .last_checkpoint
    .unwrap()
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

/// `id → description` of the todos in the given lists, in Postgres.
fn pg_todos(pg: &mut postgres::Client, lists: &[&str]) -> Vec<(String, String)> {
    let lists: Vec<String> = lists.iter().map(|s| s.to_string()).collect();
    pg.query(
        "SELECT id::text, description FROM todos WHERE list_id::text = ANY($1) ORDER BY 1",
        &[&lists],
    )
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn local_todos(c: &Client) -> Vec<(String, String)> {
    query(c, "SELECT id, description FROM todos ORDER BY id")
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["description"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn initial_sync_then_postgres_writes_arrive_atomically() {
    let (db, mut pg) = setup("cli_init");
    let relay = Relay::start(&db);
    let rt = runtime();
    let alice = start_client(&rt, &relay, "alice");
    let bob = start_client(&rt, &relay, "bob");
    wait_synced(&rt, &alice);
    wait_synced(&rt, &bob);

    // Each user has exactly their lists plus the shared one, and their todos.
    assert_eq!(
        local_todos(&alice),
        pg_todos(&mut pg, &[ALICE_LIST, SHARED])
    );
    assert_eq!(local_todos(&bob), pg_todos(&mut pg, &[BOB_LIST, SHARED]));
    assert_eq!(local_todos(&alice).len(), 60);
    assert_eq!(
        query(&alice, "SELECT id, owner_id, name FROM lists ORDER BY id"),
        [
            json!({"id": SHARED, "owner_id": null, "name": "shared"}),
            json!({"id": ALICE_LIST, "owner_id": "alice", "name": "alice list"}),
        ]
        .map(|v| v.as_object().unwrap().clone())
    );
    // Types survive: booleans as 0/1, timestamps as text.
    let completed = count(
        &alice,
        "SELECT count(*) AS n FROM todos WHERE completed = 1 AND typeof(created_at) = 'text'",
    );
    let pg_completed: i64 = pg
        .query_one(
            "SELECT count(*) FROM todos WHERE completed AND list_id::text IN ($1, $2)",
            &[&ALICE_LIST, &SHARED],
        )
        .unwrap()
        .get(0);
    assert_eq!(completed, pg_completed);

    // One transaction: insert into alice's list, update a shared todo, delete one of alice's.
    let victim: String = pg
        .query_one(
            "SELECT id::text FROM todos WHERE list_id::text = $1 ORDER BY id LIMIT 1",
            &[&ALICE_LIST],
        )
        .unwrap()
        .get(0);
    let shared_todo: String = pg
        .query_one(
            "SELECT id::text FROM todos WHERE list_id::text = $1 ORDER BY id LIMIT 1",
            &[&SHARED],
        )
        .unwrap()
        .get(0);
    let mut tx = pg.transaction().unwrap();
    tx.execute(
        "INSERT INTO todos(id, list_id, owner_id, description) VALUES ('00000000-0000-4000-8000-00000000f001', $1::text::uuid, 'alice', 'new from postgres')",
        &[&ALICE_LIST],
    )
    .unwrap();
    tx.execute(
        "UPDATE todos SET description = 'edited in postgres' WHERE id::text = $1",
        &[&shared_todo],
    )
    .unwrap();
    tx.execute("DELETE FROM todos WHERE id::text = $1", &[&victim])
        .unwrap();
    tx.commit().unwrap();

    // The client moves from one checkpoint to the next in one transaction: the
    // first time any of the three changes is visible, all three are.
    let probe = format!(
        "SELECT (SELECT count(*) FROM todos WHERE id = '00000000-0000-4000-8000-00000000f001') AS inserted,
                (SELECT count(*) FROM todos WHERE id = '{shared_todo}' AND description = 'edited in postgres') AS updated,
                (SELECT count(*) FROM todos WHERE id = '{victim}') AS still_there"
    );
    let rows = wait_rows(&rt, &alice, &probe, "alice to see the transaction", |r| {
        r[0]["inserted"] != 0 || r[0]["updated"] != 0 || r[0]["still_there"] != 1
    });
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"inserted": 1, "updated": 1, "still_there": 0}),
        "a transaction must arrive whole"
    );
    assert_eq!(
        local_todos(&alice),
        pg_todos(&mut pg, &[ALICE_LIST, SHARED])
    );

    // Bob sees the shared edit, never alice's private insert.
    wait_rows(
        &rt,
        &bob,
        &format!("SELECT description FROM todos WHERE id = '{shared_todo}'"),
        "bob to see the shared edit",
        |r| {
            r.first()
                .is_some_and(|r| r["description"] == "edited in postgres")
        },
    );
    assert_eq!(local_todos(&bob), pg_todos(&mut pg, &[BOB_LIST, SHARED]));

    // Membership follows the data: bob's list becomes alice's; its todos move.
    pg.execute(
        "UPDATE lists SET owner_id = 'alice' WHERE id::text = $1",
        &[&BOB_LIST],
    )
    .unwrap();
    wait_rows(
        &rt,
        &alice,
        &format!("SELECT count(*) AS n FROM todos WHERE list_id = '{BOB_LIST}'"),
        "alice to receive bob's former list",
        |r| r[0]["n"] == 30,
    );
    wait_rows(
        &rt,
        &bob,
        &format!("SELECT count(*) AS n FROM todos WHERE list_id = '{BOB_LIST}'"),
        "bob to lose his former list",
        |r| r[0]["n"] == 0,
    );
    assert_eq!(
        local_todos(&alice),
        pg_todos(&mut pg, &[ALICE_LIST, BOB_LIST, SHARED])
    );
    assert_eq!(local_todos(&bob), pg_todos(&mut pg, &[SHARED]));
    let status = alice.db.status().borrow().clone();
    assert!(
        status.connected && status.last_error.is_none(),
        "{status:?}"
    );
}

#[test]
fn local_writes_round_trip_through_crud_to_another_client() {
    let (db, mut pg) = setup("cli_crud");
    let relay = Relay::start_with(&db, |a| a.write_role = Some(WRITE_ROLE.to_string()));
    let rt = runtime();
    let alice = start_client(&rt, &relay, "alice");
    let bob = start_client(&rt, &relay, "bob");
    wait_synced(&rt, &alice);
    wait_synced(&rt, &bob);

    // A local write is visible at once, before any network round trip.
    let id = "00000000-0000-4000-8000-00000000c001";
    let before = alice.db.status().borrow().last_checkpoint.clone();
    let n = alice
        .db
        .execute(
            "INSERT INTO todos(id, list_id, owner_id, description, completed, created_at) VALUES (?1, ?2, 'alice', 'from alice', 0, '2024-05-01T10:00:00Z')",
            &[json!(id), json!(SHARED)],
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        query(
            &alice,
            &format!("SELECT description FROM todos WHERE id = '{id}'")
        ),
        [json!({"description": "from alice"})
            .as_object()
            .unwrap()
            .clone()]
    );

    // Uploaded, acknowledged by a checkpoint that includes it, still visible.
    let s = wait_status(&rt, &alice, "alice's upload round trip", |s| {
        s.upload_pending == 0 && !s.uploading && s.last_checkpoint != before
    });
    assert!(s.last_error.is_none(), "{s:?}");
    let row = pg
        .query_one(
            "SELECT owner_id, description, completed, list_id::text FROM todos WHERE id::text = $1",
            &[&id],
        )
        .expect("the write reached Postgres");
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, bool>(2),
            row.get::<_, String>(3)
        ),
        ("alice".into(), "from alice".into(), false, SHARED.into())
    );
    assert_eq!(
        count(
            &alice,
            &format!("SELECT count(*) AS n FROM todos WHERE id = '{id}'")
        ),
        1
    );
    assert_eq!(
        local_todos(&alice),
        pg_todos(&mut pg, &[ALICE_LIST, SHARED])
    );

    // Bob, connected all along, receives it.
    wait_rows(
        &rt,
        &bob,
        &format!("SELECT owner_id, description FROM todos WHERE id = '{id}'"),
        "bob to receive alice's write",
        |r| r.len() == 1,
    );

    // An update (PATCH) and then a delete travel the same way.
    alice
        .db
        .execute(
            "UPDATE todos SET completed = 1, description = 'done by alice' WHERE id = ?1",
            &[json!(id)],
        )
        .unwrap();
    wait_rows(
        &rt,
        &bob,
        &format!("SELECT completed, description FROM todos WHERE id = '{id}'"),
        "bob to receive alice's update",
        |r| {
            r.first()
                .is_some_and(|r| r["description"] == "done by alice")
        },
    );
    let (completed, description): (bool, String) = {
        let r = pg
            .query_one(
                "SELECT completed, description FROM todos WHERE id::text = $1",
                &[&id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((completed, description.as_str()), (true, "done by alice"));

    alice
        .db
        .execute("DELETE FROM todos WHERE id = ?1", &[json!(id)])
        .unwrap();
    assert_eq!(
        count(
            &alice,
            &format!("SELECT count(*) AS n FROM todos WHERE id = '{id}'")
        ),
        0,
        "a local delete is visible at once"
    );
    wait_rows(
        &rt,
        &bob,
        &format!("SELECT count(*) AS n FROM todos WHERE id = '{id}'"),
        "bob to see alice's delete",
        |r| r[0]["n"] == 0,
    );
    let left: i64 = pg
        .query_one("SELECT count(*) FROM todos WHERE id::text = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    wait_status(&rt, &alice, "alice's queue to drain", |s| {
        s.upload_pending == 0 && !s.uploading
    });
    assert_eq!(
        local_todos(&alice),
        pg_todos(&mut pg, &[ALICE_LIST, SHARED])
    );
    assert_eq!(local_todos(&bob), pg_todos(&mut pg, &[BOB_LIST, SHARED]));

    // A write RLS refuses (a todo in bob's list) is set aside, the local row is
    // reverted by the next checkpoint, and later writes keep flowing.
    let (bad, good) = (
        "00000000-0000-4000-8000-00000000c002",
        "00000000-0000-4000-8000-00000000c003",
    );
    let insert = "INSERT INTO todos(id, list_id, owner_id, description, completed, created_at) VALUES (?1, ?2, 'alice', ?3, 0, '2024-05-01T10:00:00Z')";
    alice
        .db
        .execute(insert, &[json!(bad), json!(BOB_LIST), json!("sneaky")])
        .unwrap();
    alice
        .db
        .execute(insert, &[json!(good), json!(SHARED), json!("fine")])
        .unwrap();
    let s = wait_status(&rt, &alice, "the refused write to be set aside", |s| {
        s.last_rejected.is_some() && s.upload_pending == 0 && !s.uploading
    });
    let why = s.last_rejected.unwrap();
    assert!(why.contains(bad) && why.contains("403"), "{why}");
    wait_rows(
        &rt,
        &bob,
        &format!("SELECT id FROM todos WHERE id IN ('{good}', '{bad}')"),
        "bob to receive the accepted write",
        |r| r.len() == 1 && r[0]["id"] == good,
    );
    wait_rows(
        &rt,
        &alice,
        &format!("SELECT count(*) AS n FROM todos WHERE id = '{bad}'"),
        "alice's refused row to be reverted",
        |r| r[0]["n"] == 0,
    );
    let in_pg: Vec<String> = pg
        .query(
            "SELECT id::text FROM todos WHERE id::text IN ($1, $2)",
            &[&bad, &good],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(in_pg, [good]);
    assert_eq!(
        count(&alice, "SELECT count(*) AS n FROM ps_crud_rejected"),
        1
    );
    assert_eq!(
        local_todos(&alice),
        pg_todos(&mut pg, &[ALICE_LIST, SHARED])
    );
}

#[test]
fn views_follow_the_rules_with_or_without_relay_schema() {
    let (db, _pg) = setup("cli_schema");
    let relay = Relay::start(&db);
    let rt = runtime();
    let c = start_client(&rt, &relay, "carol");
    wait_synced(&rt, &c);
    // Carol owns no list: she only has the shared bucket.
    assert_eq!(count(&c, "SELECT count(*) AS n FROM todos"), 10);
    let cols: Vec<String> = query(
        &c,
        "SELECT name FROM pragma_table_info('todos') ORDER BY name",
    )
    .into_iter()
    .map(|r| r["name"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(
        cols,
        [
            "completed",
            "created_at",
            "description",
            "id",
            "list_id",
            "owner_id"
        ]
    );
    let mode_fixed = c.db.with_store(|s| s.stored_schema()).unwrap().is_some();
    let served = relay.request("GET", "/schema", Some(&relay.token("carol", 60)), None);
    assert_eq!(
        mode_fixed,
        served.status == 200,
        "the client uses GET /schema exactly when the relay serves it ({})",
        served.status
    );
}
