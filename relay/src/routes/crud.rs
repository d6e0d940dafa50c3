//! `POST /crud`: applies a batch of client writes in ONE transaction as the
//! user. Enabled only when `OUTPOST_WRITE_ROLE` is set (501 otherwise).
//!
//! Body: PowerSync's upload batch, `{"batch": [{"op": "PUT"|"PATCH"|"DELETE",
//! "type": <table>, "id": <text>, "data": {column: value}}]}`
//! ([`outpost_protocol::http::CrudBatch`]). At most
//! [`Limits::max_crud_entries`](super::Limits) entries (1000, the client's
//! batch size) and `max_body_bytes`; beyond either: 413.
//!
//! The transaction: `SET LOCAL ROLE <write role>`, then
//! `set_config('request.jwt.claims', <all claims as JSON>, true)` and
//! `set_config('request.jwt.claim.sub', <sub>, true)` (PostgREST's names, so
//! policies written for PostgREST/Supabase work: `USING (owner_id =
//! current_setting('request.jwt.claim.sub', true))`), then
//! `outpost.apply_crud(entry)` for each entry in order (sql/extension/08_crud.sql). The
//! write role's grants and the tables' RLS policies decide what lands. Only
//! tables the active rules sync under their own name are writable.
//!
//! Conflicts, by default: the server applies entries in the order it
//! receives them and the last write wins — per row for PUT (an upsert of the
//! given columns), per column for PATCH (only the given columns change).
//! PATCH of a row that no longer exists and DELETE of a missing row are
//! no-ops, so re-uploading a batch whose response was lost is safe. An app
//! that needs more (merging, version checks, rejecting stale writes, writing
//! to other tables) registers a handler per table:
//! `SELECT outpost.set_write_handler('todos', 'app.todos_write')`, where
//! `app.todos_write(entry jsonb)` performs the write itself; a `RAISE
//! EXCEPTION` in it refuses the entry with its message.
//!
//! Responses: `{"data": {"applied": n}}` when everything committed. When an
//! entry is refused the whole batch rolls back and the answer names it:
//! `{"error": {"code", "status", "description": "entry 3 (todos id \"7\"):
//! <reason>", "entry": {"index", "op", "type", "id", "message"}}}` with status
//! 400 (malformed entry: unknown op, table or column, bad id or value), 403
//! (the role or a row-level security policy forbids it) or 422 (a write
//! handler or a constraint refused the data). Reasons are the extension's
//! own validation messages, a handler's message, or a fixed text; other
//! database errors are a 500 with no details (they go to the log).

use super::{authenticate, check_content_length, read_json, AppState, ResBody};
use crate::error::json_response;
use crate::store::{CrudOutcome, RejectKind};
use crate::Error;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use outpost_protocol::http::{CrudEntry, DataEnvelope};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The body before each entry is checked, so errors can name the entry.
#[derive(Deserialize)]
struct RawBatch {
    batch: Vec<Value>,
}

pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResBody>, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let claims = authenticate(&state, &req).await?;
    let Some(role) = state.write_role.clone() else {
        return Err(Error::NotImplemented(
            "/crud is disabled: OUTPOST_WRITE_ROLE is not set",
        ));
    };
    check_content_length(&req, state.limits.max_body_bytes)?;
    let body: RawBatch = read_json(
        req.into_body(),
        state.limits.max_body_bytes,
        state.limits.read_timeout,
    )
    .await?;
    if body.batch.len() > state.limits.max_crud_entries {
        return Err(Error::PayloadTooLarge);
    }
    for (i, v) in body.batch.iter().enumerate() {
        if let Err(e) = serde_json::from_value::<CrudEntry>(v.clone()) {
            return Err(Error::BadRequest(format!(
                "entry {i}{}: malformed: {e}",
                describe(v)
            )));
        }
    }
    if body.batch.is_empty() {
        return Ok(applied(0));
    }
    match state
        .store
        .apply_crud(&role, &claims.raw, &body.batch)
        .await?
    {
        CrudOutcome::Applied(n) => Ok(applied(n)),
        CrudOutcome::Rejected(r) => {
            let entry = body.batch.get(r.index).cloned().unwrap_or(Value::Null);
            let (status, code) = match r.kind {
                RejectKind::Invalid => (StatusCode::BAD_REQUEST, "OUTPOST_CRUD_INVALID"),
                RejectKind::Denied => (StatusCode::FORBIDDEN, "OUTPOST_CRUD_DENIED"),
                RejectKind::Refused => (StatusCode::UNPROCESSABLE_ENTITY, "OUTPOST_CRUD_REFUSED"),
            };
            tracing::debug!(
                sub = claims.sub,
                index = r.index,
                status = status.as_u16(),
                message = r.message,
                "crud entry refused"
            );
            Ok(json_response(
                status,
                &json!({"error": {
                    "code": code,
                    "status": status.as_u16(),
                    "description": format!("entry {}{}: {}", r.index, describe(&entry), r.message),
                    "entry": {
                        "index": r.index,
                        "op": entry.get("op"),
                        "type": entry.get("type"),
                        "id": entry.get("id"),
                        "message": r.message,
                    },
                }}),
            ))
        }
    }
}

fn applied(n: usize) -> Response<ResBody> {
    super::ok_json(&DataEnvelope {
        data: json!({ "applied": n }),
    })
}

/// ` (todos id "7")`, from whatever of type and id the entry has.
fn describe(entry: &Value) -> String {
    let t = entry.get("type").and_then(Value::as_str);
    let id = entry.get("id").map(|v| v.to_string());
    match (t, id) {
        (Some(t), Some(id)) => format!(" ({t} id {id})"),
        (Some(t), None) => format!(" ({t})"),
        (None, Some(id)) => format!(" (id {id})"),
        (None, None) => String::new(),
    }
}
