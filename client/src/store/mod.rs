//! The local SQLite database: layout, migrations, and the adapter that executes
//! the sync machine's database instructions.
//!
//! Layout (modeled on powersync-sqlite-core, see the protocol reference §7):
//! - `ps_buckets`: one row per bucket: `last_op` (download position),
//!   `last_applied_op`, `add_checksum` + `op_checksum` (their sum must equal the
//!   checkpoint's), `count_at_last` (progress).
//! - `ps_oplog`: the current PUT of each `(row_type, row_id, bucket, key)`, `key`
//!   being the op's subkey (`""` for none); superseded ops live on only as
//!   checksums in `add_checksum`. Indexed by `(row_type, row_id, bucket, key)`
//!   (unique: a PUT's insert finds the op it supersedes) and `(bucket, op_id)`.
//!
//! Applying a checkpoint is set-based SQL per row type (the winner of each
//! changed row is its highest op_id across the involved buckets), inside one
//! transaction after the checksums validated; an initial sync of 1M rows takes
//! well under a second of it (`make bench`, section `client`).
//! - `ps_updated_rows`: rows whose winner must be recomputed at the next apply
//!   (bucket deleted, REMOVE, CLEAR, local write).
//! - `ps_data__<type>(id, data JSON)`: the applied rows, read through typed views;
//!   `ps_untyped` holds types the schema does not know.
//! - `ps_crud` + `ps_tx`: the upload queue, grouped by local transaction;
//!   `ps_crud_rejected`: entries the server refused (moved out of the queue whole
//!   transactions at a time; the next checkpoint restores the server's rows).
//! - `ps_kv`: `client_id`, `target_op` (write-checkpoint gate), `last_checkpoint`,
//!   `last_synced_at`, `schema`; `ps_sync_state`: last sync time per priority.
//! - `ps_stream_subscriptions`: Sync Streams subscriptions (name, canonical
//!   parameters, TTL, expiry, whether the server listed the stream, last sync).
//! - `ps_migration`: applied layout versions.
//!
//! Files: [`migrations`] (layout versions), [`oplog`] (data lines, bucket
//! deletes), [`bulk`] (a first download without the unique oplog index),
//! [`bulk_winners`] (its first apply, sorted in Rust), [`journal`] (no WAL
//! until the first apply),
//! [`apply`] (checkpoint validation and apply), [`crud_queue`] (local
//! write transactions and the upload queue), [`infer`] (views inferred from the
//! synced rows), [`query`] (JSON rows, `ps_kv`, small SQL helpers), [`subscriptions`]
//! (Sync Streams subscription rows). This file
//! holds the [`Store`] handle itself: opening, installing the schema, executing
//! the machine's instructions, and read-only summaries.

mod apply;
mod bulk;
mod bulk_winners;
mod crud_queue;
mod infer;
mod journal;
mod migrations;
mod oplog;
mod query;
mod subscriptions;

pub use crud_queue::CrudItem;
pub use infer::infer_schema;
pub(crate) use query::{json_to_sql, query_json};

use crate::error::Result;
use crate::schema::{quote_ident, Schema};
use crate::sync::{BucketPosition, Instruction, SyncLocalOutcome, SyncState};
use infer::refresh_inferred_views;
use migrations::migrate;
use outpost_protocol::OpId;
use query::{get_kv, set_kv};
use rusqlite::Connection;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

/// How views are derived.
#[derive(Clone, Debug, PartialEq)]
pub enum SchemaMode {
    /// The app's schema: views exactly for these tables; other synced types go to `ps_untyped`.
    Fixed(Schema),
    /// No app schema: every synced type gets a `ps_data__` table and a view whose
    /// columns are the JSON keys seen in its rows (refreshed at each applied checkpoint).
    Inferred,
    /// Keep whatever views the database already has (CLI `query`/`exec`).
    Existing,
}

/// What executing instructions produced, for the driver.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A network instruction the async driver must carry out.
    Io(Instruction),
    Applied {
        checkpoint: OpId,
        priority: Option<i32>,
    },
    Blocked {
        checkpoint: OpId,
    },
    ChecksumFailed(Vec<String>),
}

/// The page size of a new database file.
const PAGE_SIZE: i64 = 16 * 1024;
/// How large the WAL grows before SQLite copies it back into the file
/// (100,000 pages of 4 KiB, the size measured; see `Store::open`).
const WAL_AUTOCHECKPOINT_BYTES: i64 = 100_000 * 4096;

pub struct Store {
    conn: Connection,
    mode: SchemaMode,
    /// A first download's ops, kept for its apply (see [`bulk_winners::Collected`]).
    collected: Option<bulk_winners::Collected>,
}

impl Store {
    pub fn open(path: impl AsRef<Path>, mode: SchemaMode) -> Result<Store> {
        let conn = Connection::open(path)?;
        // A new file gets 16 KiB pages (an existing one keeps its size): a
        // first sync of 1M rows took ~15% less CPU and ~30% less time than
        // with 4 KiB (fewer pages to fetch, balance and write; CONTRIBUTING.md,
        // "Where a first sync spends its time in the client"). Must precede
        // the first write, which creates the file.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        // A first sync writes every page several times; checkpointing the WAL
        // every 1,000 pages (the default) copied each back to the file again
        // and again (~10% of a 1M-row sync, which ran 1.5-1.8x faster with
        // this). Commits stay as durable; the WAL may grow to ~400 MB during a
        // large download and is truncated to 64 MiB after the next checkpoint.
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            WAL_AUTOCHECKPOINT_BYTES / page_size,
        )?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let store = Store::with_connection(conn, mode)?;
        // The busy timeout (set there) lets `outpost exec` wait for a running
        // apply instead of failing; the journal is WAL once a checkpoint was
        // applied, a rollback journal before (see `journal`).
        journal::settle(&store.conn)?;
        Ok(store)
    }

    pub fn open_in_memory(mode: SchemaMode) -> Result<Store> {
        Store::with_connection(Connection::open_in_memory()?, mode)
    }

    fn with_connection(conn: Connection, mode: SchemaMode) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // The oplog's indexes are written in key order, not insertion order: a page
        // cache that holds their working set (up to 64 MiB, allocated as used)
        // keeps a large download from re-reading pages. Sorting temp b-trees
        // (DISTINCT, GROUP BY while applying) stays in memory.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        migrate(&conn)?;
        let mut store = Store {
            conn,
            mode,
            collected: None,
        };
        store.install_schema()?;
        Ok(store)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    fn install_schema(&mut self) -> Result<()> {
        match self.mode.clone() {
            SchemaMode::Fixed(schema) => {
                schema.validate()?;
                let tx = self.conn.transaction()?;
                for t in &schema.tables {
                    for sql in t.create_sql() {
                        tx.execute(&sql, [])?;
                    }
                    if !t.local_only {
                        // Rows synced before the app declared this table.
                        tx.execute(
                            &format!(
                                "INSERT OR REPLACE INTO {}(id, data) SELECT id, data FROM ps_untyped WHERE type = ?1",
                                quote_ident(&t.data_table())
                            ),
                            [&t.name],
                        )?;
                        tx.execute("DELETE FROM ps_untyped WHERE type = ?1", [&t.name])?;
                    }
                }
                set_kv(&tx, "schema", &serde_json::to_string(&schema)?)?;
                tx.commit()?;
            }
            SchemaMode::Inferred => {
                let tx = self.conn.transaction()?;
                refresh_inferred_views(&tx)?;
                tx.commit()?;
            }
            SchemaMode::Existing => {}
        }
        Ok(())
    }

    /// This database's client id (created on first use).
    pub fn client_id(&self) -> Result<String> {
        if let Some(id) = get_kv(&self.conn, "client_id")? {
            return Ok(id);
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.conn.execute(
            "INSERT OR IGNORE INTO ps_kv(key, value) VALUES ('client_id', ?1)",
            [&id],
        )?;
        Ok(get_kv(&self.conn, "client_id")?.unwrap_or(id))
    }

    pub fn bucket_positions(&self) -> Result<Vec<BucketPosition>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, last_op, count_at_last FROM ps_buckets ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(BucketPosition {
                name: r.get(0)?,
                last_op: OpId(r.get::<_, i64>(1)? as u64),
                count_at_last: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A fresh state machine positioned at what this database holds.
    pub fn sync_state(&self, parameters: Map<String, Value>) -> Result<SyncState> {
        Ok(SyncState::new(
            self.client_id()?,
            parameters,
            self.bucket_positions()?,
        ))
    }

    /// Executes the database instructions, feeding results back into the machine,
    /// and returns what the driver must do or know.
    pub fn execute(
        &mut self,
        machine: &mut SyncState,
        instructions: Vec<Instruction>,
    ) -> Result<Vec<Effect>> {
        let mut queue: VecDeque<Instruction> = instructions.into();
        let mut effects = vec![];
        while let Some(ins) = queue.pop_front() {
            match ins {
                Instruction::SaveData(line) => {
                    // Consecutive data lines (the driver passes those already
                    // received together) share one transaction: fewer commits,
                    // and index pages are written to the WAL once per batch.
                    let mut lines = vec![line];
                    while let Some(Instruction::SaveData(_)) = queue.front() {
                        let Some(Instruction::SaveData(next)) = queue.pop_front() else {
                            unreachable!()
                        };
                        lines.push(next);
                    }
                    self.save_lines(&lines.iter().collect::<Vec<_>>())?;
                }
                Instruction::DeleteBuckets(b) => self.delete_buckets(&b)?,
                Instruction::SyncLocal {
                    checkpoint,
                    priority,
                } => {
                    let outcome = self.sync_local(&checkpoint, priority)?;
                    effects.push(match &outcome {
                        SyncLocalOutcome::Applied => Effect::Applied {
                            checkpoint: checkpoint.last_op_id,
                            priority,
                        },
                        SyncLocalOutcome::Blocked => Effect::Blocked {
                            checkpoint: checkpoint.last_op_id,
                        },
                        SyncLocalOutcome::ChecksumFailed(b) => Effect::ChecksumFailed(b.clone()),
                    });
                    for (i, next) in machine
                        .sync_local_done(priority, &outcome)
                        .into_iter()
                        .enumerate()
                    {
                        queue.insert(i, next);
                    }
                }
                io @ (Instruction::EstablishStream(_) | Instruction::FetchCredentials { .. }) => {
                    effects.push(Effect::Io(io))
                }
            }
        }
        Ok(effects)
    }

    /// Runs a query and returns rows as JSON objects (column name → value).
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Map<String, Value>>> {
        query_json(&self.conn, sql, params)
    }

    /// Row counts per synced table (`ps_data__*`), by table name.
    pub fn table_counts(&self) -> Result<BTreeMap<String, u64>> {
        let names: Vec<String> = {
            let mut stmt = self.conn.prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'ps\\_data\\_\\_%' ESCAPE '\\' ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = BTreeMap::new();
        for n in names {
            let c: i64 = self.conn.query_row(
                &format!("SELECT count(*) FROM {}", quote_ident(&n)),
                [],
                |r| r.get(0),
            )?;
            out.insert(n["ps_data__".len()..].to_string(), c as u64);
        }
        // Synced types the app schema does not declare.
        let mut stmt = self
            .conn
            .prepare("SELECT type, count(*) FROM ps_untyped GROUP BY type")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (t, c) = row?;
            *out.entry(t).or_insert(0) += c as u64;
        }
        Ok(out)
    }

    /// The app schema this database was last opened with ([`SchemaMode::Fixed`]), if any.
    pub fn stored_schema(&self) -> Result<Option<Schema>> {
        match self.kv("schema")? {
            Some(text) => Ok(Some(serde_json::from_str(&text)?)),
            None => Ok(None),
        }
    }

    pub fn kv(&self, key: &str) -> Result<Option<String>> {
        get_kv(&self.conn, key)
    }

    /// A JSON summary of the local state (CLI `status`).
    pub fn status_json(&self) -> Result<Value> {
        let buckets = self.query(
            "SELECT name, last_op, last_applied_op, (add_checksum + op_checksum) % 4294967296 AS checksum FROM ps_buckets ORDER BY name",
            &[],
        )?;
        let streams = self.query(
            "SELECT stream_name AS name, local_params AS parameters, ttl, expires_at, active, is_default, last_synced_at FROM ps_stream_subscriptions ORDER BY id",
            &[],
        )?;
        Ok(serde_json::json!({
            "client_id": self.client_id()?,
            "last_checkpoint": self.kv("last_checkpoint")?,
            "last_synced_at": self.kv("last_synced_at")?,
            "upload_queue": self.crud_count()?,
            "upload_rejected": self.conn.query_row("SELECT count(*) FROM ps_crud_rejected", [], |r| r.get::<_, i64>(0))?,
            "write_target": self.kv("target_op")?,
            "tables": self.table_counts()?,
            "buckets": buckets,
            "streams": streams,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(store: &Store, name: &str) -> i64 {
        store
            .connection()
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A new file gets the larger pages; a file made with 4 KiB pages (by an
    /// older client) keeps them, and both checkpoint the WAL at the same size.
    #[test]
    fn page_size_of_new_and_existing_files() {
        let dir = std::env::temp_dir().join(format!("outpost-pages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (new, old) = (dir.join("new.db"), dir.join("old.db"));
        {
            let conn = Connection::open(&old).unwrap();
            conn.pragma_update(None, "page_size", 4096).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            migrate(&conn).unwrap();
        }
        let store = Store::open(&new, SchemaMode::Inferred).unwrap();
        assert_eq!(pragma(&store, "page_size"), PAGE_SIZE);
        assert_eq!(
            pragma(&store, "wal_autocheckpoint"),
            WAL_AUTOCHECKPOINT_BYTES / PAGE_SIZE
        );
        let store = Store::open(&old, SchemaMode::Inferred).unwrap();
        assert_eq!(pragma(&store, "page_size"), 4096);
        assert_eq!(pragma(&store, "wal_autocheckpoint"), 100_000);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
