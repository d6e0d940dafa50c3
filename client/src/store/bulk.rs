//! Bulk mode: a first download into an empty op log runs without the unique
//! `ps_oplog_row` index, which is built once, sorted, after its checkpoint is
//! applied.
//!
//! Why: keys arrive in no index order (UUIDs; even `t1, t11, t21, …`), so
//! maintaining that index row by row writes to every one of its leaf pages
//! in every committed batch; with 1M UUID keys it was most of the time of a
//! first sync (SQLite's page cache, b-tree seeks, and the WAL copies of the
//! same pages once per batch). Appending to the table and running
//! `CREATE UNIQUE INDEX` at the end does that work once, in key order
//! (CONTRIBUTING.md, "Where a first sync spends its time in the client").
//!
//! The mode is on while `ps_kv` holds [`BULK_KEY`] (it survives restarts, so
//! an interrupted download goes on appending). Without the index a PUT cannot
//! find the op it supersedes, so every PUT is appended and the duplicates are
//! resolved when the mode ends; a REMOVE needs the op it removes, so it ends
//! the mode first. The by-bucket index `ps_oplog_opid` is left out too (see
//! [`OPID_INDEX`]). The
//! checksums are right throughout: a superseded op's hash only moves from the
//! bucket's `op_checksum` to its `add_checksum`, which leaves their sum alone.
//!
//! The first apply reads the winners by a scan and a sort in Rust
//! ([`super::bulk_winners`]) and commits without the index: the rows are
//! visible first. The index is built next, in a transaction of its own
//! (`Store::finish_bulk`, which `outpost sync` calls after that apply and
//! `--once` leaves out), or by whatever needs it first: a data line for a
//! bucket applied before, a REMOVE, an apply that is not a first download
//! or that has rows to delete (`ps_updated_rows`). The next change after a
//! `--once` first sync therefore waits for the build (~2 s for 1M text ids,
//! ~5 s for UUID keys on the 2-core machine).
//!
//! Everything here runs inside the caller's transaction: the index is dropped
//! in the transaction that stores the first data line, and built in the one
//! that needs it, so a crash leaves the file either before or after each step.

use super::query::{get_kv, set_kv};
use crate::error::Result;
use rusqlite::Connection;

/// `ps_kv` key present while `ps_oplog_row` is dropped.
pub(super) const BULK_KEY: &str = "oplog_bulk";

/// The index bulk mode drops (the definition of migration 4).
const ROW_INDEX: &str =
    "CREATE UNIQUE INDEX ps_oplog_row ON ps_oplog(row_type, row_id, bucket, key)";

/// The by-bucket index (migration 1), also left out while in bulk mode: a
/// first download interleaves op ids across buckets, so keeping it cost a
/// b-tree insert per op at one of several places, and nothing in bulk mode
/// needs it (a CLEAR or a forgotten bucket scans instead; the first apply
/// scans anyway). `IF NOT EXISTS`: a file that entered bulk mode before this
/// index was dropped still has it.
const OPID_INDEX: &str = "CREATE INDEX IF NOT EXISTS ps_oplog_opid ON ps_oplog(bucket, op_id)";

pub(super) fn in_bulk(conn: &Connection) -> Result<bool> {
    Ok(get_kv(conn, BULK_KEY)?.is_some())
}

/// Enters bulk mode if the op log is empty (nothing to keep indexed).
pub(super) fn enter_if_empty(conn: &Connection) -> Result<bool> {
    let empty: bool = conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM ps_oplog)", [], |r| {
        r.get(0)
    })?;
    if empty {
        conn.execute_batch(
            "DROP INDEX IF EXISTS ps_oplog_row; DROP INDEX IF EXISTS ps_oplog_opid;",
        )?;
        set_kv(conn, BULK_KEY, "1")?;
    }
    Ok(empty)
}

/// Leaves bulk mode: drops superseded duplicates (if any) and builds the index.
pub(super) fn finish(conn: &Connection) -> Result<()> {
    if !in_bulk(conn)? {
        return Ok(());
    }
    // The common case (every key once, e.g. a compacted bucket) costs only the
    // index build; a constraint failure rolls back that statement alone.
    match conn.execute_batch(ROW_INDEX) {
        Ok(()) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            drop_superseded(conn)?;
            conn.execute_batch(ROW_INDEX)?;
        }
        Err(e) => return Err(e.into()),
    }
    conn.execute_batch(OPID_INDEX)?;
    conn.execute("DELETE FROM ps_kv WHERE key = ?1", [BULK_KEY])?;
    Ok(())
}

/// Deletes every op that a later op of the same bucket and key superseded,
/// moving its hash from the bucket's `op_checksum` to its `add_checksum`.
fn drop_superseded(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE INDEX ps_oplog_dedupe ON ps_oplog(row_type, row_id, bucket, key, op_id);
         CREATE TEMP TABLE ps_superseded AS
           SELECT o.rowid AS r, o.bucket, o.hash FROM ps_oplog o WHERE EXISTS
             (SELECT 1 FROM ps_oplog p WHERE p.row_type = o.row_type AND p.row_id = o.row_id
                AND p.bucket = o.bucket AND p.key = o.key AND p.op_id > o.op_id);
         UPDATE ps_buckets SET
             add_checksum = (add_checksum + s.h) % 4294967296,
             op_checksum = ((op_checksum - s.h) % 4294967296 + 4294967296) % 4294967296
           FROM (SELECT bucket, sum(hash) AS h FROM temp.ps_superseded GROUP BY bucket) s
           WHERE ps_buckets.id = s.bucket;
         DELETE FROM ps_oplog WHERE rowid IN (SELECT r FROM temp.ps_superseded);
         DROP TABLE temp.ps_superseded;
         DROP INDEX ps_oplog_dedupe;",
    )?;
    Ok(())
}
