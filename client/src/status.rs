//! [`SyncStatus`]: what the sync driver and local writes report to the app.

use crate::sync::Progress;
use serde::Serialize;

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
}
