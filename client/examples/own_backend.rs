//! An app that syncs down from an Outpost relay but uploads its local writes
//! through **its own backend API**, not through the relay's `POST /crud` (the
//! relay runs without `OUTPOST_WRITE_ROLE`).
//!
//! The pieces:
//! - [`Connector::fetch_credentials`] gives the relay endpoint and a token for
//!   the sync stream (a real app asks its auth service for a fresh token here;
//!   it is called before every connection attempt).
//! - [`Connector::upload_data`] is overridden: it hands the upload queue to
//!   [`Database::upload_batches`], which calls our sender with one
//!   [`CrudBatch`] at a time (whole local transactions, oldest first) and
//!   removes a batch from the queue only once the sender returns `Ok`.
//! - After an upload, the sync loop itself asks the relay for a write
//!   checkpoint, so the client keeps showing its local writes until a
//!   checkpoint that includes them arrives. The backend must therefore have
//!   **committed** the writes to Postgres before it answers.
//!
//! What the backend receives is the same JSON the relay's `/crud` takes:
//! `{"batch": [{"op": "PUT"|"PATCH"|"DELETE", "type": "todos", "id": "…",
//! "data": {…}, "tx_id": 7}, …]}`. `PUT` carries the whole row, `PATCH` only
//! the columns the local write changed, `DELETE` no data. Apply a batch in
//! one transaction, as the user (check access: the batch comes from a client).
//!
//! Failures: a sender error leaves the batch queued and the sync loop retries it
//! with backoff (right for network errors, 5xx, an expired token). A write the
//! backend refuses for good must not be retried forever, since it would block
//! every later write; here the backend answers 422 for those and the sender
//! drops the batch (returns `Ok`). The local rows it touched were marked when
//! written, so the next applied checkpoint restores the server's version.
//! (The relay's own `/crud` upload instead moves just the refused local
//! transaction to `ps_crud_rejected` and reports it in `SyncStatus::last_rejected`.)
//!
//! Run (the backend URL is yours; `POST <backend>/upload` must apply the batch):
//!
//! ```sh
//! OUTPOST_ENDPOINT=http://127.0.0.1:8080 OUTPOST_TOKEN=$(outpost-relay token --sub alice) \
//! APP_BACKEND=http://127.0.0.1:3000 APP_TOKEN=… \
//!   cargo run -p outpost-client --example own_backend -- app.db
//! ```

use hyper::Method;
use outpost_client::net::connector::open_with_relay_schema;
use outpost_client::{
    Connector, Credentials, Database, Error, Http, Result, SyncClient, SyncOptions,
};
use outpost_protocol::http::CrudBatch;
use std::sync::Arc;

/// Syncs from the relay; uploads to the app's backend.
struct AppConnector {
    /// The relay (sync stream, write checkpoints).
    relay: Credentials,
    /// The app's backend API and the user's session token for it.
    backend: Credentials,
    /// Any HTTP client will do; this is the crate's small JSON client.
    http: Http,
}

impl Connector for AppConnector {
    async fn fetch_credentials(&self) -> Result<Credentials> {
        Ok(self.relay.clone())
    }

    async fn upload_data(&self, db: &Database, _relay: &Http) -> Result<()> {
        db.upload_batches(|batch: CrudBatch| async move {
            let body = serde_json::to_value(&batch)?;
            match self
                .http
                .json(Method::POST, &self.backend, "/upload", Some(&body))
                .await
            {
                Ok(_) => Ok(()),
                // Refused for good by the backend: drop it (see the module docs).
                Err(Error::Http {
                    status: 422,
                    body: reason,
                    ..
                }) => {
                    eprintln!("backend refused {} write(s): {reason}", batch.batch.len());
                    Ok(())
                }
                // Anything else: keep it queued; the sync loop retries with backoff.
                Err(e) => Err(e),
            }
        })
        .await
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("set {name}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "app.db".into());
    let relay = Credentials {
        endpoint: env("OUTPOST_ENDPOINT"),
        token: env("OUTPOST_TOKEN"),
    };
    let backend = Credentials {
        endpoint: env("APP_BACKEND"),
        token: env("APP_TOKEN"),
    };
    // The app schema (views over the synced rows) comes from the relay's rules.
    let db = open_with_relay_schema(&path, &Http::new(), &relay).await?;

    // Print the todos whenever they change (a live query).
    let mut todos = db.watch("SELECT count(*) AS n FROM todos", &[])?;
    tokio::spawn(async move {
        while let Ok(rows) = todos.next().await {
            println!("todos: {}", rows[0]["n"]);
        }
    });

    // Report sync status changes. Local writes (`db.execute("UPDATE todos …", …)`)
    // are visible at once, queued, and uploaded through `AppConnector::upload_data`.
    let mut status = db.status();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let s = status.borrow().clone();
            println!(
                "connected {} pending {} checkpoint {:?}",
                s.connected, s.upload_pending, s.last_checkpoint
            );
        }
    });

    let connector = AppConnector {
        relay,
        backend,
        http: Http::new(),
    };
    SyncClient::new(db, Arc::new(connector))
        .run(SyncOptions::default())
        .await
        .map(|_| ())
}
