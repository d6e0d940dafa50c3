//! [`Database`]: the local, shareable handle apps use (queries, local writes, live
//! queries, sync status). Nothing here touches the network.
//!
//! Writes go through one connection behind a mutex, which is what lets the update
//! hook attribute every change to a write we can announce. Read-only queries of a
//! file database use a second, read-only connection: in WAL mode it reads the last
//! committed state without waiting for a checkpoint being applied meanwhile, so
//! live queries keep answering during a long apply. (A file whose first checkpoint
//! is not applied yet uses a rollback journal instead, see `store::journal`: there
//! the reader waits out commits; there is nothing applied to read yet.)

use crate::error::Result;
use crate::status::SyncStatus;
use crate::store::{json_to_sql, query_json, SchemaMode, Store};
use crate::subscriptions::StreamsState;
use crate::watch::{tables_read, Counters, Touched, Watch};
use outpost_protocol::http::CrudBatch;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Entries per upload batch (whole local transactions are never split).
pub const UPLOAD_BATCH: usize = 1000;

#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    /// Read-only connection to the same file (`None` for in-memory databases).
    reader: Option<Mutex<Connection>>,
    touched: Touched,
    changes: tokio::sync::watch::Sender<Counters>,
    status: tokio::sync::watch::Sender<SyncStatus>,
    crud_changed: tokio::sync::Notify,
    streams: StreamsState,
}

impl Database {
    /// Opens (creating or migrating) a database file. `mode` says how views are made.
    pub fn open(path: impl AsRef<Path>, mode: SchemaMode) -> Result<Database> {
        let store = Store::open(path.as_ref(), mode)?;
        let reader = Connection::open_with_flags(
            path.as_ref(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        Database::from_store(store, Some(reader))
    }

    pub fn open_in_memory(mode: SchemaMode) -> Result<Database> {
        Database::from_store(Store::open_in_memory(mode)?, None)
    }

    fn from_store(mut store: Store, reader: Option<Connection>) -> Result<Database> {
        let touched = Touched::default();
        store.connection_mut().update_hook(Some(touched.hook()))?;
        let status = SyncStatus {
            upload_pending: store.crud_count()?,
            last_checkpoint: store.kv("last_checkpoint")?,
            last_synced_at: store.kv("last_synced_at")?,
            ..SyncStatus::default()
        };
        let db = Database {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                reader: reader.map(Mutex::new),
                touched,
                changes: tokio::sync::watch::channel(Counters::new()).0,
                status: tokio::sync::watch::channel(status).0,
                crud_changed: tokio::sync::Notify::new(),
                streams: StreamsState::default(),
            }),
        };
        db.refresh_stream_status()?;
        Ok(db)
    }

    /// Sync Streams bookkeeping shared by every clone (see [`crate::subscriptions`]).
    pub(crate) fn streams_state(&self) -> &StreamsState {
        &self.inner.streams
    }

    /// Runs `f` with exclusive access to the store, then announces what it changed.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        self.with_store_counted(f).0
    }

    /// [`Database::with_store`] on a blocking-pool thread, for async callers whose
    /// store work may take long (applying a large checkpoint): the async runtime
    /// keeps serving live queries, uploads and timers meanwhile.
    pub async fn with_store_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let db = self.clone();
        match tokio::task::spawn_blocking(move || db.with_store(f)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Like [`Database::with_store`], also returning rows written per table.
    fn with_store_counted<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T>,
    ) -> (Result<T>, BTreeMap<String, u64>) {
        let mut store = self.inner.store.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut store);
        let pending = store.crud_count().ok();
        // Taken under the store lock: the hook fires only while the lock is
        // held, so another thread's write cannot claim these rows as its own.
        let touched = self.inner.touched.take();
        drop(store);
        if !touched.is_empty() {
            if touched.contains_key("ps_crud") {
                if let Some(n) = pending {
                    self.inner.status.send_modify(|s| s.upload_pending = n);
                }
                self.inner.crud_changed.notify_one();
            }
            self.inner.changes.send_modify(|c| {
                for t in touched.keys() {
                    *c.entry(t.clone()).or_insert(0) += 1;
                }
            });
        }
        (out, touched)
    }

    /// Rows a local write changed: views report none through SQLite's change
    /// counter (INSTEAD OF triggers), so count the data-table writes the hook saw.
    fn write_counted(&self, f: impl FnOnce(&mut Store) -> Result<u64>) -> Result<u64> {
        let (direct, touched) = self.with_store_counted(f);
        let direct = direct?;
        let via_views: u64 = touched
            .iter()
            .filter(|(t, _)| t.starts_with("ps_data"))
            .map(|(_, n)| n)
            .sum();
        Ok(if via_views > 0 { via_views } else { direct })
    }

    /// A local write (through the views), queued for upload as one transaction.
    /// Returns the rows changed (counted through the views' triggers too).
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        self.write_counted(|s| {
            s.write(|tx| {
                let p: Vec<rusqlite::types::Value> = params.iter().map(json_to_sql).collect();
                Ok(tx.execute(sql, rusqlite::params_from_iter(p))? as u64)
            })
        })
        .map(|n| n as usize)
    }

    /// Several statements as one local write transaction; returns the rows changed.
    pub fn execute_batch(&self, sql: &str) -> Result<u64> {
        self.write_counted(|s| s.execute_batch_write(sql))
    }

    /// Runs a query; rows as JSON objects. A read-only statement on a file database
    /// reads through the reader connection (never waiting for an apply); anything
    /// else runs on the write connection.
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Map<String, Value>>> {
        if let Some(reader) = &self.inner.reader {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            if conn.prepare(sql).is_ok_and(|s| s.readonly()) {
                return query_json(&conn, sql, params);
            }
        }
        self.with_store(|s| s.query(sql, params))
    }

    /// A live query; see [`Watch`].
    pub fn watch(&self, sql: &str, params: &[Value]) -> Result<Watch> {
        let tables = match &self.inner.reader {
            Some(reader) => tables_read(&mut reader.lock().unwrap_or_else(|e| e.into_inner()), sql),
            None => self.with_store(|s| tables_read(s.connection_mut(), sql)),
        }?;
        let db = self.clone();
        Ok(Watch::new(
            self.inner.changes.subscribe(),
            Arc::new(move |sql: &str, params: &[Value]| db.query(sql, params)),
            sql.to_string(),
            params.to_vec(),
            tables,
        ))
    }

    /// The sync status, updated by the sync driver and local writes.
    pub fn status(&self) -> tokio::sync::watch::Receiver<SyncStatus> {
        self.inner.status.subscribe()
    }

    /// Changes the sync status (the sync driver's side of [`Database::status`]).
    pub(crate) fn set_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        self.inner.status.send_modify(f);
    }

    /// Notified when a local write queued an upload.
    pub(crate) fn crud_changed(&self) -> &tokio::sync::Notify {
        &self.inner.crud_changed
    }

    /// Sends the upload queue batch by batch through `send`, removing each batch
    /// once `send` succeeds. A failed batch stays queued, in order.
    pub async fn upload_batches<F, Fut>(&self, mut send: F) -> Result<()>
    where
        F: FnMut(CrudBatch) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        loop {
            let items = self
                .with_store_blocking(|s| s.crud_batch(UPLOAD_BATCH))
                .await?;
            let Some(last) = items.last().map(|i| i.id) else {
                return Ok(());
            };
            send(CrudBatch {
                batch: items.into_iter().map(|i| i.entry).collect(),
            })
            .await?;
            self.with_store_blocking(move |s| s.complete_crud(last))
                .await?;
        }
    }
}
