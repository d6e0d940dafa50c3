//! The first apply of a bulk download (see [`super::bulk`]): each row's
//! winner is found by one scan of the op log and a sort in Rust, and the data
//! tables are filled in key order.
//!
//! Why: without `ps_oplog_row` the winners were read by `GROUP BY row_id`,
//! i.e. SQLite's sorter carrying every row's data; with random (UUID) keys it
//! cost ~5 µs per row, most of a first sync's apply. The scan reads the op
//! log in rowid order (sequential pages) and a sort of 1M entries in memory
//! takes a fraction of a second; the rows are then inserted in the order of
//! the data table's primary key, so its b-trees are appended to
//! (CONTRIBUTING.md, "Where a first sync spends its time in the client").
//!
//! Memory: the op log's rows are held once (one byte arena plus 40 bytes per
//! op), which is what the sorter held too (`temp_store = MEMORY`).

use crate::error::{Error, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection};

/// Where one row type's winners go: the `INSERT OR REPLACE INTO …(…)` head
/// of the statement (without `VALUES`) and whether its first column is the
/// row type (`ps_untyped`).
pub(super) struct Target {
    pub row_type: String,
    pub insert: String,
    pub with_type: bool,
}

/// One op, its strings in [`Ops::arena`].
struct Op {
    /// The row id's first 8 bytes, big-endian: most comparisons end here.
    prefix: u64,
    op_id: i64,
    ty: u32,
    id: (usize, usize),
    /// `None` for a NULL `data`.
    data: Option<(usize, usize)>,
}

struct Ops {
    arena: Vec<u8>,
    ops: Vec<Op>,
}

impl Ops {
    fn push_bytes(&mut self, b: &[u8]) -> (usize, usize) {
        let start = self.arena.len();
        self.arena.extend_from_slice(b);
        (start, b.len())
    }
}

fn text(v: ValueRef<'_>) -> Option<&[u8]> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(b),
        _ => None,
    }
}

fn prefix(id: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = id.len().min(8);
    p[..n].copy_from_slice(&id[..n]);
    u64::from_be_bytes(p)
}

/// A bulk download's ops read by [`scan`] (or collected as they were stored,
/// see [`Collected`]), grouped by row type later.
pub(super) struct Scanned {
    all: Ops,
    /// The row types seen, in the order first seen; `Op::ty` indexes it.
    pub types: Vec<String>,
    /// The index of the last op's type: ops come grouped by type in practice.
    last: Option<u32>,
}

impl Scanned {
    fn new() -> Scanned {
        Scanned {
            all: Ops {
                arena: Vec::new(),
                ops: Vec::new(),
            },
            types: Vec::new(),
            last: None,
        }
    }

    fn push(&mut self, ty: &[u8], id: &[u8], op_id: i64, data: Option<&[u8]>) -> Result<()> {
        let ty_index = match self.last {
            Some(i) if self.types[i as usize].as_bytes() == ty => i,
            _ => {
                let i = match self.types.iter().position(|t| t.as_bytes() == ty) {
                    Some(i) => i,
                    None => {
                        let name = std::str::from_utf8(ty).map_err(|_| {
                            Error::Protocol("a row type in ps_oplog is not UTF-8".into())
                        })?;
                        self.types.push(name.to_string());
                        self.types.len() - 1
                    }
                } as u32;
                self.last = Some(i);
                i
            }
        };
        let p = prefix(id);
        let id = self.all.push_bytes(id);
        let data = data.map(|d| self.all.push_bytes(d));
        self.all.ops.push(Op {
            prefix: p,
            op_id,
            ty: ty_index,
            id,
            data,
        });
        Ok(())
    }
}

/// Reads every op matching `filter` (an expression over `o`) in one scan of
/// the op log (rowid order: sequential pages). The row types come out of the
/// same scan: without `ps_oplog_row`, a `SELECT DISTINCT row_type` was a
/// scan of the whole op log of its own.
pub(super) fn scan(conn: &Connection, filter: &str) -> Result<Scanned> {
    let mut out = Scanned::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT o.row_type, o.row_id, o.op_id, o.data FROM ps_oplog o
         WHERE o.row_type IS NOT NULL AND {filter}"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (Some(ty), Some(id)) = (text(r.get_ref(0)?), text(r.get_ref(1)?)) else {
            continue;
        };
        out.push(ty, id, r.get(2)?, text(r.get_ref(3)?))?;
    }
    Ok(out)
}

/// A bulk download's ops collected in memory as they are stored, so that its
/// first apply need not read them back from the file ([`scan`]).
///
/// Why: that scan is part of the apply, which nothing overlaps (the download
/// is over when it starts); collecting costs a copy of each op's id and data
/// while the stream is still arriving. Memory: what the scan allocates at the
/// apply anyway (the arena of [`Ops`]), held from the first data line on.
///
/// Valid only while it holds exactly the op log's ops: it starts with bulk
/// mode on an empty op log, each append is added, and anything else that
/// changes the op log (a REMOVE, a CLEAR, a forgotten bucket, the end of bulk
/// mode) or fails to (an error, so a transaction rolled back) drops it. Another connection's commit is
/// noticed by `PRAGMA data_version`; the apply then scans as before.
pub(super) struct Collected {
    ops: Scanned,
    /// This connection's `data_version` when collecting started: it changes
    /// only when another connection commits to the file.
    data_version: i64,
}

fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

impl Collected {
    /// Starts collecting (bulk mode was just entered on an empty op log).
    pub(super) fn start(conn: &Connection) -> Result<Collected> {
        Ok(Collected {
            ops: Scanned::new(),
            data_version: data_version(conn)?,
        })
    }

    /// One PUT appended to the op log.
    pub(super) fn push(&mut self, ty: &str, id: &str, op_id: i64, data: &str) -> Result<()> {
        self.ops
            .push(ty.as_bytes(), id.as_bytes(), op_id, Some(data.as_bytes()))
    }

    /// The ops, what [`scan`] with no filter would read now; `None` if
    /// another connection committed meanwhile.
    pub(super) fn into_scanned(self, conn: &Connection) -> Result<Option<Scanned>> {
        if data_version(conn)? != self.data_version {
            return Ok(None);
        }
        Ok(Some(self.ops))
    }
}

/// Writes the winner of every row of `targets`' types among the scanned ops,
/// as the set-based statement of `Store::sync_local` does: the op with the
/// highest `op_id`. Ops of a type without a target are left out.
pub(super) fn fill(conn: &Connection, scanned: Scanned, targets: &[Target]) -> Result<()> {
    let Scanned { all, types, .. } = scanned;
    // Scan order of types → index into `targets`.
    let to_target: Vec<Option<u32>> = types
        .iter()
        .map(|t| {
            targets
                .iter()
                .position(|x| &x.row_type == t)
                .map(|i| i as u32)
        })
        .collect();
    let Ops { arena, mut ops } = all;
    ops.retain_mut(|op| match to_target[op.ty as usize] {
        Some(t) => {
            op.ty = t;
            true
        }
        None => false,
    });
    let bytes = |(start, len): (usize, usize)| &arena[start..start + len];
    // By type, then row id as SQLite's BINARY collation orders TEXT (bytes),
    // then the highest op id first: each row's first entry is its winner.
    ops.sort_unstable_by(|a, b| {
        a.ty.cmp(&b.ty)
            .then(a.prefix.cmp(&b.prefix))
            .then_with(|| bytes(a.id).cmp(bytes(b.id)))
            .then(b.op_id.cmp(&a.op_id))
    });
    let mut batch: Vec<&Op> = Vec::with_capacity(INSERT_ROWS);
    let mut previous: Option<(u32, (usize, usize))> = None;
    for op in &ops {
        if let Some((ty, id)) = previous {
            if ty == op.ty && bytes(id) == bytes(op.id) {
                continue;
            }
        }
        previous = Some((op.ty, op.id));
        if batch.len() == INSERT_ROWS || batch.first().is_some_and(|b| b.ty != op.ty) {
            insert(conn, &targets[batch[0].ty as usize], &batch, &bytes)?;
            batch.clear();
        }
        batch.push(op);
    }
    if let Some(first) = batch.first() {
        insert(conn, &targets[first.ty as usize], &batch, &bytes)?;
    }
    Ok(())
}

/// Rows per multi-row `INSERT` of [`fill`]: one statement per row spent a
/// good part of its time starting and finishing the statement.
const INSERT_ROWS: usize = 32;

/// Inserts `ops` (winners of `target`'s type), a full batch in one statement.
fn insert<'a>(
    conn: &Connection,
    target: &Target,
    ops: &[&Op],
    bytes: &impl Fn((usize, usize)) -> &'a [u8],
) -> Result<()> {
    let sql = |n: usize| {
        let row = if target.with_type { "(?,?,?)" } else { "(?,?)" };
        let mut sql = format!("{} VALUES {row}", target.insert);
        for _ in 1..n {
            sql.push(',');
            sql.push_str(row);
        }
        sql
    };
    let mut values: Vec<ToSqlOutput<'_>> = Vec::with_capacity(ops.len() * 3);
    for op in ops {
        if target.with_type {
            values.push(ToSqlOutput::Borrowed(ValueRef::Text(
                target.row_type.as_bytes(),
            )));
        }
        values.push(ToSqlOutput::Borrowed(ValueRef::Text(bytes(op.id))));
        values.push(match op.data {
            Some(d) => ToSqlOutput::Borrowed(ValueRef::Text(bytes(d))),
            None => ToSqlOutput::Borrowed(ValueRef::Null),
        });
    }
    if ops.len() == INSERT_ROWS {
        conn.prepare_cached(&sql(INSERT_ROWS))?
            .execute(params_from_iter(values.iter()))?;
    } else {
        // The tail: one row at a time, so only two statements are cached.
        let per_row = values.len() / ops.len();
        let mut one = conn.prepare_cached(&sql(1))?;
        for row in values.chunks(per_row) {
            one.execute(params_from_iter(row.iter()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{SchemaMode, Store};
    use super::*;
    use outpost_protocol::DataLine;

    fn line(bucket: &str, ops: serde_json::Value) -> DataLine {
        serde_json::from_value(serde_json::json!({"bucket": bucket, "data": ops})).unwrap()
    }

    fn put(op: u64, ty: &str, id: &str) -> serde_json::Value {
        serde_json::json!({"op_id": op.to_string(), "op": "PUT", "object_type": ty,
            "object_id": id, "subkey": "s", "checksum": op, "data": format!("{{\"id\":\"{id}\"}}")})
    }

    /// One op of a [`Scanned`]: type, id, op id, data.
    type Entry = (String, Vec<u8>, i64, Option<Vec<u8>>);

    /// What [`Scanned`] holds, comparable.
    fn contents(s: &Scanned) -> Vec<Entry> {
        let b = |(start, len): (usize, usize)| s.all.arena[start..start + len].to_vec();
        s.all
            .ops
            .iter()
            .map(|op| {
                (
                    s.types[op.ty as usize].clone(),
                    b(op.id),
                    op.op_id,
                    op.data.map(b),
                )
            })
            .collect()
    }

    /// The ops collected while a first download is stored are what a scan
    /// of the op log reads; a REMOVE (or anything else that is not an
    /// append) drops them, and so does another connection's commit.
    #[test]
    fn collected_ops_equal_the_scan_until_something_else_changes_the_op_log() {
        let mut store = Store::open_in_memory(SchemaMode::Inferred).unwrap();
        store
            .save_data(&line(
                "a[]",
                serde_json::json!([put(1, "todos", "t1"), put(3, "lists", "l1")]),
            ))
            .unwrap();
        store
            .save_data(&line(
                "b[]",
                serde_json::json!([put(2, "todos", "t1"), put(4, "todos", "t2")]),
            ))
            .unwrap();
        let collected = store.collected.take().expect("collected in bulk mode");
        let got = collected.into_scanned(store.connection()).unwrap().unwrap();
        let scanned = scan(store.connection(), "1").unwrap();
        assert_eq!(contents(&got), contents(&scanned));
        assert_eq!(got.types, scanned.types);
        assert_eq!(contents(&got).len(), 4);

        let mut store = Store::open_in_memory(SchemaMode::Inferred).unwrap();
        store
            .save_data(&line("a[]", serde_json::json!([put(1, "todos", "t1")])))
            .unwrap();
        assert!(store.collected.is_some());
        let remove = serde_json::json!({"op_id": "2", "op": "REMOVE", "object_type": "todos",
            "object_id": "t1", "subkey": "s", "checksum": 2});
        store
            .save_data(&line("a[]", serde_json::json!([remove])))
            .unwrap();
        assert!(store.collected.is_none(), "a REMOVE drops the collection");

        let dir = std::env::temp_dir().join(format!("outpost-collected-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        let mut store = Store::open(&path, SchemaMode::Inferred).unwrap();
        store
            .save_data(&line("a[]", serde_json::json!([put(1, "todos", "t1")])))
            .unwrap();
        let other = Connection::open(&path).unwrap();
        other
            .execute("INSERT INTO ps_kv(key, value) VALUES ('x', 'y')", [])
            .unwrap();
        let collected = store.collected.take().unwrap();
        assert!(
            collected
                .into_scanned(store.connection())
                .unwrap()
                .is_none(),
            "another connection committed"
        );
        drop((store, other));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
