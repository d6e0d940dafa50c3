//! The journal of a file database: a rollback journal until its first
//! checkpoint is applied, WAL from then on.
//!
//! Why: in WAL mode every page of a first download is written twice, to the
//! WAL at each commit and again into the file when the WAL is checkpointed
//! (the commit of a 1M-row first apply spent ~5 s copying the WAL back). A
//! rollback journal keeps only the old contents of pages that existed when a
//! transaction began; the pages a download appends past the old end of the
//! file are written once (CONTRIBUTING.md, "Where a first sync spends its
//! time in the client").
//!
//! The crash guarantee is SQLite's either way: killed mid-transaction, the
//! next open rolls the hot journal back, so the file is at its last commit.
//! `synchronous = FULL` while the rollback journal is used keeps power loss
//! from corrupting the file (with NORMAL, SQLite documents a small chance);
//! it costs an fsync or two per committed batch, not per row.
//!
//! What the rollback journal gives up until the switch: readers of the file
//! (`outpost query`, the read-only connection of `Database`) wait while a
//! commit, or the first apply's page spills, hold the file's lock (the busy
//! timeout), instead of reading the last commit beside the writer. A file
//! with nothing applied has nothing to show them yet.

use crate::error::Result;
use rusqlite::Connection;

fn journal_mode(conn: &Connection) -> Result<String> {
    Ok(conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
}

/// Chooses the journal of a file just opened (and migrated): WAL if it
/// already is (files of older clients, files after their first apply), or
/// once anything was applied; otherwise the rollback journal.
pub(super) fn settle(conn: &Connection) -> Result<()> {
    match journal_mode(conn)?.as_str() {
        "wal" => conn.pragma_update(None, "synchronous", "NORMAL")?,
        "delete" => {
            let applied: bool =
                conn.query_row("SELECT EXISTS (SELECT 1 FROM ps_sync_state)", [], |r| {
                    r.get(0)
                })?;
            if applied {
                to_wal(conn)?;
            } else {
                conn.pragma_update(None, "synchronous", "FULL")?;
            }
        }
        // In-memory databases.
        _ => {}
    }
    Ok(())
}

/// After a checkpoint was applied (outside any transaction): WAL from now on.
/// A failure (another connection holding the file) is not the apply's: the
/// switch is tried again after the next apply and at the next open.
pub(super) fn after_apply(conn: &Connection) {
    if journal_mode(conn).is_ok_and(|m| m == "delete") {
        let _ = to_wal(conn);
    }
}

fn to_wal(conn: &Connection) -> Result<()> {
    // WAL lets `outpost query` read while `outpost sync` writes. In WAL
    // mode, NORMAL syncs at checkpoints, not at every commit: a crash of the
    // app or the OS never corrupts the file or splits a transaction; power
    // loss may lose the last commits (a re-download; local writes are the
    // app's last few). Without it every data line would cost an fsync.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{SchemaMode, Store};
    use super::*;

    /// A file left in rollback mode after something was applied (the switch
    /// failed, or a client killed right after the commit) is WAL at the next
    /// open; a file with nothing applied keeps the rollback journal.
    #[test]
    fn wal_once_something_was_applied() {
        let dir = std::env::temp_dir().join(format!("outpost-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        {
            let store = Store::open(&path, SchemaMode::Inferred).unwrap();
            assert_eq!(journal_mode(store.connection()).unwrap(), "delete");
            store
                .connection()
                .execute_batch(
                    "INSERT INTO ps_sync_state(priority, last_synced_at) VALUES (2147483647, 'now')",
                )
                .unwrap();
        }
        let store = Store::open(&path, SchemaMode::Inferred).unwrap();
        assert_eq!(journal_mode(store.connection()).unwrap(), "wal");
        let sync: i64 = store
            .connection()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
