//! Write checkpoints: a later checkpoint on the user's stream carries the
//! returned id in `write_checkpoint` once everything committed before the
//! request is in it.
//!
//! - `GET /write-checkpoint2.json[?client_id=…]`: the next id of the user and
//!   client (`client_id` is optional, as in PowerSync; absent means the
//!   empty client id, which is also what a stream without one reads).
//! - `POST /sync/checkpoint-request` with `{"client_id", "checkpoint_request_id"}`
//!   (PowerSync's "requests" mode): the client chooses the id, which only
//!   grows; the answer `{"data":{"checkpoint_request_id"}}` is the id stored
//!   afterwards, larger than the one sent when that one was stale.

use super::{authenticate, check_content_length, ok_json, read_json, AppState, ResBody};
use crate::Error;
use bytes::Bytes;
use http::{Request, Response};
use outpost_protocol::http::{
    CheckpointRequest, CheckpointRequestAck, DataEnvelope, WriteCheckpoint,
};
use outpost_protocol::OpId;
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
        .unwrap_or_default();
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

pub async fn checkpoint_request<B>(
    state: Arc<AppState>,
    req: Request<B>,
) -> Result<Response<ResBody>, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let claims = authenticate(&state, &req).await?;
    check_content_length(&req, state.limits.max_body_bytes)?;
    let body: CheckpointRequest = read_json(
        req.into_body(),
        state.limits.max_body_bytes,
        state.limits.read_timeout,
    )
    .await?;
    let id = i64::try_from(body.checkpoint_request_id.0)
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "checkpoint_request_id must be between 1 and {}",
                i64::MAX
            ))
        })?;
    let stored = state
        .store
        .request_checkpoint(&claims.sub, body.client_id.as_deref().unwrap_or(""), id)
        .await?;
    Ok(ok_json(&DataEnvelope {
        data: CheckpointRequestAck {
            checkpoint_request_id: OpId(stored),
        },
    }))
}
