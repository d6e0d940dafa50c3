//! The relay's one error type. Each variant maps to an HTTP status; the body
//! a client sees never carries database or internal details (those go to the
//! log), because error text from Postgres can reveal schema and rules.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use outpost_protocol::http::ErrorBody;
use std::convert::Infallible;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request body not received in time")]
    RequestTimeout,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Logged with Postgres' own message (tokio_postgres' Display says only
    /// "db error"); never shown to clients.
    #[error("database error: {}", db_detail(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool error: {}", error_chain(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("unexpected database response: {0}")]
    Decode(String),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Db(_) | Error::Pool(_) | Error::Decode(_) | Error::Config(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// `PSYNC_S2101` is what PowerSync clients look for to drop their token;
    /// the other codes are ours.
    fn code(&self) -> &'static str {
        match self {
            Error::Unauthorized(_) => "PSYNC_S2101",
            Error::BadRequest(_) => "OUTPOST_BAD_REQUEST",
            Error::PayloadTooLarge => "OUTPOST_PAYLOAD_TOO_LARGE",
            Error::RequestTimeout => "OUTPOST_REQUEST_TIMEOUT",
            Error::NotFound => "OUTPOST_NOT_FOUND",
            Error::MethodNotAllowed => "OUTPOST_METHOD_NOT_ALLOWED",
            Error::NotImplemented(_) => "OUTPOST_NOT_IMPLEMENTED",
            Error::Forbidden(_) => "OUTPOST_FORBIDDEN",
            Error::Unavailable(_) => "OUTPOST_UNAVAILABLE",
            Error::Db(_) | Error::Pool(_) | Error::Decode(_) | Error::Config(_) => {
                "OUTPOST_INTERNAL"
            }
        }
    }

    /// What the client may read. Internal errors get a fixed text.
    fn public_description(&self) -> String {
        match self {
            Error::Unauthorized(m) | Error::BadRequest(m) | Error::Forbidden(m) => m.clone(),
            Error::Db(db) => match db.as_db_error() {
                // A write rejected by a constraint or an RLS policy is the
                // client's to fix; it gets the SQLSTATE, not the message.
                Some(e) if is_client_sqlstate(e.code().code()) => {
                    format!("write rejected (SQLSTATE {})", e.code().code())
                }
                _ => "internal error".into(),
            },
            Error::Pool(_) | Error::Decode(_) | Error::Config(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    pub fn into_response(self) -> Response<BoxBody<Bytes, Infallible>> {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let body = ErrorBody::new(self.code(), status.as_u16(), self.public_description());
        json_response(status, &body)
    }
}

/// Integrity violations (class 23) and insufficient privilege (42501, what
/// RLS raises) come from the client's data, not from a fault of ours.
fn is_client_sqlstate(code: &str) -> bool {
    code.starts_with("23") || code == "42501"
}

pub fn json_response<T: serde::Serialize>(
    status: StatusCode,
    value: &T,
) -> Response<BoxBody<Bytes, Infallible>> {
    let body = serde_json::to_vec(value).expect("response bodies always serialize");
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

/// Postgres' message, detail and context for logs.
fn db_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(w) = db.where_() {
                s.push_str(&format!("; where: {w}"));
            }
            s
        }
        // Connection and TLS errors say what failed only in their causes.
        None => error_chain(e),
    }
}

/// An error and its causes, `: `-separated. tokio-postgres and hyper put
/// what went wrong (a refused certificate, a refused connection) only there.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
