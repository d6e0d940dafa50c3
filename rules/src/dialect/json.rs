//! PowerSync's JSON operators and functions: `->`/`->>` with paths and
//! keys, `IN` over JSON arrays, `&&`. JSON text comes out as SQLite writes
//! it (`json()`: no whitespace outside strings, `outpost._json_min`), and a
//! `json` column or text keeps its key order (SQLite reads the text; `jsonb`
//! would sort the keys).

use super::{Arg, Kind};
use crate::config::Options;
use crate::quote_literal;

/// How a JSON extraction's result is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Inside an expression: `->>` yields text, `->` JSON text.
    Inner,
    /// As an output column: `->>` keeps the JSON type (numbers stay numbers,
    /// `true` becomes 1 on the way out), `->` yields JSON text.
    Output,
}

/// A JSON path as Postgres' `text[]` for `#>`/`#>>`. `$` is the root, `$.a.b`
/// and `$.a[0]` are paths; a plain string is one key (legacy rules split it
/// on dots unless `fixed_json_extract`); an integer is an array index.
pub fn json_path(arg: &Arg, options: &Options, require_dollar: bool) -> Result<String, String> {
    if let Some(i) = arg.index {
        return Ok(format!("ARRAY[{}]::text[]", quote_literal(&i.to_string())));
    }
    let Some(p) = &arg.literal else {
        return Ok(format!("ARRAY[({})::text]", arg.sql));
    };
    let parts: Vec<String> = if p == "$" {
        vec![]
    } else if let Some(rest) = p.strip_prefix('$') {
        parse_dollar_path(rest).ok_or_else(|| format!("invalid JSON path `{p}`"))?
    } else if require_dollar {
        return Err(format!("invalid JSON path `{p}`: a path starts with `$`"));
    } else if options.fixed_json_extract {
        vec![p.clone()]
    } else {
        p.split('.').map(str::to_string).collect()
    };
    let items: Vec<String> = parts.iter().map(|k| quote_literal(k)).collect();
    Ok(format!("ARRAY[{}]::text[]", items.join(", ")))
}

/// `.a.b[0]."c d"` → `[a, b, 0, c d]`.
fn parse_dollar_path(mut s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        if let Some(rest) = s.strip_prefix('.') {
            if let Some(q) = rest.strip_prefix('"') {
                let end = q.find('"')?;
                out.push(q[..end].to_string());
                s = &q[end + 1..];
            } else {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                if end == 0 {
                    return None;
                }
                out.push(rest[..end].to_string());
                s = &rest[end..];
            }
        } else if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']')?;
            let idx = &rest[..end];
            if idx.is_empty() || !idx.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            out.push(idx.to_string());
            s = &rest[end + 1..];
        } else {
            return None;
        }
    }
    Some(out)
}

/// `left -> right` / `left ->> right`.
pub fn json_get(
    left: &Arg,
    right: &Arg,
    text: bool,
    use_: Use,
    options: &Options,
) -> Result<String, String> {
    let path = json_path(right, options, false)?;
    // Legacy `->` gives NULL for a JSON null, fixed_json_extract `null`.
    let json_text = |t: String| {
        if options.fixed_json_extract {
            t
        } else {
            format!("nullif({t}, 'null')")
        }
    };
    // `->` is JSON text wherever it is used (a comparison, `IN`, a
    // function's argument), as in SQLite: `j -> 'a' = '{"b":1}'` compares
    // the text, so spacing, key order and `1.0` against `1` all count.
    if !text {
        return Ok(match ordered(left) {
            Some(j) => json_text(format!("outpost._json_min(({j} #> {path})::text)")),
            None => json_text(format!(
                "outpost._json_min((({} #> {path}))::text)",
                left.json()
            )),
        });
    }
    if use_ == Use::Output {
        if let Some(j) = ordered(left) {
            return Ok(format!("outpost._sqlite_json({j} #> {path})"));
        }
    }
    let j = left.json();
    Ok(match use_ {
        // The SQL value as text; an object or array is SQLite's JSON text.
        // (One scalar subquery, so the source is parsed once.)
        Use::Inner => {
            let (x, typeof_) = match ordered(left) {
                Some(oj) => (format!("{oj} #> {path}"), "json_typeof"),
                None => (format!("{j} #> {path}"), "jsonb_typeof"),
            };
            format!(
                "(SELECT CASE WHEN {typeof_}(_x) IN ('object', 'array') THEN outpost._json_min(_x::text) ELSE _x #>> '{{}}' END FROM (SELECT {x} AS _x) _g)"
            )
        }
        Use::Output => format!("({j} #> {path})"),
    })
}

/// The argument as `json` when its text is what SQLite would read, so an
/// extracted object keeps the key order it was written in: a `json` column,
/// or text holding JSON (other text gives NULL). `None`: read it as jsonb
/// (a `jsonb` column's order is Postgres', which is also the text PowerSync
/// replicates).
fn ordered(a: &Arg) -> Option<String> {
    match (a.kind, a.pg_type.as_deref()) {
        (Kind::Json, Some("json")) => Some(format!("({})::json", a.sql)),
        (Kind::Other | Kind::Literal, _) => Some(format!(
            "(SELECT CASE WHEN outpost._json(_t) IS NOT NULL THEN _t::json END FROM (SELECT {} AS _t) _o)",
            a.text()
        )),
        _ => None,
    }
}

/// `l IN r` where `r` is one value: a JSON array (or text holding one), a
/// Postgres array, or a scalar. NULL on the left gives NULL, as in SQLite.
pub fn membership(l: &Arg, r: &Arg) -> String {
    format!(
        "(CASE WHEN ({l}) IS NULL THEN NULL ELSE EXISTS (SELECT 1 FROM outpost._elements({r}) AS _m(v) WHERE _m.v = {lj}) END)",
        l = l.sql,
        r = r.to_jsonb(),
        lj = l.to_jsonb(),
    )
}

/// `l && r`: the two arrays share an element.
pub fn overlap(l: &Arg, r: &Arg) -> String {
    format!(
        "EXISTS (SELECT 1 FROM outpost._elements({}) AS _a(v) JOIN outpost._elements({}) AS _b(v) ON _a.v = _b.v)",
        l.to_jsonb(),
        r.to_jsonb()
    )
}
