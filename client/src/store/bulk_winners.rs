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

use crate::error::Result;
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

/// Writes the winner of every row of `targets`' types among the ops matching
/// `filter` (an expression over `o`), as the set-based statement of
/// `Store::sync_local` does: the op with the highest `op_id`.
pub(super) fn fill(conn: &Connection, filter: &str, targets: &[Target]) -> Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let mut all = Ops {
        arena: Vec::new(),
        ops: Vec::new(),
    };
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT o.row_type, o.row_id, o.op_id, o.data FROM ps_oplog o
             WHERE o.row_type IS NOT NULL AND {filter}"
        ))?;
        let mut rows = stmt.query([])?;
        // Ops come grouped by type in practice: remember the last one's index.
        let mut last: Option<(Vec<u8>, Option<u32>)> = None;
        while let Some(r) = rows.next()? {
            let Some(ty) = text(r.get_ref(0)?) else {
                continue;
            };
            let ty_index = match &last {
                Some((name, index)) if name.as_slice() == ty => *index,
                _ => {
                    let index = targets
                        .iter()
                        .position(|t| t.row_type.as_bytes() == ty)
                        .map(|i| i as u32);
                    last = Some((ty.to_vec(), index));
                    index
                }
            };
            let Some(ty_index) = ty_index else { continue };
            let Some(id) = text(r.get_ref(1)?) else {
                continue;
            };
            let op_id: i64 = r.get(2)?;
            let p = prefix(id);
            let id = all.push_bytes(id);
            let data = text(r.get_ref(3)?).map(|d| all.push_bytes(d));
            all.ops.push(Op {
                prefix: p,
                op_id,
                ty: ty_index,
                id,
                data,
            });
        }
    }
    let Ops { arena, mut ops } = all;
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
