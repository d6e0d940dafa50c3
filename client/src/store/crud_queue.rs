//! Local writes and the upload queue: write transactions grouped by `tx_id`,
//! batches for upload, completion, and rejection into `ps_crud_rejected`.

use super::query::set_kv;
use super::Store;
use crate::error::Result;
use outpost_protocol::http::CrudEntry;
use outpost_protocol::OpId;
use rusqlite::{params, TransactionBehavior};

/// One queued local write.
#[derive(Clone, Debug, PartialEq)]
pub struct CrudItem {
    pub id: i64,
    pub entry: CrudEntry,
}

impl Store {
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
}
