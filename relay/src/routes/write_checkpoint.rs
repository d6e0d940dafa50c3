//! `GET /write-checkpoint2.json?client_id=…`: a new write checkpoint for the
//! user and client; a later checkpoint on their stream carries it.

use super::{authenticate, ok_json, AppState, ResBody};
use crate::Error;
use http::{Request, Response};
use outpost_protocol::http::{DataEnvelope, WriteCheckpoint};
use std::sync::Arc;

pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResBody>, Error> {
    let claims = authenticate(&state, &req).await?;
    let client_id = req
        .uri()
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "client_id")
                .map(|(_, v)| v.into_owned())
        })
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::BadRequest("client_id query parameter is required".into()))?;
    let n = state
        .store
        .request_write_checkpoint(&claims.sub, &client_id)
        .await?;
    Ok(ok_json(&DataEnvelope {
        data: WriteCheckpoint {
            write_checkpoint: n,
        },
    }))
}
