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

    /// A first download killed mid-transaction (its pages already spilled
    /// into the file, the journal hot): the next open rolls it back to the
    /// last commit. The copy of the file and its journal stands in for the
    /// killed process's leftovers.
    #[test]
    fn a_download_killed_mid_transaction_is_rolled_back_at_the_next_open() {
        let dir = std::env::temp_dir().join(format!("outpost-journal-kill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, copy) = (dir.join("db.sqlite"), dir.join("copy.sqlite"));
        let mut store = Store::open(&path, SchemaMode::Inferred).unwrap();
        let conn = store.connection_mut();
        conn.execute_batch(
            "INSERT INTO ps_oplog(bucket, op_id, row_type, row_id, key, data, hash)
               VALUES (1, 1, 'todos', 'committed', 'k', '{}', 0)",
        )
        .unwrap();
        let committed = std::fs::metadata(&path).unwrap().len();
        // A small cache makes the transaction write into the file before its commit.
        conn.pragma_update(None, "cache_size", 10).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(
            "WITH RECURSIVE g(n) AS (SELECT 2 UNION ALL SELECT n + 1 FROM g WHERE n < 20000)
             INSERT INTO ps_oplog(bucket, op_id, row_type, row_id, key, data, hash)
               SELECT 1, n, 'todos', 'r' || n, 'k' || n, printf('%.200c', 'x'), 0 FROM g",
        )
        .unwrap();
        let journal = |p: &std::path::Path| {
            let mut s = p.as_os_str().to_owned();
            s.push("-journal");
            std::path::PathBuf::from(s)
        };
        assert!(journal(&path).exists(), "a rollback journal, not a WAL");
        assert!(
            std::fs::metadata(&path).unwrap().len() > committed,
            "the transaction's pages are in the file before its commit"
        );
        std::fs::copy(&path, &copy).unwrap();
        std::fs::copy(journal(&path), journal(&copy)).unwrap();
        drop(tx);
        drop(store);

        let store = Store::open(&copy, SchemaMode::Inferred).unwrap();
        let conn = store.connection();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let ids: Vec<String> = conn
            .prepare("SELECT row_id FROM ps_oplog")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(ids, vec!["committed".to_string()]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
