//! Versioned layout migrations: each step upgrades by one version; a fresh
//! database gets the latest layout in one step.

use super::query::table_exists;
use crate::error::{Error, Result};
use rusqlite::Connection;

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
    // 5: Sync Streams subscriptions (PowerSync's ps_stream_subscriptions, plus
    // the last time a handle held one): they survive restarts, and an
    // unsubscribed one stays requested until expires_at.
    "CREATE TABLE ps_stream_subscriptions(id INTEGER PRIMARY KEY NOT NULL, stream_name TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0, is_default INTEGER NOT NULL DEFAULT 0, local_priority INTEGER,
        local_params TEXT NOT NULL DEFAULT 'null', ttl INTEGER, expires_at INTEGER, last_active_at INTEGER,
        last_synced_at INTEGER, UNIQUE(stream_name, local_params));",
    // 6: `ps_oplog.key` holds the subkey alone. It held `type/id/subkey`,
    // repeating the two columns that precede it in `ps_oplog_row`: ~45 bytes
    // of ~330 per op with UUID keys, written with every op and sorted by the
    // index build of a first download. Only keys of that form are rewritten.
    "UPDATE ps_oplog SET key = substr(key, length(row_type) + length(row_id) + 3)
       WHERE substr(key, 1, length(row_type) + length(row_id) + 2) = row_type || '/' || row_id || '/'",
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
       status INTEGER, reason TEXT, rejected_at TEXT NOT NULL);
    CREATE TABLE ps_stream_subscriptions(id INTEGER PRIMARY KEY NOT NULL, stream_name TEXT NOT NULL,
       active INTEGER NOT NULL DEFAULT 0, is_default INTEGER NOT NULL DEFAULT 0, local_priority INTEGER,
       local_params TEXT NOT NULL DEFAULT 'null', ttl INTEGER, expires_at INTEGER, last_active_at INTEGER,
       last_synced_at INTEGER, UNIQUE(stream_name, local_params));";

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
    // Bulk mode drops an index of layout 4 for a while: rebuild it before a
    // migration that may expect it.
    if (4..latest).contains(&version) && super::bulk::in_bulk(conn)? {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match super::bulk::finish(conn) {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::quote_ident;
    use crate::store::{SchemaMode, Store};
    use outpost_protocol::OpId;

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

    #[test]
    fn a_layout_4_database_gains_stream_subscriptions() {
        use crate::streams::{StreamKey, SubscribeOptions};
        let conn = Connection::open_in_memory().unwrap();
        migrate_to(&conn, 4).unwrap();
        conn.execute(
            "INSERT INTO ps_buckets(name, last_op) VALUES ('b[]', 7)",
            [],
        )
        .unwrap();
        let mut store = Store::with_connection(conn, SchemaMode::Existing).unwrap();
        let key = StreamKey::new("s", Some(&serde_json::json!({"k": 1})));
        store
            .subscribe_stream(&key, &SubscribeOptions::default(), 0)
            .unwrap();
        let subs = store.requested_streams(&Default::default(), 1).unwrap();
        assert_eq!(subs[0].stream, "s");
        assert_eq!(store.bucket_positions().unwrap()[0].last_op, OpId(7));
    }

    /// Layout 6 keeps only the subkey in `ps_oplog.key`: an op stored by an
    /// older client is still found (and superseded) by its key afterwards.
    #[test]
    fn a_layout_5_op_log_keeps_its_subkeys() {
        use outpost_protocol::DataLine;
        let conn = Connection::open_in_memory().unwrap();
        migrate_to(&conn, 5).unwrap();
        conn.execute_batch(
            "INSERT INTO ps_buckets(name, last_op, last_applied_op, op_checksum) VALUES ('b[]', 1, 1, 5);
             INSERT INTO ps_oplog(bucket, op_id, row_type, row_id, key, data, hash)
               VALUES (1, 1, 'todos', 'a/b', 'todos/a/b/s', '{}', 5),
                      (1, 1, 'todos', 'x', 'todos/x/', '{}', 0);",
        )
        .unwrap();
        let mut store = Store::with_connection(conn, SchemaMode::Existing).unwrap();
        let keys: Vec<String> = store
            .connection()
            .prepare("SELECT key FROM ps_oplog ORDER BY row_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(keys, ["s", ""]);
        let line: DataLine = serde_json::from_value(serde_json::json!({"bucket": "b[]", "data": [
            {"op_id": "2", "op": "PUT", "object_type": "todos", "object_id": "a/b", "subkey": "s",
             "checksum": 7, "data": "{}"}]}))
        .unwrap();
        store.save_data(&line).unwrap();
        let (n, add, opc): (i64, i64, i64) = store
            .connection()
            .query_row(
                "SELECT (SELECT count(*) FROM ps_oplog), add_checksum, op_checksum FROM ps_buckets",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((n, add, opc), (2, 5, 7), "the old op was superseded");
    }
}
