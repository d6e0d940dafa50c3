//! SQL text shared by the parameter and data compilers: bucket ids, lookup
//! values, primary-key expressions and the per-row query variants.

use crate::catalog::Table;
use crate::{quote_ident, quote_literal};

/// The tick's CTE naming `(relid, def)` pairs a deploy re-evaluates in full.
pub const FULL_CTE: &str = "_full";
/// The tick's CTE naming the `(relid, pk)` keys that changed.
pub const KEYS_CTE: &str = "_keys";

/// A statement that makes Postgres type-check a compiled query without a
/// tick: the `_full` CTE the query refers to is defined empty around it.
pub fn check_sql(sql: &str) -> String {
    format!(
        "WITH {FULL_CTE} (relid, def) AS (SELECT 0::oid, ''::text) SELECT * FROM ({sql}) _check LIMIT 0"
    )
}

/// [`check_sql`] for a join's key query ([`super::JoinKeys`]), which reads
/// the tick's `_changes` and `_trunc`.
pub fn check_join_keys_sql(sql: &str) -> String {
    format!(
        "WITH _changes (relid, pk, kind, def) AS (SELECT 0::oid, NULL::jsonb, 'k'::\"char\", NULL::text), _trunc (relid) AS (SELECT 0::oid) SELECT * FROM ({sql}) _check LIMIT 0"
    )
}

/// `'name[' || concat_ws(',', v1, v2) || ']'` where each `v` is jsonb text.
pub fn bucket_id_sql(name: &str, values: &[String]) -> String {
    if values.is_empty() {
        return quote_literal(&format!("{name}[]"));
    }
    format!(
        "({} || concat_ws(',', {}) || ']')",
        quote_literal(&format!("{name}[")),
        values.join(", ")
    )
}

/// A value (already jsonb) as it appears in a bucket id: its JSON text,
/// `null` for NULL (`concat_ws` would drop a NULL, shifting the other
/// parameters).
pub fn jsonb_text_of(jsonb: &str) -> String {
    format!("coalesce(({jsonb})::text, 'null')")
}

/// Lookup values compare as text (`'5'` from a JWT matches integer 5).
pub fn lookup_text(jsonb_expr: &str) -> String {
    format!("({jsonb_expr} #>> '{{}}')")
}

/// The primary key of a row as `jsonb_build_array(...)`.
pub fn pk_json(t: &Table, alias: &str) -> Result<String, String> {
    if t.primary_key.is_empty() {
        return Err(format!(
            "table \"{}\" has no primary key; Outpost needs one to track its rows",
            t.name
        ));
    }
    let a = quote_ident(alias);
    let cols: Vec<String> = t
        .primary_key
        .iter()
        .map(|c| format!("{a}.{}", quote_ident(c)))
        .collect();
    Ok(format!("jsonb_build_array({})", cols.join(", ")))
}

/// The tick's keys a query of definition `def` evaluates: untagged keys
/// (a writer changed the row) and keys tagged with `def` (a joined table's
/// row changed, and `def` has a data query reading it; the tick tags such
/// keys with the joining definition so that other definitions skip them).
/// Keys a deploy queues carry their definition too, but only for a table
/// the definition re-evaluates in full, where its keyed queries are off.
pub fn keys_of(def: &str) -> String {
    format!("(k.def IS NULL OR k.def = {})", quote_literal(def))
}

/// The primary key of a row as `jsonb_build_array(...)`, and the FROM item
/// that reads only the rows of definition `def` whose keys the tick saw
/// change, in place of `table AS alias`.
///
/// The keys drive: their distinct values, then one primary-key probe each
/// (`OFFSET 0` keeps the planner from flattening the probe). Written as
/// `key IN (SELECT … FROM _keys)`, the planner was free to scan the table
/// and rescan the keys for every row, which it did whenever the table's
/// statistics said it was empty (analyzed after a big `DELETE`, pages kept):
/// 30k parameter rows then ticked in 3 minutes instead of 2 seconds.
pub fn pk_exprs(t: &Table, alias: &str, def: &str) -> Result<(String, String), String> {
    let json = pk_json(t, alias)?;
    let mut casts = Vec::new();
    let mut probes = Vec::new();
    for (i, c) in t.primary_key.iter().enumerate() {
        let ty = &t.column(c).expect("pk columns exist").type_name;
        casts.push(format!("(k.pk ->> {i})::{ty} AS _k{i}"));
        probes.push(format!("_t.{} = _k._k{i}", quote_ident(c)));
    }
    let keyed_from = format!(
        "(SELECT _t.* FROM (SELECT DISTINCT {} FROM {KEYS_CTE} k WHERE k.relid = {} AND {}) _k \
         CROSS JOIN LATERAL (SELECT * FROM {} AS _t WHERE {} OFFSET 0) _t) AS {}",
        casts.join(", "),
        t.oid,
        keys_of(def),
        t.qualified(),
        probes.join(" AND "),
        quote_ident(alias)
    );
    Ok((json, keyed_from))
}

/// One per-row query before it is specialised: what it selects, its own
/// conditions, and how the tick narrows it to the rows it must evaluate.
pub struct RowQuery<'a> {
    /// `SELECT <outputs>`, without FROM.
    pub select: String,
    /// The query's table as a FROM item (`table AS alias`).
    pub from_table: String,
    /// What follows the query's table in FROM (joins, laterals).
    pub from_rest: String,
    pub conds: Vec<String>,
    pub table: &'a Table,
    pub bucket: &'a str,
    /// The FROM item of the keyed variant ([`pk_exprs`]).
    pub keyed_from: String,
}

impl RowQuery<'_> {
    /// `_full` names this query's table and bucket (a deploy (re)defined it).
    fn full_mark(&self) -> String {
        format!(
            "(EXISTS (SELECT 1 FROM {FULL_CTE} f WHERE f.def = {} AND f.relid = {}))",
            quote_literal(self.bucket),
            self.table.oid
        )
    }

    fn with(&self, from: &str, extra: &[String]) -> String {
        let conds: Vec<&str> = self.conds.iter().chain(extra).map(String::as_str).collect();
        format!(
            "{} FROM {from} {} WHERE {}",
            self.select,
            self.from_rest,
            conds.join(" AND ")
        )
    }

    /// Evaluates the whole table when a deploy (re)defines the bucket.
    pub fn full(&self) -> String {
        self.with(&self.from_table, &[self.full_mark()])
    }

    /// Evaluates the rows whose keys changed.
    pub fn keyed(&self) -> String {
        self.with(&self.keyed_from, &[format!("NOT {}", self.full_mark())])
    }
}
