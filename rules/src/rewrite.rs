//! Name resolution and lowering of one expression: the references that are
//! not Postgres (`request.user_id()`, `token_parameters.x`, `bucket.p`, a
//! `json_each` row's `value`) become SQL over `$1`/`$2`, column names are
//! qualified with the table alias, and PowerSync's functions and operators
//! become Postgres expressions ([`crate::dialect`]). Postgres itself
//! type-checks the result when the extension deploys it.

use crate::config::Options;
use crate::dialect;
use crate::query::{as_bucket_param, unnest};
pub use crate::scope::{Refs, Scope, JSON_EACH_SQL};
pub use crate::typing::elements_jsonb;
use crate::typing::{arg_of, call_args, compiled, function_name, kind_of};
use sqlparser::ast::{BinaryOperator, Expr, Ident};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// The request value a name stands for, as SQL over `$1` (JWT claims, jsonb),
/// `$2` (client parameters, jsonb) and, in Sync Streams, `$3` (the
/// subscription's parameters), and whether the client chooses it.
fn request_sql(parts: &[String], is_call: bool, streams: bool) -> Option<(String, bool)> {
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    if streams {
        return match (p.as_slice(), is_call) {
            (["auth", "user_id"], true) => Some(("($1 ->> 'sub')".into(), false)),
            (["auth", "parameters"], true) => Some(("$1".into(), false)),
            (["connection", "parameters"], true) => Some(("$2".into(), true)),
            (["subscription", "parameters"], true) => Some(("$3".into(), true)),
            _ => None,
        };
    }
    match (p.as_slice(), is_call) {
        (["request", "user_id"], true) => Some(("($1 ->> 'sub')".into(), false)),
        (["request", "jwt"], true) => Some(("$1".into(), false)),
        (["request", "parameters"], true) => Some(("$2".into(), true)),
        (["token_parameters", "user_id"], false) => Some(("($1 ->> 'sub')".into(), false)),
        (["token_parameters", k], false) => Some((
            format!("($1 -> 'parameters' ->> {})", crate::quote_literal(k)),
            false,
        )),
        (["user_parameters", k], false) => {
            Some((format!("($2 ->> {})", crate::quote_literal(k)), true))
        }
        _ => None,
    }
}

/// Parses SQL this module generated around the text of user expressions;
/// an expression whose text does not survive the round trip is refused
/// rather than compiled to something else.
fn parse_expr(sql: &str) -> Result<Expr, String> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| format!("cannot compile this expression (generated `{sql}`: {e})"))
}

fn ident_parts(idents: &[Ident]) -> Vec<String> {
    idents.iter().map(|i| i.value.clone()).collect()
}

/// Rewrites an expression in place: request references become `$1`/`$2` SQL,
/// column names are qualified with the table alias, PowerSync's functions and
/// operators become their Postgres equivalents, `bucket.p` is left for the
/// caller (collected in the returned refs). Unknown names and subqueries are errors.
pub fn rewrite(expr: &mut Expr, scope: Scope) -> Result<Refs, String> {
    let has_subquery = sqlparser::ast::visit_expressions(expr, |e| match e {
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if has_subquery.is_break() {
        return Err("subqueries are not supported".into());
    }
    let mut refs = Refs::default();
    let mut err: Option<String> = None;
    let _ = sqlparser::ast::visit_expressions_mut(expr, |e| {
        match rewrite_node(e, &scope, &mut refs) {
            Ok(Some(r)) => *e = Expr::Nested(Box::new(r)),
            Ok(None) => {}
            Err(m) => {
                err = Some(m);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    match err {
        Some(e) => Err(e),
        None => Ok(refs),
    }
}

/// Like [`rewrite`], for an expression whose value is output (a data column
/// or a bucket parameter): a `->>` / `json_extract` at the top keeps its
/// JSON type, a `->` at the top is JSON text as SQLite writes it.
pub fn rewrite_output(expr: &mut Expr, scope: Scope) -> Result<Refs, String> {
    // (json, path, path must start with `$`, `->>`)
    let top = match unnest(expr) {
        Expr::BinaryOp {
            left,
            op: op @ (BinaryOperator::LongArrow | BinaryOperator::Arrow),
            right,
        } => Some((
            left.as_ref().clone(),
            right.as_ref().clone(),
            false,
            *op == BinaryOperator::LongArrow,
        )),
        Expr::Function(f)
            if function_name(f).len() == 1
                && function_name(f)[0].eq_ignore_ascii_case("json_extract") =>
        {
            match call_args(f)?.as_slice() {
                [j, p] => Some((j.clone(), p.clone(), true, true)),
                _ => None,
            }
        }
        _ => None,
    };
    if let Some((mut l, mut r, dollar, text)) = top {
        let mut refs = rewrite(&mut l, scope)?;
        refs.merge(rewrite(&mut r, scope)?);
        let (la, ra) = (arg_of(&l, &scope), arg_of(&r, &scope));
        if dollar {
            dialect::json_path(&ra, scope.options, true)?;
        }
        let sql = dialect::json_get(&la, &ra, text, dialect::Use::Output, scope.options)?;
        let kind = if text {
            dialect::Kind::Json
        } else {
            dialect::Kind::Other
        };
        *expr = Expr::Nested(Box::new(compiled(sql, kind)?));
        return Ok(refs);
    }
    if let Some((k, source, client)) = request_parameter_call(unnest(expr), streams(&scope)) {
        let sql = request_parameter(&k, &scope, "#>", source)?;
        *expr = Expr::Nested(Box::new(compiled(sql, dialect::Kind::Json)?));
        return Ok(Refs {
            request: true,
            client_params: client,
            token_params: !client,
            ..Refs::default()
        });
    }
    let column = match unnest(expr) {
        Expr::Identifier(i) => json_each_column(&i.value),
        Expr::CompoundIdentifier(ids)
            if ids.len() == 2 && Some(ids[0].value.as_str()) == scope.json_each =>
        {
            json_each_column(&ids[1].value)
        }
        _ => None,
    };
    if let (Some(c), Some(_)) = (column, scope.json_each) {
        *expr = Expr::Nested(Box::new(if c == "v" {
            // An element as PowerSync's json_each gives it: booleans 1/0,
            // objects and arrays JSON text; a JSON null is SQL NULL with
            // fixed_json_extract, the text `null` in legacy rules.
            let null = if scope.options.fixed_json_extract {
                "NULL::jsonb"
            } else {
                "'\"null\"'::jsonb"
            };
            compiled(
                format!(
                    "CASE WHEN jsonb_typeof({JSON_EACH_SQL}.v) = 'null' THEN {null} ELSE outpost._sqlite_value({JSON_EACH_SQL}.v) END"
                ),
                dialect::Kind::Json,
            )?
        } else {
            parse_expr(&format!("{JSON_EACH_SQL}.{c}"))?
        }));
        return Ok(Refs {
            json_each: true,
            ..Refs::default()
        });
    }
    rewrite(expr, scope)
}

/// `request.parameter(k)` (and in streams `auth.parameter(k)`,
/// `connection.parameter(k)`, `subscription.parameter(k)`): always a single
/// key unless `k` is a `$.` path. `source` is the jsonb placeholder read.
fn request_parameter(k: &Expr, scope: &Scope, op: &str, source: &str) -> Result<String, String> {
    let fixed = Options {
        fixed_json_extract: true,
        ..scope.options.clone()
    };
    let path = dialect::json_path(&arg_of(k, scope), &fixed, false)?;
    Ok(format!("({source} {op} {path})"))
}

/// The placeholder a `<namespace>.parameter(k)` call reads and whether the
/// client chooses its value.
fn parameter_source(namespace: &str, streams: bool) -> Option<(&'static str, bool)> {
    match (namespace, streams) {
        ("request", false) => Some(("$2", true)),
        ("auth", true) => Some(("$1", false)),
        ("connection", true) => Some(("$2", true)),
        ("subscription", true) => Some(("$3", true)),
        _ => None,
    }
}

/// `<ns>.parameter(k)`: the key expression and what it reads.
fn request_parameter_call(e: &Expr, streams: bool) -> Option<(Expr, &'static str, bool)> {
    let Expr::Function(f) = e else { return None };
    let name = function_name(f);
    match (
        name.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        call_args(f).ok()?.as_slice(),
    ) {
        ([ns, "parameter"], [k]) => {
            let (src, client) = parameter_source(ns, streams)?;
            Some((k.clone(), src, client))
        }
        _ => None,
    }
}

/// Whether the expression is in a Sync Stream (its own request functions).
fn streams(scope: &Scope) -> bool {
    scope.options.streams
}

/// The SQL column of a `json_each` row's `value` (`v`) or `key` (`k`): both
/// jsonb, a key being an array's 0-based index or an object's member name
/// (NULL for a scalar), as SQLite's json_each has them.
fn json_each_column(name: &str) -> Option<&'static str> {
    match name {
        "value" => Some("v"),
        "key" => Some("k"),
        _ => None,
    }
}

/// `value` / `key` inside an expression: the SQL value (text, as `->>`).
fn json_each_value(refs: &mut Refs, column: &str) -> Result<Option<Expr>, String> {
    refs.json_each = true;
    parse_expr(&format!("({JSON_EACH_SQL}.{column} #>> '{{}}')")).map(Some)
}

/// One node of [`rewrite`], its children already rewritten.
fn rewrite_node(e: &Expr, scope: &Scope, refs: &mut Refs) -> Result<Option<Expr>, String> {
    let table = scope.table;
    Ok(match e {
        Expr::Function(f) => {
            let parts = function_name(f);
            let streams = streams(scope);
            let ns = parts.first().map(String::as_str).unwrap_or_default();
            let is_request = if streams {
                parts.len() == 2 && matches!(ns, "auth" | "connection" | "subscription")
            } else {
                ns == "request"
            };
            if streams
                && parts.len() == 1
                && parts[0].eq_ignore_ascii_case(crate::stream::LOOKUP_FN)
            {
                // A nested subquery's lookup: the values it gives the request.
                let key = match call_args(f)?.as_slice() {
                    [Expr::Value(v)] => match &v.value {
                        sqlparser::ast::Value::SingleQuotedString(k) => k.clone(),
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                let Some(sql) = scope.options.lookups.get(&key) else {
                    return Err(format!("unknown lookup `{key}`"));
                };
                refs.request = true;
                refs.token_params = true;
                return Ok(Some(compiled(sql.clone(), dialect::Kind::Json)?));
            }
            if !streams && parts.len() == 2 && matches!(ns, "auth" | "connection" | "subscription")
            {
                return Err(format!(
                    "`{}()` belongs to Sync Streams (`streams:`); in bucket_definitions use request.user_id(), request.jwt() or request.parameters()",
                    parts.join(".")
                ));
            }
            if streams && ns == "request" && parts.len() == 2 {
                return Err(format!(
                    "`{}()` belongs to bucket_definitions; in a stream use auth.user_id(), auth.parameter('key'), subscription.parameter('key') or connection.parameter('key')",
                    parts.join(".")
                ));
            }
            if is_request {
                let args = call_args(f)?;
                if let Some((k, source, client)) = request_parameter_call(e, streams) {
                    refs.request = true;
                    refs.client_params |= client;
                    refs.token_params |= !client;
                    return Ok(Some(compiled(
                        request_parameter(&k, scope, "#>>", source)?,
                        dialect::Kind::Other,
                    )?));
                }
                match request_sql(&parts, true, streams) {
                    Some((sql, client)) if args.is_empty() => {
                        refs.request = true;
                        refs.client_params |= client;
                        refs.token_params |= !client;
                        Some(parse_expr(&sql)?)
                    }
                    _ if streams => {
                        return Err(format!(
                            "unknown function `{}()`: a stream reads auth.user_id(), auth.parameter('key'), auth.parameters(), subscription.parameter('key'), subscription.parameters(), connection.parameter('key') or connection.parameters()",
                            parts.join(".")
                        ))
                    }
                    _ => {
                        return Err(format!(
                            "unknown request function `{}()`: use request.user_id(), request.jwt(), request.parameters() or request.parameter('key')",
                            parts.join(".")
                        ))
                    }
                }
            } else if f.over.is_some() {
                return Err("window functions are not supported".into());
            } else if parts.len() == 1 {
                let name = parts[0].to_lowercase();
                let args = call_args(f).unwrap_or_default();
                let args_sql: Vec<dialect::Arg> = args.iter().map(|a| arg_of(a, scope)).collect();
                let pg_type = args.first().and_then(|a| kind_of(a, scope).1);
                let kind = match name.as_str() {
                    "json_valid" => dialect::Kind::Bool,
                    "uuid_blob" => dialect::Kind::Bytea,
                    _ => dialect::Kind::Other,
                };
                dialect::call(&name, &args_sql, pg_type.as_deref(), scope.options)?
                    .map(|sql| compiled(sql, kind))
                    .transpose()?
            } else {
                None
            }
        }
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            let mut args = vec![arg_of(expr, scope)];
            args.extend(substring_from.iter().map(|a| arg_of(a, scope)));
            args.extend(substring_for.iter().map(|a| arg_of(a, scope)));
            dialect::call("substring", &args, None, scope.options)?
                .map(|sql| compiled(sql, dialect::Kind::Other))
                .transpose()?
        }
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Arrow | BinaryOperator::LongArrow => {
                let sql = dialect::json_get(
                    &arg_of(left, scope),
                    &arg_of(right, scope),
                    *op == BinaryOperator::LongArrow,
                    dialect::Use::Inner,
                    scope.options,
                )?;
                // Both are text: `->` JSON text, `->>` the SQL value's text.
                Some(compiled(sql, dialect::Kind::Other)?)
            }
            BinaryOperator::StringConcat => {
                dialect::concat(&arg_of(left, scope), &arg_of(right, scope), scope.options)
                    .map(|sql| compiled(sql, dialect::Kind::Other))
                    .transpose()?
            }
            BinaryOperator::PGOverlap => {
                let (l, r) = (arg_of(left, scope), arg_of(right, scope));
                let pg_arrays = [left, right]
                    .iter()
                    .all(|s| kind_of(s, scope).1.is_some_and(|t| t.ends_with("[]")));
                (!pg_arrays)
                    .then(|| compiled(dialect::overlap(&l, &r), dialect::Kind::Bool))
                    .transpose()?
            }
            _ => None,
        },
        Expr::Cast {
            expr, data_type, ..
        } => {
            let target = data_type.to_string().to_lowercase();
            let kind = match target.as_str() {
                "blob" => dialect::Kind::Bytea,
                "integer" => dialect::Kind::Int,
                _ => dialect::Kind::Other,
            };
            dialect::cast(&arg_of(expr, scope), &target)
                .map(|sql| compiled(sql, kind))
                .transpose()?
        }
        Expr::InList {
            expr,
            list,
            negated,
        } if list.len() == 1
            && as_bucket_param(expr).is_none()
            && as_bucket_param(&list[0]).is_none() =>
        {
            let m = dialect::membership(&arg_of(expr, scope), &arg_of(&list[0], scope));
            let m = if *negated { format!("(NOT {m})") } else { m };
            Some(compiled(m, dialect::Kind::Bool)?)
        }
        Expr::Identifier(i) => {
            let name = i.value.clone();
            match table {
                Some((t, alias)) if t.column(&name).is_some() => {
                    refs.columns.push(name.clone());
                    Some(Expr::CompoundIdentifier(vec![
                        Ident::with_quote('"', alias),
                        Ident::with_quote('"', name),
                    ]))
                }
                Some((t, _)) => {
                    return Err(format!("unknown column \"{name}\" in table \"{}\"", t.name))
                }
                None if scope.json_each.is_some() && json_each_column(&name).is_some() => {
                    json_each_value(refs, json_each_column(&name).expect("checked"))?
                }
                None if scope.json_each.is_some() => {
                    return Err(format!(
                        "unknown name \"{name}\": json_each(...) rows have a `key` and a `value`"
                    ))
                }
                None => {
                    return Err(format!(
                        "unknown name \"{name}\": a query without FROM can only use request values"
                    ))
                }
            }
        }
        Expr::CompoundIdentifier(ids) => {
            let parts = ident_parts(ids);
            if parts.len() == 2 && parts[0] == "bucket" {
                refs.bucket_params.push(parts[1].clone());
                None
            } else if let Some((sql, client)) = request_sql(&parts, false, streams(scope)) {
                refs.request = true;
                refs.client_params |= client;
                refs.token_params |= !client;
                Some(parse_expr(&sql)?)
            } else if let (2, Some(c)) = (
                parts.len(),
                parts
                    .get(1)
                    .and_then(|n| json_each_column(n))
                    .filter(|_| scope.json_each == Some(parts[0].as_str())),
            ) {
                json_each_value(refs, c)?
            } else if let (Some((t, alias)), 2) = (table, parts.len()) {
                if parts[0] != alias && parts[0] != t.name {
                    return Err(format!(
                        "unknown table reference \"{}\" (the query reads \"{}\")",
                        parts[0], alias
                    ));
                }
                if t.column(&parts[1]).is_none() {
                    return Err(format!(
                        "unknown column \"{}\" in table \"{}\"",
                        parts[1], t.name
                    ));
                }
                refs.columns.push(parts[1].clone());
                Some(Expr::CompoundIdentifier(vec![
                    Ident::with_quote('"', alias),
                    Ident::with_quote('"', parts[1].clone()),
                ]))
            } else {
                return Err(format!("unknown name \"{}\"", parts.join(".")));
            }
        }
        _ => None,
    })
}
