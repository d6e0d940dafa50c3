//! The sync driver's Sync Streams steps: the request's `streams` now (and
//! when it next changes by itself, as a subscription expires), what a new
//! checkpoint says per subscription, and which subscriptions an applied
//! checkpoint synced. The rules are in [`crate::streams`].

use crate::db::Database;
use crate::error::Result;
use crate::streams::{mark_synced, server_view, streams_request};
use crate::sync::SyncState;
use outpost_protocol::{Checkpoint, StreamsRequest};
use std::time::Duration;

/// The `streams` a request carries now, and how long until an unheld
/// subscription expires (the request must then be rebuilt).
pub(super) async fn current(
    db: &Database,
    include_defaults: Option<bool>,
) -> Result<(Option<StreamsRequest>, Option<Duration>)> {
    let held = db.held_streams();
    let now = db.now_ms();
    let (subs, rows) = db
        .with_store_blocking(move |s| {
            Ok((s.requested_streams(&held, now)?, s.stream_subscriptions()?))
        })
        .await?;
    let next = crate::streams::next_expiry(&rows, &db.held_streams(), now)
        .map(|t| Duration::from_millis((t - now).max(0) as u64));
    db.refresh_stream_status_blocking().await?;
    Ok((streams_request(subs, include_defaults), next))
}

/// Records what checkpoint `cp` (the answer to `request`) says about each
/// subscription and publishes the per-stream status.
pub(super) async fn resolve(
    db: &Database,
    request: Option<&StreamsRequest>,
    cp: &Checkpoint,
) -> Result<()> {
    let (view, listed) = server_view(request, cp);
    db.set_stream_view(view.clone());
    db.with_store_blocking(move |s| s.reconcile_streams(&view, &listed))
        .await?;
    db.refresh_stream_status_blocking().await
}

/// A checkpoint (of `priority`, or complete) was applied: the subscriptions
/// it completed have synced.
pub(super) async fn applied(db: &Database, priority: Option<i32>) -> Result<()> {
    let view = db.stream_view();
    if view.is_empty() {
        return Ok(());
    }
    let now = db.now_ms();
    db.with_store_blocking(move |s| {
        let rows = s.stream_subscriptions()?;
        s.mark_streams_synced(&mark_synced(&rows, &view, priority), now)
    })
    .await?;
    db.refresh_stream_status_blocking().await
}

/// Publishes each subscription's download progress (none unless a
/// checkpoint is downloading, as PowerSync's SDKs report it).
pub(super) fn progress(db: &Database, machine: &SyncState, downloading: bool) {
    let per_stream = if downloading {
        machine
            .stream_progress()
            .map(|(k, p)| (k.clone(), p))
            .collect()
    } else {
        Default::default()
    };
    db.set_stream_progress(per_stream);
}

/// Sleeps until `t`, or forever.
pub(super) async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
