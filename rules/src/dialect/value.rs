//! Values as PowerSync's row data has them (the SQLite value of a Postgres
//! value), shared by output columns, bucket ids and the text `||` joins.

use crate::config::{Options, Precision};
use crate::quote_literal;

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
