//! PowerSync's expression dialect (SQLite semantics) compiled to Postgres
//! expressions that return what SQLite would.
//!
//! Each function takes the SQL text of its already-compiled arguments and
//! returns the SQL that replaces the call. Everything is plain SQL inline
//! except two helpers that must not raise on bad input (a tick must never
//! fail because one row holds malformed JSON or a malformed date):
//! `outpost._json(text)` and `outpost._timestamp_utc(text)`, defined in
//! `sql/extension/01_helpers.sql`. Functions not in PowerSync's table are left to Postgres.

mod json;
mod value;

pub use json::{json_get, json_path, membership, overlap, Use};
pub use value::{sqlite_value, time_text};

use crate::config::Options;

/// What the compiler knows about an argument's Postgres type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A json or jsonb value (column, request value or a `->` result).
    Json,
    Bool,
    /// smallint, integer, bigint.
    Int,
    /// real, double precision, numeric.
    Real,
    Bytea,
    Geometry,
    /// A string literal (Postgres would type it `unknown`).
    Literal,
    Other,
}

impl Kind {
    /// The kind of a column of Postgres type `t` (`format_type()` text).
    pub fn of_type(t: &str) -> Kind {
        match t {
            "json" | "jsonb" => Kind::Json,
            "boolean" => Kind::Bool,
            "smallint" | "integer" | "bigint" => Kind::Int,
            "real" | "double precision" => Kind::Real,
            t if t.starts_with("numeric") => Kind::Real,
            "bytea" => Kind::Bytea,
            t if is_postgis(t) => Kind::Geometry,
            _ => Kind::Other,
        }
    }
}

/// The schema part of a qualified PostGIS type (`public` of
/// `public.geometry(Point,4326)`), as `format_type()` quoted it.
fn postgis_schema(t: &str) -> Option<&str> {
    let bare = t.split('(').next().unwrap_or(t);
    bare.rsplit_once('.').map(|(schema, _)| schema)
}

/// PostGIS's types, as `format_type()` names them: schema-qualified when
/// the extension's schema is not on the caller's path (capture and deploy
/// run with a pinned `search_path`), with a modifier like `(Point,4326)`.
fn is_postgis(t: &str) -> bool {
    let bare = t.split('(').next().unwrap_or(t);
    let name = bare.rsplit('.').next().unwrap_or(bare).trim_matches('"');
    matches!(name, "geometry" | "geography")
}

/// A compiled argument: its SQL and what is known of its type.
#[derive(Clone, Debug)]
pub struct Arg {
    pub sql: String,
    pub kind: Kind,
    /// The value of a string literal argument, for paths and modifiers.
    pub literal: Option<String>,
    /// The value of an integer literal argument (a `-> 0` array index).
    pub index: Option<i64>,
    /// The column's Postgres type, when the argument is a column.
    pub pg_type: Option<String>,
}

impl Arg {
    /// The argument as SQLite's text: booleans are `1`/`0`; JSON that is
    /// not a column's value (a `->` result, a request value) is written as
    /// SQLite writes JSON, without spaces (a column's text is what
    /// PowerSync replicates: the stored `json`, Postgres' `jsonb` text).
    pub(crate) fn text(&self) -> String {
        match self.kind {
            Kind::Bool => format!(
                "(CASE WHEN {x} THEN '1' WHEN NOT {x} THEN '0' END)",
                x = self.sql
            ),
            Kind::Json if self.pg_type.is_none() => {
                format!("outpost._json_min(({})::text)", self.sql)
            }
            _ => format!("({})::text", self.sql),
        }
    }

    /// The argument's text as PowerSync's row data has it: a column is its
    /// SQLite value's text (booleans `1`/`0`, timestamps in PowerSync's
    /// format, json and arrays their JSON text), anything else [`Arg::text`].
    fn row_text(&self, options: &Options) -> String {
        match &self.pg_type {
            Some(t) => format!("({})::text", sqlite_value(&self.sql, Some(t), options)),
            None => self.text(),
        }
    }

    /// The argument as bytes (a blob stays, anything else is its UTF-8 text).
    fn bytes(&self) -> String {
        match self.kind {
            Kind::Bytea => format!("({})", self.sql),
            _ => format!("convert_to({}, 'UTF8')", self.text()),
        }
    }

    /// The argument as jsonb; text that is not valid JSON becomes NULL.
    pub fn json(&self) -> String {
        match self.kind {
            Kind::Json => format!("({})::jsonb", self.sql),
            Kind::Literal => format!("({})::jsonb", self.sql),
            _ => format!("outpost._json({})", self.text()),
        }
    }

    /// The argument as jsonb for `IN` / `&&`: arrays stay arrays, text holding
    /// a JSON array is parsed by `outpost._elements`.
    pub fn to_jsonb(&self) -> String {
        match self.kind {
            Kind::Literal => format!("to_jsonb(({})::text)", self.sql),
            Kind::Json | Kind::Int | Kind::Real | Kind::Bool => format!("to_jsonb({})", self.sql),
            // Text that looks like an array is parsed here, where malformed
            // JSON can become an empty array instead of an error.
            _ => format!(
                "(SELECT CASE WHEN left(_s, 1) = '[' THEN coalesce(outpost._json(_s), '[]'::jsonb) ELSE _v END \
                 FROM (SELECT to_jsonb({x}) AS _v, ({x})::text AS _s) _p)",
                x = self.sql
            ),
        }
    }
}

/// `a || b` as PowerSync joins values: the text of each side (SQLite's text
/// of its value, so `true || 'x'` is `1x`, a json column its text, never
/// jsonb's merge), NULL when either is NULL. A blob on either side keeps
/// Postgres' bytea `||` (PowerSync would decode the bytes as UTF-8).
pub fn concat(l: &Arg, r: &Arg, options: &Options) -> Option<String> {
    if l.kind == Kind::Bytea || r.kind == Kind::Bytea {
        return None;
    }
    Some(format!(
        "({} || {})",
        l.row_text(options),
        r.row_text(options)
    ))
}

/// The numeric prefix SQLite's CAST reads from text (`'12abc'` → 12), as numeric.
fn numeric_prefix(a: &Arg) -> String {
    format!(
        "(substring(ltrim({}) from '^[+-]?(?:[0-9]+\\.?[0-9]*|\\.[0-9]+)(?:[eE][+-]?[0-9]{{1,4}})?'))::numeric",
        a.text()
    )
}

/// A numeric as bigint, truncated and saturated like SQLite's CAST.
fn clamp_bigint(n: &str) -> String {
    format!(
        "(SELECT (CASE WHEN _n < -9223372036854775808 THEN -9223372036854775808 \
         WHEN _n > 9223372036854775807 THEN 9223372036854775807 ELSE trunc(_n) END)::bigint \
         FROM (SELECT {n} AS _n) _c)"
    )
}

/// `CAST(x AS t)` for the five SQLite types; other targets stay Postgres casts.
pub fn cast(a: &Arg, target: &str) -> Option<String> {
    let null_safe =
        |body: String| format!("(CASE WHEN ({}) IS NULL THEN NULL ELSE {body} END)", a.sql);
    Some(match target {
        "text" => a.text(),
        "integer" => match a.kind {
            Kind::Int => format!("({})::bigint", a.sql),
            Kind::Bool => format!("({})::int", a.sql),
            Kind::Real => clamp_bigint(&format!("({})::numeric", a.sql)),
            _ => null_safe(clamp_bigint(&format!("coalesce({}, 0)", numeric_prefix(a)))),
        },
        "real" => match a.kind {
            Kind::Int | Kind::Real => format!("({})::float8", a.sql),
            Kind::Bool => format!("({})::int::float8", a.sql),
            _ => null_safe(to_float8(&format!("coalesce({}, 0)", numeric_prefix(a)))),
        },
        "numeric" => match a.kind {
            Kind::Int | Kind::Real => format!("({})::numeric", a.sql),
            Kind::Bool => format!("({})::int::numeric", a.sql),
            _ => null_safe(format!("coalesce({}, 0)", numeric_prefix(a))),
        },
        "blob" => format!("({})::bytea", a.bytes()),
        _ => return None,
    })
}

/// A position or length argument: SQLite's integer cast, bounded by what a
/// text can hold (so no int overflow can make the expression fail).
fn position(a: &Arg) -> String {
    let n = cast(a, "integer").expect("integer is a SQLite cast");
    format!("least(greatest({n}, -1000000000), 1000000000)")
}

fn arity(name: &str, args: &[Arg], min: usize, max: usize) -> Result<(), String> {
    if args.len() < min || args.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(format!(
            "function `{name}` takes {want} argument(s), got {}",
            args.len()
        ));
    }
    Ok(())
}

/// A time value as timestamptz the way PowerSync reads one: text (ISO 8601,
/// UTC unless it names a zone), a number (a Julian day, or seconds with the
/// `unixepoch` modifier), or a Postgres date/time column.
fn time_value(a: &Arg, unixepoch: bool, pg_type: Option<&str>) -> String {
    match (a.kind, pg_type) {
        (_, Some("timestamp with time zone")) => format!("({})", a.sql),
        (_, Some("timestamp without time zone")) => format!("(({}) AT TIME ZONE 'UTC')", a.sql),
        (_, Some("date")) => format!("(({})::timestamp AT TIME ZONE 'UTC')", a.sql),
        (Kind::Int | Kind::Real, _) if unixepoch => epoch_seconds(&format!("({})::float8", a.sql)),
        (Kind::Int | Kind::Real, _) => {
            epoch_seconds(&format!("((({})::float8 - 2440587.5) * 86400)", a.sql))
        }
        _ if unixepoch => format!(
            "(CASE WHEN {t} ~ '^[+-]?[0-9]{{1,12}}(\\.[0-9]*)?$' THEN {} END)",
            epoch_seconds(&format!("({})::float8", a.text())),
            t = a.text()
        ),
        _ => format!("outpost._timestamp_utc({})", a.text()),
    }
}

/// Seconds since 1970 as timestamptz; out of Postgres' range gives NULL.
fn epoch_seconds(secs: &str) -> String {
    format!(
        "(SELECT CASE WHEN abs(_e) < 1e11 THEN to_timestamp(_e) END FROM (SELECT {secs} AS _e) _t)"
    )
}

/// A numeric as float8; beyond its range gives ±Infinity, as in SQLite.
fn to_float8(n: &str) -> String {
    format!(
        "(SELECT CASE WHEN abs(_f) < 1e308 THEN _f::float8 ELSE sign(_f)::float8 * 'Infinity'::float8 END FROM (SELECT {n} AS _f) _g)"
    )
}

/// `unixepoch`/`datetime` modifiers: `unixepoch`, then `subsec`/`subsecond`.
/// Anything else makes the result NULL in PowerSync; here it is refused.
fn time_modifiers(name: &str, mods: &[Arg]) -> Result<(bool, bool), String> {
    let lit: Vec<Option<&str>> = mods.iter().map(|m| m.literal.as_deref()).collect();
    match lit.as_slice() {
        [] => Ok((false, false)),
        [Some("unixepoch")] => Ok((true, false)),
        [Some("subsec" | "subsecond")] => Ok((false, true)),
        [Some("unixepoch"), Some("subsec" | "subsecond")] => Ok((true, true)),
        _ => Err(format!(
            "function `{name}`: supported modifiers are 'unixepoch' and 'subsec', as string literals"
        )),
    }
}

/// The SQL replacing a call of PowerSync's function `name`, or `None` when
/// the function is not PowerSync's (Postgres resolves it as written).
/// `pg_type` gives the first argument's column type when it is a column.
pub fn call(
    name: &str,
    args: &[Arg],
    pg_type: Option<&str>,
    options: &Options,
) -> Result<Option<String>, String> {
    let a = |i: usize| &args[i];
    let sql = match name {
        "upper" | "lower" => {
            arity(name, args, 1, 1)?;
            format!("{name}({})", a(0).text())
        }
        "length" => {
            arity(name, args, 1, 1)?;
            match a(0).kind {
                Kind::Bytea => format!("length({})", a(0).sql),
                _ => format!("length({})", a(0).text()),
            }
        }
        "substring" | "substr" => {
            arity(name, args, 2, 3)?;
            let start = "CASE WHEN _s < 0 THEN greatest(0, length(_t) + _s) WHEN _s = 0 THEN 0 ELSE _s - 1 END";
            if args.len() == 2 {
                format!(
                    "(SELECT substr(_t, ({start})::int + 1) FROM (SELECT {} AS _t, {} AS _s) _a)",
                    a(0).text(),
                    position(a(1))
                )
            } else {
                format!(
                    "(SELECT CASE WHEN _n < 0 THEN substr(_t, greatest(_r + _n, 0)::int + 1, (_r - greatest(_r + _n, 0))::int) \
                     ELSE substr(_t, _r::int + 1, _n::int) END \
                     FROM (SELECT _t, {start} AS _r, CASE WHEN _s = 0 THEN _n0 - 1 ELSE _n0 END AS _n \
                     FROM (SELECT {} AS _t, {} AS _s, {} AS _n0) _a) _b)",
                    a(0).text(),
                    position(a(1)),
                    position(a(2))
                )
            }
        }
        "hex" => {
            arity(name, args, 1, 1)?;
            format!("coalesce(upper(encode({}, 'hex')), '')", a(0).bytes())
        }
        "base64" => {
            arity(name, args, 1, 1)?;
            format!(
                "coalesce(translate(encode({}, 'base64'), chr(10), ''), '')",
                a(0).bytes()
            )
        }
        "uuid_blob" => {
            arity(name, args, 1, 1)?;
            format!(
                "(SELECT CASE WHEN _u ~* '^[0-9a-f]{{8}}-?[0-9a-f]{{4}}-?[0-9a-f]{{4}}-?[0-9a-f]{{4}}-?[0-9a-f]{{12}}$' \
                 THEN decode(replace(_u, '-', ''), 'hex') END FROM (SELECT {} AS _u) _a)::bytea",
                a(0).text()
            )
        }
        "typeof" => {
            arity(name, args, 1, 1)?;
            format!(
                "(CASE WHEN ({x}) IS NULL THEN 'null' ELSE CASE pg_typeof({x})::text \
                 WHEN 'smallint' THEN 'integer' WHEN 'integer' THEN 'integer' WHEN 'bigint' THEN 'integer' \
                 WHEN 'boolean' THEN 'integer' WHEN 'real' THEN 'real' WHEN 'double precision' THEN 'real' \
                 WHEN 'bytea' THEN 'blob' ELSE 'text' END END)",
                x = a(0).sql
            )
        }
        "ifnull" => {
            arity(name, args, 2, 2)?;
            format!("coalesce({}, {})", a(0).sql, a(1).sql)
        }
        "iif" => {
            arity(name, args, 3, 3)?;
            format!(
                "(CASE WHEN {} THEN {} ELSE {} END)",
                a(0).sql,
                a(1).sql,
                a(2).sql
            )
        }
        "instr" => {
            arity(name, args, 2, 2)?;
            match (a(0).kind, a(1).kind) {
                (Kind::Bytea, Kind::Bytea) => format!("position({} IN {})", a(1).sql, a(0).sql),
                _ => format!("strpos({}, {})", a(0).text(), a(1).text()),
            }
        }
        "json_extract" => {
            arity(name, args, 2, 2)?;
            json_get(a(0), a(1), true, Use::Inner, options)?
        }
        "json_array_length" => {
            arity(name, args, 1, 2)?;
            let v = match args.get(1) {
                None => a(0).json(),
                Some(p) => format!("({} #> {})", a(0).json(), json_path(p, options, true)?),
            };
            format!(
                "(SELECT CASE WHEN _v IS NULL THEN NULL WHEN jsonb_typeof(_v) = 'array' THEN jsonb_array_length(_v) ELSE 0 END FROM (SELECT {v} AS _v) _a)"
            )
        }
        "json_valid" => {
            arity(name, args, 1, 1)?;
            match a(0).kind {
                Kind::Json => format!("(({}) IS NOT NULL)", a(0).sql),
                _ => format!("(outpost._json({}) IS NOT NULL)", a(0).text()),
            }
        }
        "json_keys" => {
            arity(name, args, 1, 1)?;
            // `json`, not `jsonb`: keys keep the order they were written in;
            // the array is written without spaces, as PowerSync does.
            let valid = match a(0).kind {
                Kind::Json => "_t IS NOT NULL".to_string(),
                _ => "outpost._json(_t) IS NOT NULL".to_string(),
            };
            format!(
                "(SELECT CASE WHEN {valid} AND json_typeof(_t::json) = 'object' \
                 THEN '[' || coalesce((SELECT string_agg(to_json(_k)::text, ',') FROM json_object_keys(_t::json) AS _k), '') || ']' END \
                 FROM (SELECT {} AS _t) _a)",
                a(0).text()
            )
        }
        "unixepoch" => {
            arity(name, args, 1, 3)?;
            let (epoch, subsec) = time_modifiers(name, &args[1..])?;
            let t = time_value(a(0), epoch, pg_type);
            if subsec {
                format!("(extract(epoch FROM {t}))::float8")
            } else {
                format!("(floor(extract(epoch FROM {t})))::bigint")
            }
        }
        "datetime" => {
            arity(name, args, 1, 3)?;
            let (epoch, subsec) = time_modifiers(name, &args[1..])?;
            let t = time_value(a(0), epoch, pg_type);
            let fmt = if subsec {
                "YYYY-MM-DD HH24:MI:SS.MS"
            } else {
                "YYYY-MM-DD HH24:MI:SS"
            };
            format!("to_char({t} AT TIME ZONE 'UTC', '{fmt}')")
        }
        "st_asgeojson" | "st_astext" | "st_x" | "st_y" => {
            arity(name, args, 1, 1)?;
            if a(0).kind != Kind::Geometry {
                return Err(format!(
                    "function `{name}` needs a geometry or geography column (PostGIS); its argument is not one"
                ));
            }
            // Deploy and ticks run with a pinned `search_path`, so PostGIS's
            // functions are named in the schema its type comes from.
            let schema = pg_type
                .and_then(postgis_schema)
                .map(|s| format!("{s}."))
                .unwrap_or_default();
            let f = match name {
                "st_asgeojson" => "ST_AsGeoJSON",
                "st_astext" => "ST_AsText",
                "st_x" => "ST_X",
                _ => "ST_Y",
            };
            let g = if matches!(name, "st_x" | "st_y") {
                format!("({})::{schema}geometry", a(0).sql)
            } else {
                a(0).sql.clone()
            };
            format!("{schema}{f}({g})")
        }
        _ => return Ok(None),
    };
    Ok(Some(sql))
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn postgis_types_are_known_qualified_or_not() {
        for t in [
            "geometry",
            "public.geometry",
            "geometry(Point,4326)",
            "gis.geography(Point,4326)",
            "\"my schema\".geometry",
        ] {
            assert_eq!(Kind::of_type(t), Kind::Geometry, "{t}");
        }
        assert_eq!(Kind::of_type("public.geometry_dump"), Kind::Other);
    }

    #[test]
    fn postgis_functions_are_named_in_the_types_schema() {
        assert_eq!(
            super::postgis_schema("public.geometry(Point,4326)"),
            Some("public")
        );
        assert_eq!(
            super::postgis_schema("\"my schema\".geography"),
            Some("\"my schema\"")
        );
        assert_eq!(super::postgis_schema("geometry"), None);
    }
}
