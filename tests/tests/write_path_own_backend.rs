//! The write path end to end, beyond the happy round trip of `client_e2e.rs`
//! (the harness is in `write_path_support/`):
//! an app uploading through its own backend (`Database::upload_batches`, the
//! pattern of `client/examples/own_backend.rs`) with `/crud` disabled.

mod write_path_support;

use outpost_client::{Connector, Credentials, Database, Http};
use outpost_protocol::http::{CrudBatch, CrudOp};
use outpost_tests::client::runtime;
use outpost_tests::client::todo_app::{ALICE_LIST, SHARED};
use outpost_tests::relay::Relay;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use write_path_support::*;

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
