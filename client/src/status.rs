//! [`SyncStatus`]: what the sync driver and local writes report to the app.

use crate::streams::{StreamKey, StreamStatus};
use crate::sync::Progress;
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncStatus {
    pub connected: bool,
    /// Between a checkpoint and its application.
    pub downloading: bool,
    pub progress: Option<Progress>,
    pub last_checkpoint: Option<String>,
    pub last_synced_at: Option<String>,
    pub upload_pending: u64,
    pub uploading: bool,
    pub last_error: Option<String>,
    /// The last local write the server refused for good (moved to `ps_crud_rejected`).
    pub last_rejected: Option<String>,
    /// Sync Streams: every subscription of this database and every default
    /// stream the last checkpoint listed, with what that checkpoint said.
    pub streams: Vec<StreamStatus>,
}

impl SyncStatus {
    /// The status of one subscription (`parameters` null for none).
    pub fn for_stream(&self, name: &str, parameters: &Value) -> Option<&StreamStatus> {
        let key = StreamKey::new(name, Some(parameters));
        self.streams.iter().find(|s| s.is(&key))
    }
}
