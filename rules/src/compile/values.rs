//! SQLite typing of output columns: the type a client declares for each
//! column, the value conversion to what SQLite stores, and the row's JSON text.

use crate::config::{Options, Precision};
use crate::quote_literal;
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

/// A value as a SQLite client stores it, the way PowerSync sends it, as SQL.
/// Column types known from the catalog convert directly (cheapest); other
/// expressions go through `outpost._sqlite_value(jsonb)`. Booleans become
/// 1/0, json and arrays JSON text, numeric its text, timestamps UTC text in
/// PowerSync's format (see [`time_text`]); the rest is Postgres' JSON output.
pub fn sqlite_value(expr: &str, type_name: Option<&str>, options: &Options) -> String {
    match type_name {
        Some("boolean") => format!("({expr})::int"),
        Some("json") | Some("jsonb") => format!("({expr})::text"),
        // array_to_json writes no spaces, like PowerSync's JSON text.
        Some(t) if t.ends_with("[]") => format!("(array_to_json({expr}))::text"),
        Some(t) if t.starts_with("numeric") => format!("({expr})::text"),
        Some(t) => time_text(expr, t, options).unwrap_or_else(|| expr.to_string()),
        None => format!("outpost._sqlite_value(to_jsonb({expr}))"),
    }
}

/// Timestamps and times as PowerSync renders them. Legacy: a space between
/// date and time and the fraction Postgres prints (trailing zeros dropped);
/// `timestamps_iso8601`: a `T` and a fixed number of sub-second digits
/// (`timestamp_max_precision`, microseconds by default). `timestamptz` is in
/// UTC with a `Z`, whatever the session's time zone.
pub fn time_text(expr: &str, pg_type: &str, options: &Options) -> Option<String> {
    let (value, date, zone) = match pg_type {
        "timestamp with time zone" => (format!("(({expr}) AT TIME ZONE 'UTC')"), true, "Z"),
        "timestamp without time zone" => (format!("({expr})"), true, ""),
        "time without time zone" => (format!("({expr})"), false, ""),
        _ => return None,
    };
    let (sep, fraction) = if options.timestamps_iso8601 {
        let f = match options.timestamp_max_precision.unwrap_or_default() {
            Precision::Seconds => None,
            Precision::Milliseconds => Some(format!("to_char({value}, '.MS')")),
            Precision::Microseconds | Precision::Nanoseconds => {
                Some(format!("to_char({value}, '.US')"))
            }
        };
        ("\"T\"", f)
    } else {
        (
            " ",
            Some(format!("rtrim(rtrim(to_char({value}, '.US'), '0'), '.')")),
        )
    };
    let base = if date {
        format!("to_char({value}, 'YYYY-MM-DD{sep}HH24:MI:SS')")
    } else {
        format!("to_char({value}, 'HH24:MI:SS')")
    };
    let mut parts = vec![base];
    parts.extend(fraction);
    if !zone.is_empty() {
        parts.push(quote_literal(zone));
    }
    Some(format!("({})", parts.join(" || ")))
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
