//! The app's side of syncing: where to connect with which token, and how local
//! writes reach the backend.

use crate::db::Database;
use crate::error::{Error, Result};
use crate::schema::Schema;
use crate::transport::{Credentials, Http};
use hyper::Method;
use outpost_protocol::http::{CrudBatch, DataEnvelope, WriteCheckpoint};
use std::future::Future;

/// Write checkpoint target meaning "a local write is pending, none requested yet".
pub const PENDING_TARGET: &str = "9223372036854775807";

pub trait Connector: Send + Sync + 'static {
    /// The endpoint and a fresh token. Called before every connection attempt and
    /// when the server says the token expires.
    fn fetch_credentials(&self) -> impl Future<Output = Result<Credentials>> + Send;

    /// Uploads the queued local writes. The default sends them to the relay's
    /// `POST /crud`; apps with their own backend API override it and call
    /// [`Database::upload_batches`] with their own sender.
    fn upload_data(&self, db: &Database) -> impl Future<Output = Result<()>> + Send {
        async move {
            let creds = self.fetch_credentials().await?;
            upload_to_relay(db, &Http::new(), &creds).await
        }
    }
}

/// A connector with fixed credentials (CLI, tests).
#[derive(Clone, Debug)]
pub struct StaticConnector(pub Credentials);

impl Connector for StaticConnector {
    async fn fetch_credentials(&self) -> Result<Credentials> {
        Ok(self.0.clone())
    }
}

/// Entries per `/crud` request (whole local transactions are never split).
const BATCH: usize = 1000;

/// The default upload: every queued transaction to `POST /crud`, then a write
/// checkpoint request so the client waits for the server to reflect the writes.
///
/// A batch the relay refuses for good (400 malformed, 403 forbidden by the write
/// role or RLS, 422 refused by a constraint or write handler) is rolled back by the
/// relay whole; the local transaction holding the refused entry (the one the answer
/// names, else the batch's first) moves to `ps_crud_rejected`, the rest is retried,
/// and [`SyncStatus::last_rejected`](crate::SyncStatus) says why. The next
/// checkpoint restores the server's version of the rows it touched. A batch too
/// large for the relay (413) is sent again in smaller batches; a single local
/// transaction that is too large on its own is refused for good the same way.
/// Anything else (network, 401, 5xx) fails the upload, which is retried with
/// backoff.
pub async fn upload_to_relay(db: &Database, http: &Http, creds: &Credentials) -> Result<()> {
    let mut limit = BATCH;
    loop {
        let items = db.with_store(|s| s.crud_batch(limit))?;
        let Some(last) = items.last().map(|i| i.id) else {
            break;
        };
        let batch = CrudBatch {
            batch: items.iter().map(|i| i.entry.clone()).collect(),
        };
        let sent = http
            .json(
                Method::POST,
                creds,
                "/crud",
                Some(&serde_json::to_value(&batch)?),
            )
            .await;
        let several_txs = items.iter().any(|i| i.entry.tx_id != items[0].entry.tx_id);
        match sent {
            Ok(_) => db.with_store(|s| s.complete_crud(last))?,
            Err(Error::Http { status: 413, .. }) if several_txs => {
                limit = (items.len() / 2).max(1);
            }
            Err(Error::Http {
                status: status @ (400 | 403 | 413 | 422),
                body,
                ..
            }) => {
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let index = answer["error"]["entry"]["index"]
                    .as_u64()
                    .map(|i| i as usize)
                    .filter(|&i| i < items.len())
                    .unwrap_or(0);
                let refused = &items[index];
                let reason = answer["error"]["description"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or(body);
                db.with_store(|s| s.reject_crud(refused.id, refused.entry.tx_id, status, &reason))?;
                db.status_sender().send_modify(|s| {
                    s.last_rejected = Some(format!(
                        "{} {} {:?}: HTTP {status}: {reason}",
                        serde_json::to_value(refused.entry.op)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        refused.entry.table,
                        refused.entry.id
                    ))
                });
            }
            Err(e) => return Err(e),
        }
    }
    request_write_checkpoint(db, http, creds).await
}

/// If a write is pending a write checkpoint (the queue drained since the last
/// request), asks the relay for one and stores it as the apply gate's target.
pub async fn request_write_checkpoint(
    db: &Database,
    http: &Http,
    creds: &Credentials,
) -> Result<()> {
    let (pending, client_id) = db.with_store(|s| Ok((s.kv("target_op")?, s.client_id()?)))?;
    if pending.as_deref() != Some(PENDING_TARGET) {
        return Ok(());
    }
    let path = format!(
        "/write-checkpoint2.json?client_id={}",
        urlencode(&client_id)
    );
    let v = http.json(Method::GET, creds, &path, None).await?;
    let wc: DataEnvelope<WriteCheckpoint> = serde_json::from_value(v)?;
    db.with_store(|s| s.set_write_target(wc.data.write_checkpoint))?;
    Ok(())
}

impl Database {
    /// Sends the upload queue batch by batch through `send`, removing each batch
    /// once `send` succeeds. A failed batch stays queued, in order.
    pub async fn upload_batches<F, Fut>(&self, mut send: F) -> Result<()>
    where
        F: FnMut(CrudBatch) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        loop {
            let items = self.with_store(|s| s.crud_batch(BATCH))?;
            let Some(last) = items.last().map(|i| i.id) else {
                return Ok(());
            };
            send(CrudBatch {
                batch: items.into_iter().map(|i| i.entry).collect(),
            })
            .await?;
            self.with_store(|s| s.complete_crud(last))?;
        }
    }
}

/// The app schema the relay derives from its sync rules (`GET /schema`), or `None`
/// when the relay does not serve one (404, 405, 501). Accepts the schema JSON bare
/// or wrapped as `{"data": …}`.
pub async fn fetch_relay_schema(http: &Http, creds: &Credentials) -> Result<Option<Schema>> {
    let v = match http.json(Method::GET, creds, "/schema", None).await {
        Ok(v) => v,
        Err(Error::Http {
            status: 404 | 405 | 501,
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let v = match v {
        serde_json::Value::Object(mut m) if !m.contains_key("tables") && m.contains_key("data") => {
            m.remove("data").unwrap_or_default()
        }
        v => v,
    };
    let schema: Schema = serde_json::from_value(v)
        .map_err(|e| Error::Schema(format!("GET /schema: not a schema: {e}")))?;
    schema.validate()?;
    Ok(Some(schema))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
