//! Storing downloaded ops: data lines into `ps_oplog` (with the bucket's
//! checksums), and forgetting buckets.

use super::bulk_winners::Collected;
use super::{bulk, Store};
use crate::error::{Error, Result};
use outpost_protocol::{Checksum, DataLine, OpType};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, OptionalExtension};

impl Store {
    /// Stores a data line's ops in one transaction (see [`save_line`]).
    pub fn save_data(&mut self, line: &DataLine) -> Result<()> {
        self.save_lines(&[line])
    }

    /// Stores data lines in one transaction. The ops of a first download are
    /// also collected for its apply ([`Collected`]); a failure drops them.
    pub(super) fn save_lines(&mut self, lines: &[&DataLine]) -> Result<()> {
        let collected = &mut self.collected;
        let r = (|| {
            let tx = self.conn.transaction()?;
            for line in lines {
                save_line(&tx, line, collected)?;
            }
            tx.commit()?;
            Ok(())
        })();
        if r.is_err() {
            *collected = None;
        }
        r
    }

    /// Forgets buckets. Their rows stay visible until the next apply re-derives them.
    pub fn delete_buckets(&mut self, names: &[String]) -> Result<()> {
        self.collected = None;
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
}

/// Stores a data line's ops (reference §7, "Applying a data line") in `tx`.
///
/// A PUT is inserted with `ON CONFLICT DO NOTHING` against the unique
/// `ps_oplog_row` index: in the common case (no earlier op for the key, e.g. an
/// initial sync) that one statement is the whole cost. Only when the key already
/// has an op is the old hash read and the row replaced.
///
/// The first download into an empty op log runs in [`bulk`] mode (no unique
/// index: every PUT appends, the index is built at the checkpoint); a REMOVE
/// ends that mode before it looks up the op it removes. A bulk download's
/// appends also go to `collect` while it is `Some`; any other change to the
/// op log sets it to `None`.
fn save_line(
    tx: &rusqlite::Transaction,
    line: &DataLine,
    collect: &mut Option<Collected>,
) -> Result<()> {
    tx.prepare_cached("INSERT INTO ps_buckets(name) VALUES (?1) ON CONFLICT(name) DO NOTHING")?
        .execute([&line.bucket])?;
    let mut bulk = bulk::in_bulk(tx)?;
    if bulk {
        // A bucket applied before gets changes, not a first download: they
        // would only pile up duplicates for the index build to resolve.
        let applied: bool = tx
            .prepare_cached("SELECT last_applied_op <> 0 FROM ps_buckets WHERE name = ?1")?
            .query_row([&line.bucket], |r| r.get(0))?;
        if applied {
            bulk::finish(tx)?;
            bulk = false;
        }
    }
    // Read after any `bulk::finish` above: it moves checksums between the totals.
    let (bucket, mut last_op, add, opc, fresh): (i64, i64, i64, i64, bool) = tx
        .prepare_cached(
            "SELECT id, last_op, add_checksum, op_checksum, last_applied_op = 0
               FROM ps_buckets WHERE name = ?1",
        )?
        .query_row([&line.bucket], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let mut add = Checksum(add as u32);
    let mut opc = Checksum(opc as u32);
    let mut cleared = false;
    if !bulk && fresh && line.data.iter().any(|op| op.op == OpType::Put) {
        bulk = bulk::enter_if_empty(tx)?;
        if bulk {
            *collect = Some(Collected::start(tx)?);
        }
    }
    if !bulk {
        *collect = None;
    }
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
        let mut appends = Appends::default();
        for op in &line.data {
            if bulk && op.op == OpType::Put {
                // Nothing to supersede without the unique index: append.
                let (Some(ty), Some(id), Some(data)) = (&op.object_type, &op.object_id, &op.data)
                else {
                    return Err(Error::Protocol(format!(
                        "PUT {} in bucket {:?} has no object_type/object_id/data",
                        op.op_id, line.bucket
                    )));
                };
                opc += op.checksum;
                if let Some(c) = collect {
                    c.push(ty, id, op.op_id.0 as i64, data)?;
                }
                appends.push(
                    tx,
                    bucket,
                    op.op_id.0 as i64,
                    ty,
                    id,
                    op.subkey.as_deref(),
                    data,
                    op.checksum.0 as i64,
                )?;
                last_op = last_op.max(op.op_id.0 as i64);
                continue;
            }
            appends.flush(tx, bucket)?;
            if op.op != OpType::Move {
                *collect = None;
            }
            if bulk && op.op == OpType::Remove {
                // Dropping superseded ops moves checksums within the stored
                // totals: store this line's so far, and read them back.
                tx.prepare_cached(
                    "UPDATE ps_buckets SET add_checksum = ?2, op_checksum = ?3 WHERE id = ?1",
                )?
                .execute(params![bucket, add.0 as i64, opc.0 as i64])?;
                bulk::finish(tx)?;
                let (a, o): (i64, i64) = tx
                    .prepare_cached(
                        "SELECT add_checksum, op_checksum FROM ps_buckets WHERE id = ?1",
                    )?
                    .query_row([bucket], |r| Ok((r.get(0)?, r.get(1)?)))?;
                add = Checksum(a as u32);
                opc = Checksum(o as u32);
                bulk = false;
            }
            match op.op {
                OpType::Put | OpType::Remove => {
                    let (Some(ty), Some(id)) = (&op.object_type, &op.object_id) else {
                        return Err(Error::Protocol(format!(
                            "op {} in bucket {:?} has no object_type/object_id",
                            op.op_id, line.bucket
                        )));
                    };
                    // The subkey alone: type and id are columns beside it.
                    let key = op.subkey.as_deref().unwrap_or("");
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
        appends.flush(tx, bucket)?;
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

/// Rows per multi-row `INSERT` of [`Appends`].
const APPEND_ROWS: usize = 32;

/// A bulk download's PUTs, inserted [`APPEND_ROWS`] to a statement.
///
/// Why: in bulk mode every PUT is an append, and one `INSERT` per op spent as
/// much in starting and finishing the statement (opening the table's and the
/// index's cursors, resetting) as in writing the row.
#[derive(Default)]
struct Appends<'a> {
    rows: Vec<Append<'a>>,
}

/// One PUT of [`Appends`].
struct Append<'a> {
    op_id: i64,
    hash: i64,
    ty: &'a str,
    id: &'a str,
    /// `ps_oplog.key`: the subkey, `""` for none.
    key: &'a str,
    data: &'a str,
}

impl<'a> Appends<'a> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        tx: &rusqlite::Transaction,
        bucket: i64,
        op_id: i64,
        ty: &'a str,
        id: &'a str,
        subkey: Option<&'a str>,
        data: &'a str,
        hash: i64,
    ) -> Result<()> {
        self.rows.push(Append {
            op_id,
            hash,
            ty,
            id,
            key: subkey.unwrap_or(""),
            data,
        });
        if self.rows.len() == APPEND_ROWS {
            self.flush(tx, bucket)?;
        }
        Ok(())
    }

    fn flush(&mut self, tx: &rusqlite::Transaction, bucket: i64) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let sql = |n: usize| {
            let mut sql = String::from(
                "INSERT INTO ps_oplog(bucket, op_id, row_type, row_id, key, data, hash) VALUES ",
            );
            for i in 0..n {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?,?,?,?)");
            }
            sql
        };
        let mut values: Vec<ToSqlOutput<'_>> = Vec::with_capacity(self.rows.len() * 7);
        for &Append {
            op_id,
            hash,
            ty,
            id,
            key,
            data,
        } in &self.rows
        {
            values.extend([
                ToSqlOutput::Borrowed(ValueRef::Integer(bucket)),
                ToSqlOutput::Borrowed(ValueRef::Integer(op_id)),
                ToSqlOutput::Borrowed(ValueRef::Text(ty.as_bytes())),
                ToSqlOutput::Borrowed(ValueRef::Text(id.as_bytes())),
                ToSqlOutput::Borrowed(ValueRef::Text(key.as_bytes())),
                ToSqlOutput::Borrowed(ValueRef::Text(data.as_bytes())),
                ToSqlOutput::Borrowed(ValueRef::Integer(hash)),
            ]);
        }
        if self.rows.len() == APPEND_ROWS {
            tx.prepare_cached(&sql(APPEND_ROWS))?
                .execute(rusqlite::params_from_iter(values.iter()))?;
        } else {
            // A line's tail: one row at a time, so only two statements are cached.
            let mut one = tx.prepare_cached(&sql(1))?;
            for row in values.chunks(7) {
                one.execute(rusqlite::params_from_iter(row.iter()))?;
            }
        }
        drop(values);
        self.rows.clear();
        Ok(())
    }
}
