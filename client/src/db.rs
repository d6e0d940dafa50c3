//! [`Database`]: the shareable handle apps use (queries, local writes, live queries,
//! sync status). All access goes through one connection behind a mutex, which is
//! what lets the update hook attribute every change to a write we can announce.

use crate::connector::fetch_relay_schema;
use crate::driver::SyncStatus;
use crate::error::Result;
use crate::store::{SchemaMode, Store};
use crate::transport::{Credentials, Http};
use crate::watch::{tables_read, Counters, Watch};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    touched: Arc<Mutex<BTreeMap<String, u64>>>,
    changes: tokio::sync::watch::Sender<Counters>,
    pub(crate) status: tokio::sync::watch::Sender<SyncStatus>,
    pub(crate) crud_changed: tokio::sync::Notify,
}

impl Database {
    /// Opens (creating or migrating) a database file. `mode` says how views are made.
    pub fn open(path: impl AsRef<Path>, mode: SchemaMode) -> Result<Database> {
        Database::from_store(Store::open(path, mode)?)
    }

    /// Opens `path` with the app schema the relay serves (`GET /schema`, derived from
    /// its sync rules); when the relay has none (404/501), views are inferred from the
    /// synced rows ([`SchemaMode::Inferred`]). Other failures are returned.
    pub async fn open_with_relay_schema(
        path: impl AsRef<Path>,
        creds: &Credentials,
    ) -> Result<Database> {
        let mode = match fetch_relay_schema(&Http::new(), creds).await? {
            Some(schema) => SchemaMode::Fixed(schema),
            None => SchemaMode::Inferred,
        };
        Database::open(path, mode)
    }

    pub fn open_in_memory(mode: SchemaMode) -> Result<Database> {
        Database::from_store(Store::open_in_memory(mode)?)
    }

    fn from_store(mut store: Store) -> Result<Database> {
        let touched = Arc::new(Mutex::new(BTreeMap::new()));
        let sink = touched.clone();
        store.connection_mut().update_hook(Some(
            move |_: rusqlite::hooks::Action, _: &str, table: &str, _: i64| {
                // Called for every row written (a million on an initial sync): no
                // allocation unless the table is new in this batch.
                let mut t = sink.lock().unwrap();
                match t.get_mut(table) {
                    Some(n) => *n += 1,
                    None => {
                        t.insert(table.to_string(), 1);
                    }
                }
            },
        ))?;
        let status = SyncStatus {
            upload_pending: store.crud_count()?,
            last_checkpoint: store.kv("last_checkpoint")?,
            last_synced_at: store.kv("last_synced_at")?,
            ..SyncStatus::default()
        };
        Ok(Database {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                touched,
                changes: tokio::sync::watch::channel(Counters::new()).0,
                status: tokio::sync::watch::channel(status).0,
                crud_changed: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Runs `f` with exclusive access to the store, then announces what it changed.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        self.with_store_counted(f).0
    }

    /// Like [`Database::with_store`], also returning rows written per table.
    fn with_store_counted<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T>,
    ) -> (Result<T>, BTreeMap<String, u64>) {
        let mut store = self.inner.store.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut store);
        let pending = store.crud_count().ok();
        drop(store);
        let touched = std::mem::take(&mut *self.inner.touched.lock().unwrap());
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
                let p: Vec<rusqlite::types::Value> =
                    params.iter().map(crate::store::json_to_sql).collect();
                Ok(tx.execute(sql, rusqlite::params_from_iter(p))? as u64)
            })
        })
        .map(|n| n as usize)
    }

    /// Several statements as one local write transaction; returns the rows changed.
    pub fn execute_batch(&self, sql: &str) -> Result<u64> {
        self.write_counted(|s| s.execute_batch_write(sql))
    }

    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Map<String, Value>>> {
        self.with_store(|s| s.query(sql, params))
    }

    /// A live query; see [`Watch`].
    pub fn watch(&self, sql: &str, params: &[Value]) -> Result<Watch> {
        let tables = self.with_store(|s| tables_read(s.connection_mut(), sql))?;
        Ok(Watch::new(
            self.clone(),
            sql.to_string(),
            params.to_vec(),
            tables,
        ))
    }

    /// The sync status, updated by [`Database::connect`](crate::driver) and local writes.
    pub fn status(&self) -> tokio::sync::watch::Receiver<SyncStatus> {
        self.inner.status.subscribe()
    }

    pub(crate) fn status_sender(&self) -> &tokio::sync::watch::Sender<SyncStatus> {
        &self.inner.status
    }

    pub(crate) fn crud_changed(&self) -> &tokio::sync::Notify {
        &self.inner.crud_changed
    }

    pub(crate) fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<Counters> {
        self.inner.changes.subscribe()
    }
}
