//! Applying a checkpoint: validate checksums and the write gate, then derive
//! each changed row's winner set-based, in one transaction.

use super::bulk;
use super::bulk_winners::{self, Target};
use super::infer::refresh_inferred_views;
use super::journal;
use super::query::{get_kv, now_string, set_kv, table_exists};
use super::{SchemaMode, Store};
use crate::error::Result;
use crate::schema::{data_table, quote_ident, Table};
use crate::sync::{failed_buckets, gate_open, SyncLocalOutcome};
use outpost_protocol::{Checkpoint, Checksum, OpId};
use rusqlite::{params, TransactionBehavior};
use std::collections::{HashMap, HashSet};

/// `ps_sync_state.priority` of a full sync (PowerSync's convention).
const FULL_SYNC_PRIORITY: i64 = 2147483647;

// An incremental checkpoint touches a few rows of a bucket that may hold a
// million: both statements below must start from the few (the buckets, the
// changed rows) and look the op log up by index. Without statistics SQLite
// planned both the other way round, scanning the whole op log (or all ops of
// the row type) per checkpoint, so latency grew with the bucket; `CROSS JOIN`
// fixes the join order (the left table is the outer loop).

/// The rows with an op above their bucket's `last_applied_op`, into `temp.ps_changed`.
fn changed_rows_sql(filter: &str) -> String {
    format!(
        "INSERT OR IGNORE INTO temp.ps_changed(row_type, row_id)
         SELECT o.row_type, o.row_id FROM ps_buckets b
         CROSS JOIN ps_oplog o ON o.bucket = b.id AND o.op_id > b.last_applied_op
         WHERE {filter}"
    )
}

/// Each changed row's winning op (`?1`: the row type), for an incremental apply.
fn changed_winners_sql(filter: &str) -> String {
    format!(
        "SELECT o.row_id, o.data, max(o.op_id) FROM temp.ps_changed c
         CROSS JOIN ps_oplog o ON o.row_type = c.row_type AND o.row_id = c.row_id
         WHERE c.row_type = ?1 AND {filter} GROUP BY o.row_id"
    )
}

impl Store {
    /// Builds the op log's unique index if a first download left it out (see
    /// [`bulk`]), in a transaction of its own. The driver calls it after the
    /// first checkpoint is visible; anything that needs the index earlier
    /// builds it itself.
    pub fn finish_bulk(&mut self) -> Result<()> {
        self.collected = None;
        if !bulk::in_bulk(&self.conn)? {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        bulk::finish(&tx)?;
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
        // A first download in bulk mode (no `ps_oplog_row`, see `bulk`) is read
        // by scans and sorts; anything else needs the index first.
        let mut bulk = bulk::in_bulk(&tx)?;
        if bulk && !fresh {
            bulk::finish(&tx)?;
            bulk = false;
        }
        if !fresh {
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS ps_changed(row_type TEXT NOT NULL, row_id TEXT NOT NULL,
                    PRIMARY KEY(row_type, row_id)) WITHOUT ROWID;
                 DELETE FROM temp.ps_changed;",
            )?;
            tx.execute(&changed_rows_sql(&only_involved("b.id")), [])?;
            if full {
                tx.execute(
                    "INSERT OR IGNORE INTO temp.ps_changed(row_type, row_id)
                     SELECT row_type, row_id FROM ps_updated_rows",
                    [],
                )?;
            }
        }
        // A bulk download's ops are read now: the same scan gives the row types.
        // Collected while they were stored if nothing else changed the op
        // log since (only an apply of every bucket can take them: they are
        // all of its ops).
        let collected = match self.collected.take() {
            Some(c) if bulk && all => c.into_scanned(&tx)?,
            Some(c) if bulk => {
                self.collected = Some(c);
                None
            }
            _ => None,
        };
        let scanned = match collected {
            Some(c) => Some(c),
            None if bulk => Some(bulk_winners::scan(&tx, &f)?),
            None => None,
        };
        let mut types: Vec<String> = if let Some(scanned) = &scanned {
            scanned.types.clone()
        } else {
            let sql = if fresh {
                format!(
                    "SELECT DISTINCT o.row_type FROM ps_oplog o WHERE o.row_type IS NOT NULL AND {f}"
                )
            } else {
                "SELECT DISTINCT row_type FROM temp.ps_changed".to_string()
            };
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // A full apply also revisits rows marked updated (`temp.ps_changed`
        // already holds them when the apply is not fresh).
        if fresh && full {
            let mut stmt = tx.prepare(
                "SELECT DISTINCT row_type FROM ps_updated_rows WHERE row_type IS NOT NULL",
            )?;
            for ty in stmt.query_map([], |r| r.get::<_, String>(0))? {
                let ty = ty?;
                if !types.contains(&ty) {
                    types.push(ty);
                }
            }
        }

        // Per type, set-based: each row's winner is its op with the highest op_id
        // across the involved buckets (SQLite takes the bare columns of a
        // `max()` aggregate from the row holding the maximum).
        let winners = if fresh {
            format!(
                "SELECT o.row_id, o.data, max(o.op_id) FROM ps_oplog o
                 WHERE o.row_type = ?1 AND {f} GROUP BY o.row_id"
            )
        } else {
            changed_winners_sql(&f)
        };
        // Rows left without any op: only rows marked updated can be in that state.
        let gone = format!(
            "SELECT u.row_id FROM ps_updated_rows u WHERE u.row_type = ?1 AND NOT EXISTS
               (SELECT 1 FROM ps_oplog o WHERE o.row_type = u.row_type AND o.row_id = u.row_id AND {f})"
        );
        let mut deletes = vec![];
        let mut targets = vec![];
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
                if bulk {
                    targets.push(Target {
                        row_type: ty.clone(),
                        insert: format!("INSERT OR REPLACE INTO {dt}(id, data)"),
                        with_type: false,
                    });
                }
                (
                    format!("INSERT OR REPLACE INTO {dt}(id, data) SELECT row_id, data FROM ({winners})"),
                    format!("DELETE FROM {dt} WHERE id IN ({gone})"),
                )
            } else {
                if bulk {
                    targets.push(Target {
                        row_type: ty.clone(),
                        insert: "INSERT OR REPLACE INTO ps_untyped(type, id, data)".to_string(),
                        with_type: true,
                    });
                }
                (
                    format!("INSERT OR REPLACE INTO ps_untyped(type, id, data) SELECT ?1, row_id, data FROM ({winners})"),
                    format!("DELETE FROM ps_untyped WHERE type = ?1 AND id IN ({gone})"),
                )
            };
            if !bulk {
                tx.execute(&upsert, [ty])?;
            }
            if full {
                deletes.push((delete, ty));
            }
        }
        // A bulk download's winners by one scan and a sort in Rust (the
        // statements above would sort in SQLite); the rest looks rows up by key.
        if let Some(scanned) = scanned {
            bulk_winners::fill(&tx, scanned, &targets)?;
            // The index is needed here only to find the rows left without an
            // op; otherwise it is built after this checkpoint is visible
            // (`Store::finish_bulk`) or when the next change needs it.
            let updated: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM ps_updated_rows)", [], |r| {
                    r.get(0)
                })?;
            if updated {
                bulk::finish(&tx)?;
            }
        }
        for (delete, ty) in deletes {
            tx.execute(&delete, [ty])?;
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
        journal::after_apply(&self.conn);
        Ok(SyncLocalOutcome::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &rusqlite::Connection, sql: &str, params: &[&str]) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| r.get(3))
            .unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    /// The incremental statements read the op log by index, never by a scan
    /// of it: their cost follows the changed rows, not the bucket's size.
    #[test]
    fn incremental_apply_searches_the_op_log() {
        let store = Store::open_in_memory(SchemaMode::Inferred).unwrap();
        let conn = store.connection();
        conn.execute_batch(
            "CREATE TEMP TABLE ps_changed(row_type TEXT NOT NULL, row_id TEXT NOT NULL,
                PRIMARY KEY(row_type, row_id)) WITHOUT ROWID;",
        )
        .unwrap();
        let cases = [
            (changed_rows_sql("1"), vec![]),
            (changed_rows_sql("b.id IN (1,2)"), vec![]),
            (changed_winners_sql("1"), vec!["todos"]),
            (changed_winners_sql("o.bucket IN (1,2)"), vec!["todos"]),
        ];
        for (sql, params) in cases {
            let plan = plan(conn, &sql, &params);
            assert!(
                plan.iter().any(|l| l.starts_with("SEARCH o USING")),
                "{sql}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|l| l.starts_with("SCAN o")),
                "{sql}: {plan:?}"
            );
        }
    }
}
