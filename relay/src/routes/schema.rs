//! `GET /schema`: the client schema derived from the active rules, as
//! `outpost.client_schema()` returns it: `{"tables": [{"name", "columns":
//! [{"name", "type": "text"|"integer"|"real"}]}]}` (`id` implied).
//!
//! The object is returned as is, not wrapped in `{"data": …}`: PowerSync's
//! clients never fetch a schema from the service (apps declare it in code),
//! so there is no wire convention to follow, and this is exactly the JSON
//! shape PowerSync's `Schema` serializes to, which `outpost_client` parses.
//! Authenticated like the other endpoints (the schema reveals the rules).

use super::{authenticate, ok_json, AppState, ResBody};
use crate::Error;
use http::{Request, Response};
use std::sync::Arc;

pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResBody>, Error> {
    authenticate(&state, &req).await?;
    let schema = state.store.client_schema().await?;
    Ok(ok_json(&schema))
}
