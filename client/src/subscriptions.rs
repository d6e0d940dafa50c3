//! Sync Streams on the local [`Database`]:
//! `db.sync_stream("list_todos", json!({"list_id": "a"})).subscribe()?` stores
//! the subscription (it survives restarts) and returns a handle; while any
//! handle lives the subscription is held (requested, never expiring). When the
//! last handle is dropped or [`SyncStreamSubscription::unsubscribe`]d, its TTL
//! starts: the data stays until it expires, then the sync driver drops it from
//! the request and the next checkpoint removes its buckets' rows. A running
//! [`crate::SyncClient`] reconnects with the new request whenever the set of
//! requested subscriptions changes. The rules are in [`crate::streams`].

use crate::db::Database;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::streams::{statuses, ServerInfo, StreamKey, StreamStatus, SubscribeOptions};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What every clone of a [`Database`] shares about subscriptions.
pub(crate) struct StreamsState {
    /// Live handles per subscription.
    held: Mutex<BTreeMap<StreamKey, usize>>,
    /// Woken when the held set or the stored subscriptions change.
    changed: tokio::sync::Notify,
    /// What the last checkpoint said per subscription.
    view: Mutex<BTreeMap<StreamKey, ServerInfo>>,
    /// Download progress per subscription while a checkpoint downloads.
    progress: Mutex<BTreeMap<StreamKey, Progress>>,
    clock: Mutex<Clock>,
}

impl Default for StreamsState {
    fn default() -> StreamsState {
        StreamsState {
            held: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::Notify::new(),
            view: Mutex::new(BTreeMap::new()),
            progress: Mutex::new(BTreeMap::new()),
            clock: Mutex::new(Arc::new(system_now_ms)),
        }
    }
}

fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Database {
    /// A Sync Stream with these parameters (a JSON object, or null for none);
    /// see [`SyncStream::subscribe`].
    pub fn sync_stream(&self, name: &str, parameters: Value) -> SyncStream {
        SyncStream {
            db: self.clone(),
            key: StreamKey::new(name, Some(&parameters)),
        }
    }

    /// Replaces the clock (ms since the Unix epoch) that TTLs are measured
    /// with; for tests and apps with a clock of their own.
    pub fn set_clock(&self, clock: impl Fn() -> i64 + Send + Sync + 'static) {
        *lock(&self.streams_state().clock) = Arc::new(clock);
        self.streams_state().changed.notify_one();
    }

    pub fn now_ms(&self) -> i64 {
        let clock = lock(&self.streams_state().clock).clone();
        clock()
    }

    /// The subscriptions a live handle holds.
    pub fn held_streams(&self) -> BTreeSet<StreamKey> {
        lock(&self.streams_state().held).keys().cloned().collect()
    }

    pub(crate) fn streams_changed(&self) -> &tokio::sync::Notify {
        &self.streams_state().changed
    }

    pub(crate) fn stream_view(&self) -> BTreeMap<StreamKey, ServerInfo> {
        lock(&self.streams_state().view).clone()
    }

    pub(crate) fn set_stream_view(&self, view: BTreeMap<StreamKey, ServerInfo>) {
        *lock(&self.streams_state().view) = view;
    }

    /// Sets each subscription's download progress (empty: none is
    /// downloading) in the stream statuses, without reading the store: the
    /// sync driver calls it after every batch of lines.
    pub(crate) fn set_stream_progress(&self, progress: BTreeMap<StreamKey, Progress>) {
        let mut stored = lock(&self.streams_state().progress);
        if *stored == progress {
            return;
        }
        self.set_status(|s| {
            for st in &mut s.streams {
                st.progress = if progress.is_empty() {
                    None
                } else {
                    progress
                        .get(&StreamKey::new(&st.name, st.parameters.as_ref()))
                        .copied()
                };
            }
        });
        *stored = progress;
    }

    /// Recomputes [`crate::SyncStatus::streams`] from the stored rows, the
    /// held set, what the last checkpoint said and the download progress.
    pub(crate) fn refresh_stream_status(&self) -> Result<()> {
        let rows = self.with_store(|s| s.stream_subscriptions())?;
        let progress = lock(&self.streams_state().progress).clone();
        let st: Vec<StreamStatus> =
            statuses(&rows, &self.held_streams(), &self.stream_view(), &progress);
        self.set_status(|s| s.streams = st);
        Ok(())
    }

    /// [`Database::refresh_stream_status`] off the async runtime (the store
    /// may be busy applying a checkpoint).
    pub(crate) async fn refresh_stream_status_blocking(&self) -> Result<()> {
        let db = self.clone();
        match tokio::task::spawn_blocking(move || db.refresh_stream_status()).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn hold(&self, key: &StreamKey) {
        *lock(&self.streams_state().held)
            .entry(key.clone())
            .or_insert(0) += 1;
    }

    /// Drops one handle; returns whether it was the last.
    fn release(&self, key: &StreamKey) -> bool {
        let mut held = lock(&self.streams_state().held);
        match held.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                held.remove(key);
                true
            }
            None => false,
        }
    }
}

/// A stream with its parameters, from [`Database::sync_stream`].
#[derive(Clone)]
pub struct SyncStream {
    db: Database,
    key: StreamKey,
}

impl SyncStream {
    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub fn parameters(&self) -> Option<Value> {
        self.key.parameters()
    }

    /// Subscribes with the default TTL (one day) and the stream's priority.
    pub fn subscribe(&self) -> Result<SyncStreamSubscription> {
        self.subscribe_with(SubscribeOptions::default())
    }

    /// Subscribes (again): stores the subscription, extends its expiry, and
    /// holds it until the returned handle is dropped or unsubscribed.
    pub fn subscribe_with(&self, options: SubscribeOptions) -> Result<SyncStreamSubscription> {
        if let Some(p) = options.priority.filter(|p| !(0..=3).contains(p)) {
            return Err(Error::Stream {
                stream: self.key.name.clone(),
                message: format!("priority {p} is not 0-3"),
            });
        }
        let now = self.db.now_ms();
        self.db
            .with_store(|s| s.subscribe_stream(&self.key, &options, now))?;
        self.db.hold(&self.key);
        self.db.streams_changed().notify_one();
        self.db.refresh_stream_status()?;
        Ok(SyncStreamSubscription {
            db: self.db.clone(),
            key: self.key.clone(),
            live: true,
        })
    }

    /// Drops this stream's subscription at once, whatever its TTL and live
    /// handles (PowerSync's `unsubscribeAll`): it leaves the next request.
    pub fn unsubscribe_all(&self) -> Result<()> {
        self.db.with_store(|s| s.unsubscribe_stream(&self.key))?;
        lock(&self.db.streams_state().held).remove(&self.key);
        self.db.streams_changed().notify_one();
        self.db.refresh_stream_status()
    }
}

/// A live subscription: held while this handle lives (dropping it unsubscribes).
pub struct SyncStreamSubscription {
    db: Database,
    key: StreamKey,
    live: bool,
}

impl SyncStreamSubscription {
    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub fn parameters(&self) -> Option<Value> {
        self.key.parameters()
    }

    /// This subscription's current status.
    pub fn status(&self) -> Option<StreamStatus> {
        let status = self.db.status();
        let s = status.borrow();
        s.streams.iter().find(|st| st.is(&self.key)).cloned()
    }

    /// Waits until a checkpoint with this subscription's data has been
    /// applied (at once if one was before, in this or an earlier session).
    /// Fails when the server reports an error for it (an unknown stream, a
    /// missing or bad parameter): such a subscription brings no data.
    pub async fn wait_for_first_sync(&self) -> Result<()> {
        let mut rx = self.db.status();
        let key = &self.key;
        let s = rx
            .wait_for(|s| {
                s.streams
                    .iter()
                    .any(|st| st.is(key) && (st.has_synced || !st.errors.is_empty()))
            })
            .await
            .map_err(|_| Error::Transport("the database was closed".into()))?;
        match s.streams.iter().find(|st| st.is(key)) {
            Some(st) if !st.errors.is_empty() => Err(Error::Stream {
                stream: format!("{} {}", key.name, key.params),
                message: st.errors.join("; "),
            }),
            _ => Ok(()),
        }
    }

    /// Releases this handle; when it was the last, the TTL starts now.
    pub fn unsubscribe(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if !std::mem::take(&mut self.live) || !self.db.release(&self.key) {
            return;
        }
        let now = self.db.now_ms();
        // Errors are the store's (a full disk): the subscription then simply
        // expires from its last extension.
        let _ = self.db.with_store(|s| s.touch_stream(&self.key, now));
        self.db.streams_changed().notify_one();
        let _ = self.db.refresh_stream_status();
    }
}

impl Drop for SyncStreamSubscription {
    fn drop(&mut self) {
        self.release();
    }
}
