//! Views inferred from the synced rows ([`super::SchemaMode::Inferred`]).

use super::query::{get_kv, set_kv};
use crate::error::Result;
use crate::schema::{data_table, quote_ident, Column, ColumnType, Schema, Table};
use rusqlite::Connection;
use std::collections::BTreeMap;

/// The schema implied by the synced rows: every `ps_data__` table, with one column
/// per JSON key (REAL if any value is fractional, INTEGER if all are whole numbers
/// or booleans, TEXT otherwise).
pub fn infer_schema(conn: &Connection) -> Result<Schema> {
    let names: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT substr(name, 10) FROM sqlite_master WHERE type = 'table' AND name LIKE 'ps\\_data\\_\\_%' ESCAPE '\\' ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut tables = vec![];
    for name in names {
        let mut cols: BTreeMap<String, ColumnType> = BTreeMap::new();
        let mut stmt = conn.prepare(&format!(
            "SELECT DISTINCT j.key, j.type FROM {}, json_each({}.data) j",
            quote_ident(&data_table(&name)),
            quote_ident(&data_table(&name))
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (key, ty) = row?;
            if key.eq_ignore_ascii_case("id") || key.contains('"') || key.starts_with("ps_") {
                continue;
            }
            let t = match ty.as_str() {
                "integer" | "true" | "false" => Some(ColumnType::Integer),
                "real" => Some(ColumnType::Real),
                "null" => None,
                _ => Some(ColumnType::Text),
            };
            let slot = cols.entry(key).or_insert(t.unwrap_or(ColumnType::Integer));
            *slot = match (*slot, t) {
                (s, None) => s,
                (ColumnType::Text, _) | (_, Some(ColumnType::Text)) => ColumnType::Text,
                (ColumnType::Real, _) | (_, Some(ColumnType::Real)) => ColumnType::Real,
                _ => ColumnType::Integer,
            };
        }
        // A column seen only as null defaults to INTEGER above; TEXT is the safer cast.
        let nulls_only: Vec<String> = {
            let mut stmt = conn.prepare(&format!(
                "SELECT j.key FROM {t}, json_each({t}.data) j GROUP BY j.key HAVING max(j.type != 'null') = 0",
                t = quote_ident(&data_table(&name))
            ))?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for k in nulls_only {
            if let Some(c) = cols.get_mut(&k) {
                *c = ColumnType::Text;
            }
        }
        tables.push(Table::new(
            &name,
            cols.into_iter().map(|(n, t)| Column::new(&n, t)).collect(),
        ));
    }
    Ok(Schema::new(tables))
}

pub(super) fn refresh_inferred_views(conn: &Connection) -> Result<()> {
    let schema = infer_schema(conn)?;
    let text = serde_json::to_string(&schema)?;
    if get_kv(conn, "inferred_schema")?.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    for t in &schema.tables {
        if t.validate().is_err() {
            continue;
        }
        for sql in t.create_sql() {
            conn.execute(&sql, [])?;
        }
    }
    set_kv(conn, "inferred_schema", &text)
}
