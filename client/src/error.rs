//! The library's one error type.

use outpost_protocol::ProtocolError;

/// Everything the client library can fail with. Each variant says which boundary failed,
/// so callers (and the CLI) can tell a bad stream from a bad database from a bad server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("corrupt stream line: {0}")]
    Line(#[from] ProtocolError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("stream line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("checksum mismatch in bucket(s) {0:?}")]
    ChecksumMismatch(Vec<String>),
    #[error("HTTP {status} from {url}: {body}")]
    Http {
        status: u16,
        url: String,
        body: String,
    },
    #[error("transport: {0}")]
    Transport(String),
    #[error("schema: {0}")]
    Schema(String),
    /// A Sync Streams subscription the server could not resolve (unknown
    /// stream, missing or bad parameter), or a bad `subscribe` option.
    #[error("stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("database schema version {found} is newer than this client supports ({supported})")]
    TooNew { found: i64, supported: i64 },
}

impl Error {
    /// A 401 means the token is bad or expired: fetch new credentials before retrying.
    pub fn is_auth(&self) -> bool {
        matches!(self, Error::Http { status: 401, .. })
    }

    /// The local database could not grow (disk full, or a size limit): the write
    /// that hit it was rolled back whole, so the database is still at its last
    /// applied checkpoint and the upload queue is intact. Syncing resumes once
    /// there is room.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
