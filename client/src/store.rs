//! The local SQLite database: layout, migrations, and the adapter that executes
//! the sync machine's database instructions.
//!
//! Layout (modeled on powersync-sqlite-core, see the protocol reference §7):
//! - `ps_buckets`: one row per bucket: `last_op` (download position),
//!   `last_applied_op`, `add_checksum` + `op_checksum` (their sum must equal the
//!   checkpoint's), `count_at_last` (progress).
//! - `ps_oplog`: the current PUT of each `(bucket, key)`; superseded ops live on only
//!   as checksums in `add_checksum`. Indexed by `(row_type, row_id, bucket, key)`
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
//! - `ps_migration`: applied layout versions.

use crate::error::{Error, Result};
use crate::schema::{data_table, quote_ident, Column, ColumnType, Schema, Table};
use crate::sync::{
    failed_buckets, gate_open, BucketPosition, Instruction, SyncLocalOutcome, SyncState,
};
use outpost_protocol::http::CrudEntry;
use outpost_protocol::{Checkpoint, Checksum, DataLine, OpId, OpType};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;

/// Each entry upgrades the layout by one version. Never edit a released entry:
/// add a new one, and update [`LATEST_LAYOUT`] to match.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: buckets, oplog, data, upload queue.
    "CREATE TABLE ps_migration(id INTEGER PRIMARY KEY NOT NULL);
     CREATE TABLE ps_buckets(id INTEGER PRIMARY KEY, name TEXT NOT NULL,
        last_applied_op INTEGER NOT NULL DEFAULT 0, last_op INTEGER NOT NULL DEFAULT 0,
        add_checksum INTEGER NOT NULL DEFAULT 0, op_checksum INTEGER NOT NULL DEFAULT 0,
        pending_delete INTEGER NOT NULL DEFAULT 0);
     CREATE UNIQUE INDEX ps_buckets_name ON ps_buckets(name);
     CREATE TABLE ps_oplog(bucket INTEGER NOT NULL, op_id INTEGER NOT NULL, row_type TEXT,
        row_id TEXT, key TEXT, data TEXT, hash INTEGER NOT NULL);
     CREATE INDEX ps_oplog_row ON ps_oplog(row_type, row_id);
     CREATE INDEX ps_oplog_opid ON ps_oplog(bucket, op_id);
     CREATE INDEX ps_oplog_key ON ps_oplog(bucket, key);
     CREATE TABLE ps_updated_rows(row_type TEXT, row_id TEXT, PRIMARY KEY(row_type, row_id)) WITHOUT ROWID;
     CREATE TABLE ps_untyped(type TEXT NOT NULL, id TEXT NOT NULL, data TEXT, PRIMARY KEY(type, id));
     CREATE TABLE ps_crud(id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT);
     CREATE TABLE ps_kv(key TEXT PRIMARY KEY NOT NULL, value BLOB);",
    // 2: transaction grouping of the upload queue, progress counts, sync times.
    "CREATE TABLE ps_tx(id INTEGER PRIMARY KEY NOT NULL, current_tx INTEGER, next_tx INTEGER);
     INSERT INTO ps_tx(id, current_tx, next_tx) VALUES (1, NULL, 1);
     ALTER TABLE ps_crud ADD COLUMN tx_id INTEGER;
     ALTER TABLE ps_buckets ADD COLUMN count_at_last INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE ps_sync_state(priority INTEGER PRIMARY KEY NOT NULL, last_synced_at TEXT NOT NULL);",
    // 3: local writes the server refused, kept for the app to inspect.
    "CREATE TABLE ps_crud_rejected(id INTEGER PRIMARY KEY NOT NULL, tx_id INTEGER, data TEXT NOT NULL,
        status INTEGER, reason TEXT, rejected_at TEXT NOT NULL);",
    // 4: one unique index serves both "the op for this key" (a PUT inserts with
    // ON CONFLICT instead of probing first) and "every op for this row" (the
    // apply's winner lookup); the separate (bucket, key) index cost a third of
    // the oplog's write time.
    "DROP INDEX ps_oplog_key;
     DROP INDEX ps_oplog_row;
     CREATE UNIQUE INDEX ps_oplog_row ON ps_oplog(row_type, row_id, bucket, key);",
];

/// The layout a fresh database gets in one step; must equal running every migration.
pub(crate) const LATEST_LAYOUT: &str = "
    CREATE TABLE ps_migration(id INTEGER PRIMARY KEY NOT NULL);
    CREATE TABLE ps_buckets(id INTEGER PRIMARY KEY, name TEXT NOT NULL,
       last_applied_op INTEGER NOT NULL DEFAULT 0, last_op INTEGER NOT NULL DEFAULT 0,
       add_checksum INTEGER NOT NULL DEFAULT 0, op_checksum INTEGER NOT NULL DEFAULT 0,
       pending_delete INTEGER NOT NULL DEFAULT 0, count_at_last INTEGER NOT NULL DEFAULT 0);
    CREATE UNIQUE INDEX ps_buckets_name ON ps_buckets(name);
    CREATE TABLE ps_oplog(bucket INTEGER NOT NULL, op_id INTEGER NOT NULL, row_type TEXT,
       row_id TEXT, key TEXT, data TEXT, hash INTEGER NOT NULL);
    CREATE INDEX ps_oplog_opid ON ps_oplog(bucket, op_id);
    CREATE UNIQUE INDEX ps_oplog_row ON ps_oplog(row_type, row_id, bucket, key);
    CREATE TABLE ps_updated_rows(row_type TEXT, row_id TEXT, PRIMARY KEY(row_type, row_id)) WITHOUT ROWID;
    CREATE TABLE ps_untyped(type TEXT NOT NULL, id TEXT NOT NULL, data TEXT, PRIMARY KEY(type, id));
    CREATE TABLE ps_crud(id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT, tx_id INTEGER);
    CREATE TABLE ps_kv(key TEXT PRIMARY KEY NOT NULL, value BLOB);
    CREATE TABLE ps_tx(id INTEGER PRIMARY KEY NOT NULL, current_tx INTEGER, next_tx INTEGER);
    INSERT INTO ps_tx(id, current_tx, next_tx) VALUES (1, NULL, 1);
    CREATE TABLE ps_sync_state(priority INTEGER PRIMARY KEY NOT NULL, last_synced_at TEXT NOT NULL);
    CREATE TABLE ps_crud_rejected(id INTEGER PRIMARY KEY NOT NULL, tx_id INTEGER, data TEXT NOT NULL,
       status INTEGER, reason TEXT, rejected_at TEXT NOT NULL);";

/// `ps_sync_state.priority` of a full sync (PowerSync's convention).
const FULL_SYNC_PRIORITY: i64 = 2147483647;

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

/// One queued local write.
#[derive(Clone, Debug, PartialEq)]
pub struct CrudItem {
    pub id: i64,
    pub entry: CrudEntry,
}

pub struct Store {
    conn: Connection,
    mode: SchemaMode,
}

impl Store {
    pub fn open(path: impl AsRef<Path>, mode: SchemaMode) -> Result<Store> {
        let conn = Connection::open(path)?;
        // WAL lets `outpost query` read while `outpost sync` writes; the busy timeout
        // lets `outpost exec` wait for a running apply instead of failing.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // In WAL mode, NORMAL syncs at checkpoints, not at every commit: a crash of
        // the app or the OS never corrupts the file or splits a transaction; power
        // loss may lose the last commits (a re-download; local writes are the
        // app's last few). Without it every data line would cost an fsync.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Store::with_connection(conn, mode)
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
        let mut store = Store { conn, mode };
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
                    let tx = self.conn.transaction()?;
                    save_line(&tx, &line)?;
                    while let Some(Instruction::SaveData(next)) = queue.front() {
                        save_line(&tx, next)?;
                        queue.pop_front();
                    }
                    tx.commit()?;
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

    /// Stores a data line's ops in one transaction (see [`save_line`]).
    pub fn save_data(&mut self, line: &DataLine) -> Result<()> {
        let tx = self.conn.transaction()?;
        save_line(&tx, line)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets buckets. Their rows stay visible until the next apply re-derives them.
    pub fn delete_buckets(&mut self, names: &[String]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for name in names {
            let id: Option<i64> = tx
                .query_row("SELECT id FROM ps_buckets WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(id) = id else { continue };
            tx.execute(
                "INSERT OR IGNORE INTO ps_updated_rows(row_type, row_id) SELECT row_type, row_id FROM ps_oplog WHERE bucket = ?1",
                [id],
            )?;
            tx.execute("DELETE FROM ps_oplog WHERE bucket = ?1", [id])?;
            tx.execute("DELETE FROM ps_buckets WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Validates and applies a checkpoint in one transaction (reference §7, `sync_local`).
    pub fn sync_local(
        &mut self,
        cp: &Checkpoint,
        priority: Option<i32>,
    ) -> Result<SyncLocalOutcome> {
        let infer = self.mode == SchemaMode::Inferred;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let local: HashMap<String, Checksum> = {
            let mut stmt = tx.prepare("SELECT name, add_checksum, op_checksum FROM ps_buckets")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Checksum(r.get::<_, i64>(1)? as u32) + Checksum(r.get::<_, i64>(2)? as u32),
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let failed = failed_buckets(cp, priority, &local);
        if !failed.is_empty() {
            return Ok(SyncLocalOutcome::ChecksumFailed(failed));
        }
        let crud_empty: bool =
            tx.query_row("SELECT NOT EXISTS (SELECT 1 FROM ps_crud)", [], |r| {
                r.get(0)
            })?;
        let target = get_kv(&tx, "target_op")?
            .and_then(|s| s.parse::<u64>().ok())
            .map(OpId);
        if !gate_open(priority, crud_empty, target, cp.write_checkpoint) {
            return Ok(SyncLocalOutcome::Blocked);
        }

        let involved: HashSet<&str> = cp
            .buckets
            .iter()
            .filter(|b| priority.is_none_or(|p| b.priority_or_default() <= p))
            .map(|b| b.bucket.as_str())
            .collect();
        let full = priority.is_none();
        // (id, last_applied_op) of the involved buckets that hold ops.
        let (ids, all): (Vec<(i64, i64)>, bool) = {
            let mut stmt = tx.prepare_cached("SELECT id, name, last_applied_op FROM ps_buckets")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut ids = vec![];
            let mut total = 0;
            for row in rows {
                let (id, name, applied) = row?;
                total += 1;
                if involved.contains(name.as_str()) {
                    ids.push((id, applied));
                }
            }
            let all = ids.len() == total;
            (ids, all)
        };
        // Bucket ids are integers this database assigned, so they are inlined.
        let in_list = ids
            .iter()
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let only_involved = |col: &str| {
            if all {
                "1".to_string()
            } else {
                format!("{col} IN ({in_list})")
            }
        };
        let f = only_involved("o.bucket");

        // The rows to re-derive: every row with an op above its bucket's
        // `last_applied_op`, plus (full checkpoint) those in `ps_updated_rows`. When
        // no involved bucket was applied before (an initial sync, or after CLEAR),
        // that is every row of the involved buckets, and it is read straight from
        // the oplog; otherwise the set is collected in `temp.ps_changed` first.
        let fresh = ids.iter().all(|&(_, applied)| applied == 0);
        if !fresh {
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS ps_changed(row_type TEXT NOT NULL, row_id TEXT NOT NULL,
                    PRIMARY KEY(row_type, row_id)) WITHOUT ROWID;
                 DELETE FROM temp.ps_changed;",
            )?;
            tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO temp.ps_changed(row_type, row_id)
                     SELECT o.row_type, o.row_id FROM ps_buckets b
                     JOIN ps_oplog o ON o.bucket = b.id AND o.op_id > b.last_applied_op
                     WHERE {}",
                    only_involved("b.id")
                ),
                [],
            )?;
            if full {
                tx.execute(
                    "INSERT OR IGNORE INTO temp.ps_changed(row_type, row_id)
                     SELECT row_type, row_id FROM ps_updated_rows",
                    [],
                )?;
            }
        }
        let types: Vec<String> = {
            let sql = if !fresh {
                "SELECT DISTINCT row_type FROM temp.ps_changed".to_string()
            } else if full {
                format!(
                    "SELECT DISTINCT o.row_type FROM ps_oplog o WHERE o.row_type IS NOT NULL AND {f}
                     UNION SELECT row_type FROM ps_updated_rows WHERE row_type IS NOT NULL"
                )
            } else {
                format!(
                    "SELECT DISTINCT o.row_type FROM ps_oplog o WHERE o.row_type IS NOT NULL AND {f}"
                )
            };
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };

        // Per type, set-based: each row's winner is its op with the highest op_id
        // across the involved buckets (SQLite takes the bare columns of a
        // `max()` aggregate from the row holding the maximum).
        let winners = if fresh {
            format!(
                "SELECT o.row_id, o.data, max(o.op_id) FROM ps_oplog o
                 WHERE o.row_type = ?1 AND {f} GROUP BY o.row_id"
            )
        } else {
            format!(
                "SELECT o.row_id, o.data, max(o.op_id) FROM temp.ps_changed c
                 JOIN ps_oplog o ON o.row_type = c.row_type AND o.row_id = c.row_id
                 WHERE c.row_type = ?1 AND {f} GROUP BY o.row_id"
            )
        };
        // Rows left without any op: only rows marked updated can be in that state.
        let gone = format!(
            "SELECT u.row_id FROM ps_updated_rows u WHERE u.row_type = ?1 AND NOT EXISTS
               (SELECT 1 FROM ps_oplog o WHERE o.row_type = u.row_type AND o.row_id = u.row_id AND {f})"
        );
        for ty in &types {
            let dt = data_table(ty);
            let mut has_table = table_exists(&tx, &dt)?;
            if !has_table && infer {
                let any: bool = tx.query_row(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM ps_oplog o WHERE o.row_type = ?1 AND {f})"
                    ),
                    [ty],
                    |r| r.get(0),
                )?;
                if any {
                    tx.execute(&Table::new(ty, vec![]).create_sql()[0], [])?;
                    has_table = true;
                }
            }
            let (upsert, delete) = if has_table {
                let dt = quote_ident(&dt);
                (
                    format!("INSERT OR REPLACE INTO {dt}(id, data) SELECT row_id, data FROM ({winners})"),
                    format!("DELETE FROM {dt} WHERE id IN ({gone})"),
                )
            } else {
                (
                    format!("INSERT OR REPLACE INTO ps_untyped(type, id, data) SELECT ?1, row_id, data FROM ({winners})"),
                    format!("DELETE FROM ps_untyped WHERE type = ?1 AND id IN ({gone})"),
                )
            };
            tx.execute(&upsert, [ty])?;
            if full {
                tx.execute(&delete, [ty])?;
            }
        }
        if !fresh {
            tx.execute("DELETE FROM temp.ps_changed", [])?;
        }

        let now = now_string();
        {
            let mut upd = tx.prepare(
                "UPDATE ps_buckets SET last_op = max(last_op, ?2), last_applied_op = max(last_op, ?2),
                    count_at_last = coalesce(?3, count_at_last) WHERE name = ?1",
            )?;
            for b in cp
                .buckets
                .iter()
                .filter(|b| involved.contains(&b.bucket.as_str()))
            {
                upd.execute(params![
                    b.bucket,
                    cp.last_op_id.0 as i64,
                    b.count.map(|c| c as i64)
                ])?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO ps_sync_state(priority, last_synced_at) VALUES (?1, ?2)",
            params![priority.map_or(FULL_SYNC_PRIORITY, i64::from), now],
        )?;
        if priority.is_none() {
            tx.execute("DELETE FROM ps_updated_rows", [])?;
            set_kv(&tx, "last_checkpoint", &cp.last_op_id.to_string())?;
            set_kv(&tx, "last_synced_at", &now)?;
            // The gate passed, so the requested write checkpoint has been reached.
            tx.execute("DELETE FROM ps_kv WHERE key = 'target_op'", [])?;
            if infer {
                refresh_inferred_views(&tx)?;
            }
        }
        tx.commit()?;
        Ok(SyncLocalOutcome::Applied)
    }

    /// Runs `f` as one local write transaction: every `ps_crud` entry it queues
    /// shares one `tx_id`, so the server applies them together.
    pub fn write<T>(&mut self, f: impl FnOnce(&rusqlite::Transaction) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE ps_tx SET current_tx = next_tx, next_tx = next_tx + 1 WHERE id = 1",
            [],
        )?;
        let out = f(&tx)?;
        tx.execute("UPDATE ps_tx SET current_tx = NULL WHERE id = 1", [])?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs SQL (possibly several statements) as one local write; returns rows changed.
    pub fn execute_batch_write(&mut self, sql: &str) -> Result<u64> {
        self.write(|tx| {
            tx.execute_batch(sql)?;
            Ok(tx.changes())
        })
    }

    /// Runs a query and returns rows as JSON objects (column name → value).
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Map<String, Value>>> {
        query_json(&self.conn, sql, params)
    }

    /// Up to about `limit` queued writes, never splitting a local transaction.
    pub fn crud_batch(&self, limit: usize) -> Result<Vec<CrudItem>> {
        let read = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<Vec<CrudItem>> {
            let mut stmt = self.conn.prepare(sql)?;
            let rows = stmt.query_map(p, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            })?;
            let mut out = vec![];
            for row in rows {
                let (id, data, tx_id) = row?;
                let mut entry: CrudEntry = serde_json::from_str(&data)?;
                entry.tx_id = tx_id;
                out.push(CrudItem { id, entry });
            }
            Ok(out)
        };
        let mut items = read(
            "SELECT id, data, tx_id FROM ps_crud ORDER BY id LIMIT ?1",
            &[&(limit.max(1) as i64)],
        )?;
        if items.len() >= limit.max(1) {
            let last_tx = items.last().and_then(|i| i.entry.tx_id);
            if items.iter().all(|i| i.entry.tx_id == last_tx) {
                if let Some(t) = last_tx {
                    // One transaction larger than the limit: send it whole.
                    items = read(
                        "SELECT id, data, tx_id FROM ps_crud WHERE tx_id = ?1 ORDER BY id",
                        &[&t],
                    )?;
                }
            } else {
                while items.len() > 1 && items.last().map(|i| i.entry.tx_id) == Some(last_tx) {
                    items.pop();
                }
            }
        }
        Ok(items)
    }

    /// Removes uploaded entries (ids up to and including `last_id`).
    pub fn complete_crud(&mut self, last_id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM ps_crud WHERE id <= ?1", [last_id])?;
        Ok(())
    }

    /// Moves the queued entries of local transaction `tx_id` (or, with `None`, the
    /// single entry `id`) to `ps_crud_rejected`: the server refused them for good.
    /// Their rows were marked at write time, so the next applied checkpoint
    /// replaces the optimistic local state with the server's. Returns entries moved.
    pub fn reject_crud(
        &mut self,
        id: i64,
        tx_id: Option<i64>,
        status: u16,
        reason: &str,
    ) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let filter = "(?1 IS NOT NULL AND tx_id = ?1) OR (?1 IS NULL AND id = ?2)";
        let moved = tx.execute(
            &format!(
                "INSERT INTO ps_crud_rejected(id, tx_id, data, status, reason, rejected_at)
                 SELECT id, tx_id, data, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM ps_crud WHERE {filter}"
            ),
            params![tx_id, id, status, reason],
        )?;
        tx.execute(
            &format!("DELETE FROM ps_crud WHERE {filter}"),
            params![tx_id, id],
        )?;
        tx.commit()?;
        Ok(moved as u64)
    }

    pub fn crud_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM ps_crud", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Stores the write checkpoint to wait for, unless new writes were queued since
    /// the upload (they will lead to another request). Returns whether it was stored.
    pub fn set_write_target(&mut self, op: OpId) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let empty: bool = tx.query_row("SELECT NOT EXISTS (SELECT 1 FROM ps_crud)", [], |r| {
            r.get(0)
        })?;
        if empty {
            set_kv(&tx, "target_op", &op.0.to_string())?;
        }
        tx.commit()?;
        Ok(empty)
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
        Ok(serde_json::json!({
            "client_id": self.client_id()?,
            "last_checkpoint": self.kv("last_checkpoint")?,
            "last_synced_at": self.kv("last_synced_at")?,
            "upload_queue": self.crud_count()?,
            "upload_rejected": self.conn.query_row("SELECT count(*) FROM ps_crud_rejected", [], |r| r.get::<_, i64>(0))?,
            "write_target": self.kv("target_op")?,
            "tables": self.table_counts()?,
            "buckets": buckets,
        }))
    }
}

/// Stores a data line's ops (reference §7, "Applying a data line") in `tx`.
///
/// A PUT is inserted with `ON CONFLICT DO NOTHING` against the unique
/// `ps_oplog_row` index: in the common case (no earlier op for the key, e.g. an
/// initial sync) that one statement is the whole cost. Only when the key already
/// has an op is the old hash read and the row replaced.
fn save_line(tx: &rusqlite::Transaction, line: &DataLine) -> Result<()> {
    tx.prepare_cached("INSERT INTO ps_buckets(name) VALUES (?1) ON CONFLICT(name) DO NOTHING")?
        .execute([&line.bucket])?;
    let (bucket, mut last_op, add, opc): (i64, i64, i64, i64) = tx
        .prepare_cached(
            "SELECT id, last_op, add_checksum, op_checksum FROM ps_buckets WHERE name = ?1",
        )?
        .query_row([&line.bucket], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let mut add = Checksum(add as u32);
    let mut opc = Checksum(opc as u32);
    let mut cleared = false;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO ps_oplog(bucket, op_id, row_type, row_id, key, data, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?;
        let mut old_hash = tx.prepare_cached(
            "SELECT hash FROM ps_oplog WHERE row_type = ?1 AND row_id = ?2 AND bucket = ?3 AND key = ?4",
        )?;
        let mut replace = tx.prepare_cached(
            "UPDATE ps_oplog SET op_id = ?5, data = ?6, hash = ?7
             WHERE row_type = ?1 AND row_id = ?2 AND bucket = ?3 AND key = ?4",
        )?;
        let mut remove = tx.prepare_cached(
            "DELETE FROM ps_oplog WHERE row_type = ?1 AND row_id = ?2 AND bucket = ?3 AND key = ?4 RETURNING hash",
        )?;
        let mut mark = tx.prepare_cached(
            "INSERT OR IGNORE INTO ps_updated_rows(row_type, row_id) VALUES (?1, ?2)",
        )?;
        let mut key = String::new();
        for op in &line.data {
            match op.op {
                OpType::Put | OpType::Remove => {
                    let (Some(ty), Some(id)) = (&op.object_type, &op.object_id) else {
                        return Err(Error::Protocol(format!(
                            "op {} in bucket {:?} has no object_type/object_id",
                            op.op_id, line.bucket
                        )));
                    };
                    key.clear();
                    key.push_str(ty);
                    key.push('/');
                    key.push_str(id);
                    key.push('/');
                    key.push_str(op.subkey.as_deref().unwrap_or(""));
                    let op_id = op.op_id.0 as i64;
                    let hash = op.checksum.0 as i64;
                    let superseded: Option<i64> = if op.op == OpType::Put {
                        let Some(data) = &op.data else {
                            return Err(Error::Protocol(format!(
                                "PUT {} in bucket {:?} has no data",
                                op.op_id, line.bucket
                            )));
                        };
                        opc += op.checksum;
                        if insert.execute(params![bucket, op_id, ty, id, key, data, hash])? == 1 {
                            None
                        } else {
                            let old =
                                old_hash.query_row(params![ty, id, bucket, key], |r| r.get(0))?;
                            replace.execute(params![ty, id, bucket, key, op_id, data, hash])?;
                            Some(old)
                        }
                    } else {
                        add += op.checksum;
                        mark.execute(params![ty, id])?;
                        remove
                            .query_row(params![ty, id, bucket, key], |r| r.get(0))
                            .optional()?
                    };
                    if let Some(h) = superseded {
                        add += Checksum(h as u32);
                        opc = Checksum(opc.0.wrapping_sub(h as u32));
                    }
                }
                OpType::Move => add += op.checksum,
                OpType::Clear => {
                    tx.execute(
                        "INSERT OR IGNORE INTO ps_updated_rows(row_type, row_id) SELECT row_type, row_id FROM ps_oplog WHERE bucket = ?1",
                        [bucket],
                    )?;
                    tx.execute("DELETE FROM ps_oplog WHERE bucket = ?1", [bucket])?;
                    add = op.checksum;
                    opc = Checksum::ZERO;
                    cleared = true;
                }
            }
            last_op = last_op.max(op.op_id.0 as i64);
        }
    }
    tx.prepare_cached(
        "UPDATE ps_buckets SET last_op = ?2, add_checksum = ?3, op_checksum = ?4,
            last_applied_op = CASE WHEN ?5 THEN 0 ELSE last_applied_op END WHERE id = ?1",
    )?
    .execute(params![
        bucket,
        last_op,
        add.0 as i64,
        opc.0 as i64,
        cleared
    ])?;
    Ok(())
}

/// Brings the layout to the latest version. A new database gets [`LATEST_LAYOUT`] at once.
pub(crate) fn migrate(conn: &Connection) -> Result<()> {
    let version = layout_version(conn)?;
    let latest = MIGRATIONS.len() as i64;
    if version > latest {
        return Err(Error::TooNew {
            found: version,
            supported: latest,
        });
    }
    if version == 0 {
        let mut sql = format!("BEGIN IMMEDIATE; {LATEST_LAYOUT}");
        for v in 1..=latest {
            sql.push_str(&format!(" INSERT INTO ps_migration(id) VALUES ({v});"));
        }
        sql.push_str(" COMMIT;");
        return Ok(conn.execute_batch(&sql)?);
    }
    migrate_to(conn, latest)
}

/// Runs migrations from the current version up to `target`, each in its own transaction.
pub(crate) fn migrate_to(conn: &Connection, target: i64) -> Result<()> {
    for v in layout_version(conn)? + 1..=target {
        let step = MIGRATIONS[(v - 1) as usize];
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {step}; INSERT INTO ps_migration(id) VALUES ({v}); COMMIT;"
        ))?;
    }
    Ok(())
}

fn layout_version(conn: &Connection) -> Result<i64> {
    if !table_exists(conn, "ps_migration")? {
        return Ok(0);
    }
    Ok(
        conn.query_row("SELECT coalesce(max(id), 0) FROM ps_migration", [], |r| {
            r.get(0)
        })?,
    )
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )?)
}

fn get_kv(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT CAST(value AS TEXT) FROM ps_kv WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

fn set_kv(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO ps_kv(key, value) VALUES (?1, ?2)",
        [key, value],
    )?;
    Ok(())
}

/// The schema implied by the synced rows: every `ps_data__` table, with one column
/// per JSON key (REAL if any value is fractional, INTEGER if all are whole numbers
/// or booleans, TEXT otherwise).
pub fn infer_schema(conn: &Connection) -> Result<Schema> {
    let names: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT substr(name, 10) FROM sqlite_master WHERE type = 'table' AND name LIKE 'ps\\_data\\_\\_%' ESCAPE '\\' ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut tables = vec![];
    for name in names {
        let mut cols: BTreeMap<String, ColumnType> = BTreeMap::new();
        let mut stmt = conn.prepare(&format!(
            "SELECT DISTINCT j.key, j.type FROM {}, json_each({}.data) j",
            quote_ident(&data_table(&name)),
            quote_ident(&data_table(&name))
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (key, ty) = row?;
            if key.eq_ignore_ascii_case("id") || key.contains('"') || key.starts_with("ps_") {
                continue;
            }
            let t = match ty.as_str() {
                "integer" | "true" | "false" => Some(ColumnType::Integer),
                "real" => Some(ColumnType::Real),
                "null" => None,
                _ => Some(ColumnType::Text),
            };
            let slot = cols.entry(key).or_insert(t.unwrap_or(ColumnType::Integer));
            *slot = match (*slot, t) {
                (s, None) => s,
                (ColumnType::Text, _) | (_, Some(ColumnType::Text)) => ColumnType::Text,
                (ColumnType::Real, _) | (_, Some(ColumnType::Real)) => ColumnType::Real,
                _ => ColumnType::Integer,
            };
        }
        // A column seen only as null defaults to INTEGER above; TEXT is the safer cast.
        let nulls_only: Vec<String> = {
            let mut stmt = conn.prepare(&format!(
                "SELECT j.key FROM {t}, json_each({t}.data) j GROUP BY j.key HAVING max(j.type != 'null') = 0",
                t = quote_ident(&data_table(&name))
            ))?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for k in nulls_only {
            if let Some(c) = cols.get_mut(&k) {
                *c = ColumnType::Text;
            }
        }
        tables.push(Table::new(
            &name,
            cols.into_iter().map(|(n, t)| Column::new(&n, t)).collect(),
        ));
    }
    Ok(Schema::new(tables))
}

fn refresh_inferred_views(conn: &Connection) -> Result<()> {
    let schema = infer_schema(conn)?;
    let text = serde_json::to_string(&schema)?;
    if get_kv(conn, "inferred_schema")?.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    for t in &schema.tables {
        if t.validate().is_err() {
            continue;
        }
        for sql in t.create_sql() {
            conn.execute(&sql, [])?;
        }
    }
    set_kv(conn, "inferred_schema", &text)
}

pub(crate) fn query_json(
    conn: &Connection,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Map<String, Value>>> {
    let mut stmt = conn.prepare(sql)?;
    let names: Vec<String> = stmt.column_names().map(String::from).collect();
    let sql_params: Vec<rusqlite::types::Value> = params.iter().map(json_to_sql).collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(sql_params))?;
    let mut out = vec![];
    while let Some(row) = rows.next()? {
        let mut obj = Map::new();
        for (i, n) in names.iter().enumerate() {
            use rusqlite::types::ValueRef;
            let v = match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::from(i),
                ValueRef::Real(f) => {
                    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                }
                ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
            };
            obj.insert(n.clone(), v);
        }
        out.push(obj);
    }
    Ok(out)
}

pub(crate) fn json_to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Bool(b) => S::Integer(*b as i64),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| S::Real(n.as_f64().unwrap_or(0.0)), S::Integer),
        Value::String(s) => S::Text(s.clone()),
        other => S::Text(other.to_string()),
    }
}

fn now_string() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything that makes up the layout: objects, columns, indexes, seed rows.
    fn describe(conn: &Connection) -> Vec<String> {
        let mut out = vec![];
        let objects: Vec<(String, String, String, Option<String>)> = {
            let mut stmt = conn
                .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
                .unwrap();
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap();
            rows.collect::<rusqlite::Result<_>>().unwrap()
        };
        for (ty, name, tbl, sql) in objects {
            out.push(format!("{ty} {name} on {tbl}"));
            if ty == "table" {
                let mut stmt = conn
                    .prepare(&format!("PRAGMA table_xinfo({})", quote_ident(&name)))
                    .unwrap();
                let cols = stmt
                    .query_map([], |r| {
                        Ok(format!(
                            "  col {} {} notnull={} default={:?} pk={}",
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, i64>(5)?
                        ))
                    })
                    .unwrap();
                out.extend(cols.map(|c| c.unwrap()));
                let without_rowid = sql
                    .unwrap_or_default()
                    .to_uppercase()
                    .contains("WITHOUT ROWID");
                out.push(format!("  without_rowid={without_rowid}"));
            } else {
                let norm = sql
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                out.push(format!("  {norm}"));
            }
        }
        for (q, label) in [
            ("SELECT group_concat(id) FROM ps_migration", "migrations"),
            ("SELECT group_concat(id || ':' || ifnull(current_tx, '-') || ':' || next_tx) FROM ps_tx", "ps_tx"),
        ] {
            let v: Option<String> = conn.query_row(q, [], |r| r.get(0)).ok().flatten();
            out.push(format!("{label} = {v:?}"));
        }
        out
    }

    #[test]
    fn every_migration_path_yields_the_fresh_layout() {
        let fresh = Connection::open_in_memory().unwrap();
        migrate(&fresh).unwrap();
        let expected = describe(&fresh);
        assert!(expected.iter().any(|l| l.contains("col count_at_last")));
        for start in 1..MIGRATIONS.len() as i64 {
            let old = Connection::open_in_memory().unwrap();
            migrate_to(&old, start).unwrap();
            assert_ne!(
                describe(&old),
                expected,
                "version {start} should differ from latest"
            );
            migrate(&old).unwrap();
            assert_eq!(describe(&old), expected, "upgrading from version {start}");
        }
        // Idempotent, and a newer database is refused rather than misread.
        migrate(&fresh).unwrap();
        assert_eq!(describe(&fresh), expected);
        fresh
            .execute("INSERT INTO ps_migration(id) VALUES (999)", [])
            .unwrap();
        assert!(matches!(
            migrate(&fresh),
            Err(Error::TooNew { found: 999, .. })
        ));
    }

    #[test]
    fn data_survives_an_upgrade() {
        let conn = Connection::open_in_memory().unwrap();
        migrate_to(&conn, 1).unwrap();
        conn.execute_batch(
            "INSERT INTO ps_buckets(name, last_op) VALUES ('b[]', 7);
             INSERT INTO ps_crud(data) VALUES ('{\"op\":\"DELETE\",\"type\":\"t\",\"id\":\"1\"}');",
        )
        .unwrap();
        let store = Store::with_connection(conn, SchemaMode::Existing).unwrap();
        assert_eq!(store.bucket_positions().unwrap()[0].last_op, OpId(7));
        assert_eq!(store.crud_batch(10).unwrap()[0].entry.tx_id, None);
    }
}
