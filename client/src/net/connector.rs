//! The app's side of syncing: where to connect with which token, and how local
//! writes reach the backend; the relay's `/crud`, write-checkpoint and `/schema`
//! calls.

use super::transport::{Credentials, Http};
use crate::db::{Database, UPLOAD_BATCH};
use crate::error::{Error, Result};
use crate::schema::Schema;
use crate::store::SchemaMode;
use hyper::Method;
use outpost_protocol::http::{CrudBatch, DataEnvelope, WriteCheckpoint};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::future::Future;
use std::path::Path;

/// Write checkpoint target meaning "a local write is pending, none requested yet".
pub const PENDING_TARGET: &str = "9223372036854775807";

pub trait Connector: Send + Sync + 'static {
    /// The endpoint and a fresh token. Called before every connection attempt and
    /// when the server says the token expires.
    fn fetch_credentials(&self) -> impl Future<Output = Result<Credentials>> + Send;

    /// Uploads the queued local writes. The default sends them to the relay's
    /// `POST /crud` with `http` (the sync client's transport); apps with their own
    /// backend API override it and call [`Database::upload_batches`] with their
    /// own sender.
    fn upload_data(&self, db: &Database, http: &Http) -> impl Future<Output = Result<()>> + Send {
        async move {
            let creds = self.fetch_credentials().await?;
            upload_to_relay(db, http, &creds).await
        }
    }
}

/// Escaped in a query value: everything but RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A connector with fixed credentials (CLI, tests).
#[derive(Clone, Debug)]
pub struct StaticConnector(pub Credentials);

impl Connector for StaticConnector {
    async fn fetch_credentials(&self) -> Result<Credentials> {
        Ok(self.0.clone())
    }
}

/// The default upload: every queued transaction to `POST /crud`, then a write
/// checkpoint request so the client waits for the server to reflect the writes.
///
/// A batch the relay refuses for good (400 malformed, 403 forbidden by the write
/// role or RLS, 422 refused by a constraint or write handler) is rolled back by the
/// relay whole. Only the relay's own structured answer counts as that
/// ([`relay_rejection`]): the same statuses from anything else on the way (a
/// proxy's or firewall's HTML 403) fail the upload, which keeps the queue and is
/// retried with backoff. On a relay's refusal, the local transaction holding the refused entry (the one the answer
/// names, else the batch's first) moves to `ps_crud_rejected`, the rest is retried,
/// and [`SyncStatus::last_rejected`](crate::SyncStatus) says why. The next
/// checkpoint restores the server's version of the rows it touched. A batch too
/// large for the relay (413) is sent again in smaller batches; a single local
/// transaction that is too large on its own is refused for good the same way.
/// Anything else (network, 401, 5xx) fails the upload, which is retried with
/// backoff.
pub async fn upload_to_relay(db: &Database, http: &Http, creds: &Credentials) -> Result<()> {
    let mut limit = UPLOAD_BATCH;
    loop {
        let items = db.with_store_blocking(move |s| s.crud_batch(limit)).await?;
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
            Ok(_) => {
                db.with_store_blocking(move |s| s.complete_crud(last))
                    .await?
            }
            // Smaller batches are always safe to try, whoever said "too large".
            Err(Error::Http { status: 413, .. }) if several_txs => {
                limit = (items.len() / 2).max(1);
            }
            Err(Error::Http { status, body, url }) => {
                let Some(answer) = relay_rejection(status, &body) else {
                    return Err(Error::Http { status, body, url });
                };
                let index = answer["entry"]["index"]
                    .as_u64()
                    .map(|i| i as usize)
                    .filter(|&i| i < items.len())
                    .unwrap_or(0);
                let refused = &items[index];
                let reason = answer["description"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or(body);
                let (id, tx_id, why) = (refused.id, refused.entry.tx_id, reason.clone());
                db.with_store_blocking(move |s| s.reject_crud(id, tx_id, status, &why))
                    .await?;
                db.set_status(|s| {
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

/// The relay's own refusal of a `/crud` batch, or `None` for any other answer.
///
/// Permanent means "never retry": only a 400/403/413/422 whose body is the
/// relay's error object (`{"error": {"code": "OUTPOST_…", "status": <the same
/// status>, …}}`) qualifies. Returns that `error` object.
pub fn relay_rejection(status: u16, body: &str) -> Option<serde_json::Value> {
    if !matches!(status, 400 | 403 | 413 | 422) {
        return None;
    }
    let mut answer: serde_json::Value = serde_json::from_str(body).ok()?;
    let error = answer.get_mut("error")?.take();
    let ours = error["code"]
        .as_str()
        .is_some_and(|c| c.starts_with("OUTPOST_"))
        && error["status"].as_u64() == Some(u64::from(status));
    ours.then_some(error)
}

/// If a write is pending a write checkpoint (the queue drained since the last
/// request), asks the relay for one and stores it as the apply gate's target.
pub async fn request_write_checkpoint(
    db: &Database,
    http: &Http,
    creds: &Credentials,
) -> Result<()> {
    let (pending, client_id) = db
        .with_store_blocking(|s| Ok((s.kv("target_op")?, s.client_id()?)))
        .await?;
    if pending.as_deref() != Some(PENDING_TARGET) {
        return Ok(());
    }
    let path = format!(
        "/write-checkpoint2.json?client_id={}",
        utf8_percent_encode(&client_id, QUERY_VALUE)
    );
    let v = http.json(Method::GET, creds, &path, None).await?;
    let wc: DataEnvelope<WriteCheckpoint> = serde_json::from_value(v)?;
    let op = wc.data.write_checkpoint;
    db.with_store_blocking(move |s| s.set_write_target(op))
        .await?;
    Ok(())
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

/// Opens `path` with the app schema the relay serves (`GET /schema`, derived from
/// its sync rules); when the relay has none (404/501), views are inferred from the
/// synced rows ([`SchemaMode::Inferred`]). Other failures are returned.
pub async fn open_with_relay_schema(
    path: impl AsRef<Path>,
    http: &Http,
    creds: &Credentials,
) -> Result<Database> {
    let mode = match fetch_relay_schema(http, creds).await? {
        Some(schema) => SchemaMode::Fixed(schema),
        None => SchemaMode::Inferred,
    };
    Database::open(path, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_relays_own_refusal_is_permanent() {
        let relay = |code: &str, status: u16| {
            serde_json::json!({"error": {"code": code, "status": status,
                "description": "entry 0: no", "entry": {"index": 0}}})
            .to_string()
        };
        for status in [400, 403, 413, 422] {
            let e = relay_rejection(status, &relay("OUTPOST_CRUD_DENIED", status))
                .unwrap_or_else(|| panic!("{status}"));
            assert_eq!(e["entry"]["index"], 0);
        }
        let waf = "<html><body><h1>403 Forbidden</h1></body></html>";
        for (status, body) in [
            (403, waf.to_string()),
            (403, String::new()),
            (403, r#"{"error": "forbidden"}"#.to_string()),
            (403, r#"{"message": "Forbidden"}"#.to_string()),
            // Another service's JSON error, or a status that disagrees with the body.
            (403, relay("WAF_BLOCKED", 403)),
            (422, relay("OUTPOST_CRUD_REFUSED", 403)),
            (500, relay("OUTPOST_INTERNAL", 500)),
            (401, relay("OUTPOST_UNAUTHORIZED", 401)),
        ] {
            assert!(relay_rejection(status, &body).is_none(), "{status} {body}");
        }
    }

    #[test]
    fn client_id_is_percent_encoded() {
        assert_eq!(
            utf8_percent_encode("a b/ü-_.~&=", QUERY_VALUE).to_string(),
            "a%20b%2F%C3%BC-_.~%26%3D"
        );
    }
}
