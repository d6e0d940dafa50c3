//! Small SQL helpers: rows as JSON objects, JSON parameters, `ps_kv`, table
//! existence, timestamps.

use crate::error::Result;
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value};

pub(super) fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )?)
}

pub(super) fn get_kv(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT CAST(value AS TEXT) FROM ps_kv WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

pub(super) fn set_kv(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO ps_kv(key, value) VALUES (?1, ?2)",
        [key, value],
    )?;
    Ok(())
}

pub(crate) fn query_json(
    conn: &Connection,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Map<String, Value>>> {
    let mut stmt = conn.prepare(sql)?;
    let names: Vec<String> = stmt.column_names().map(String::from).collect();
    let sql_params: Vec<rusqlite::types::Value> = params.iter().map(json_to_sql).collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(sql_params))?;
    let mut out = vec![];
    while let Some(row) = rows.next()? {
        let mut obj = Map::new();
        for (i, n) in names.iter().enumerate() {
            use rusqlite::types::ValueRef;
            let v = match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::from(i),
                ValueRef::Real(f) => {
                    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                }
                ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
            };
            obj.insert(n.clone(), v);
        }
        out.push(obj);
    }
    Ok(out)
}

pub(crate) fn json_to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Bool(b) => S::Integer(*b as i64),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| S::Real(n.as_f64().unwrap_or(0.0)), S::Integer),
        Value::String(s) => S::Text(s.clone()),
        other => S::Text(other.to_string()),
    }
}

pub(super) fn now_string() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}
