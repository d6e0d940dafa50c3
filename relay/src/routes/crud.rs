//! `POST /crud`: not implemented yet.

use super::{authenticate, AppState, ResBody};
use crate::Error;
use http::{Request, Response};
use std::sync::Arc;

pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResBody>, Error> {
    authenticate(&state, &req)?;
    if state.write_role.is_none() {
        return Err(Error::NotImplemented(
            "/crud is disabled: OUTPOST_WRITE_ROLE is not set",
        ));
    }
    Err(Error::NotImplemented("/crud is not available yet"))
}
