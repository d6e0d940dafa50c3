//! SQLite typing of output columns: the type a client declares for each
//! column, the value conversion to what SQLite stores, and the row's JSON text.

pub use crate::dialect::sqlite_value;
use crate::quote_literal;
use crate::scope::Scope;
use crate::typing::kind_of;
use serde::{Deserialize, Serialize};
use sqlparser::ast::Expr;

/// A column of a synced table as a client declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientColumn {
    pub name: String,
    /// `integer`, `real` or `text`.
    pub sqlite_type: String,
}

/// SQLite's type for a Postgres type (unknown expressions are text).
pub fn sqlite_type(pg_type: Option<&str>) -> &'static str {
    match pg_type {
        Some("smallint" | "integer" | "bigint" | "boolean") => "integer",
        Some("real" | "double precision") => "real",
        // PowerSync sends numeric as its text, which keeps every digit.
        _ => "text",
    }
}

/// The target type of a top-level cast (`x::int`, `CAST(x AS real)`).
pub fn cast_type(e: &Expr) -> Option<&'static str> {
    let Expr::Cast { data_type, .. } = e else {
        return None;
    };
    let t = data_type.to_string().to_lowercase();
    Some(match t.as_str() {
        "int" | "integer" | "int4" | "int8" | "bigint" | "smallint" | "int2" | "boolean"
        | "bool" => "integer",
        "real" | "float" | "float4" | "float8" | "double precision" | "numeric" => "real",
        _ => "text",
    })
}

/// A bucket parameter value (a rewritten expression) as jsonb, as PowerSync
/// writes it into a bucket id: the value the row data has (booleans 1/0,
/// timestamps as PowerSync's text, numeric, json and arrays as their text),
/// so that both sides of a bucket (the data query's `= bucket.p` and the
/// parameter query's output) give the same bytes PowerSync does. A JSON
/// value (a claim, a client parameter) is SQLite's value too: a boolean is
/// 1/0, so a `true` claim names the `[1]` bucket of a boolean column.
pub fn param_jsonb(e: &Expr, scope: &Scope) -> String {
    use crate::dialect::Kind;
    match kind_of(e, scope) {
        (_, Some(t)) => format!(
            "to_jsonb({})",
            sqlite_value(&e.to_string(), Some(&t), scope.options)
        ),
        (Kind::Bool, None) => format!("to_jsonb(({e})::int)"),
        // One scalar subquery, so the request value is evaluated once.
        (Kind::Json, None) => format!(
            "(SELECT CASE WHEN jsonb_typeof(_b) = 'boolean' THEN to_jsonb(_b::boolean::int) ELSE _b END FROM (SELECT to_jsonb({e}) AS _b) _pb)"
        ),
        _ => format!("to_jsonb({e})"),
    }
}

/// The row's JSON text. `json_build_object` takes at most 100 arguments, so
/// wide rows are built in chunks and concatenated as jsonb.
pub fn json_object_sql(columns: &[(String, String)]) -> String {
    let chunks: Vec<String> = columns
        .chunks(50)
        .map(|ch| {
            let args: Vec<String> = ch
                .iter()
                .map(|(n, e)| format!("{}, {e}", quote_literal(n)))
                .collect();
            args.join(", ")
        })
        .collect();
    if chunks.len() == 1 {
        format!("(json_build_object({}))::text", chunks[0])
    } else {
        let parts: Vec<String> = chunks
            .iter()
            .map(|c| format!("jsonb_build_object({c})"))
            .collect();
        format!("({})::text", parts.join(" || "))
    }
}
