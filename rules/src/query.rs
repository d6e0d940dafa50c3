//! One rule query: parse it with sqlparser, reject what Outpost does not support,
//! and classify its parts (outputs, bucket-parameter bindings, lookups, filters).
//!
//! Expressions stay Postgres SQL: we only rewrite the references that are not
//! Postgres (`request.user_id()`, `token_parameters.x`, `bucket.p`) and qualify
//! column names with the table alias. Postgres itself type-checks the result
//! when the extension deploys it.

use crate::catalog::{Catalog, Table};
use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArguments, GroupByExpr, Ident, ObjectNamePart, SelectItem,
    SetExpr, Statement, TableFactor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// The parsed shape every rule query must have: one SELECT, at most one table.
pub struct Select {
    pub projection: Vec<SelectItem>,
    /// Table name as written and its alias.
    pub from: Option<(String, Option<String>)>,
    pub selection: Option<Expr>,
}

/// `IN` against a single value (`bucket.p IN tags`) is how PowerSync writes
/// membership in an array value; Postgres syntax needs parentheses there, so
/// they are added before parsing: `IN x.y` → `IN (x.y)`, `IN f()` → `IN (f())`.
fn parenthesize_in(sql: &str) -> String {
    // Works on bytes and only ever inserts ASCII next to ASCII, so multi-byte
    // characters pass through untouched.
    let bytes = sql.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let skip_ws = |mut k: usize| {
        while k < bytes.len() && bytes[k].is_ascii_whitespace() {
            k += 1;
        }
        k
    };
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    let mut in_str = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\'' {
            in_str = !in_str;
        }
        let boundary_before = i == 0 || !ident(bytes[i - 1]);
        if !in_str
            && boundary_before
            && i + 2 < bytes.len()
            && bytes[i..i + 2].eq_ignore_ascii_case(b"in")
            && bytes[i + 2].is_ascii_whitespace()
        {
            let mut j = skip_ws(i + 2);
            if j < bytes.len() && bytes[j] != b'(' {
                // Operand: a dotted name, optionally called with `()`.
                let start = j;
                while j < bytes.len() && (ident(bytes[j]) || bytes[j] == b'.' || bytes[j] == b'"') {
                    j += 1;
                }
                if j + 1 < bytes.len() && bytes[j] == b'(' && bytes[j + 1] == b')' {
                    j += 2;
                }
                // JSON access chains: `request.jwt() -> 'lists'`, `->> 0`.
                loop {
                    let mut k = skip_ws(j);
                    if !bytes[k..].starts_with(b"->") {
                        break;
                    }
                    k += if bytes[k..].starts_with(b"->>") { 3 } else { 2 };
                    k = skip_ws(k);
                    if k < bytes.len() && bytes[k] == b'\'' {
                        k += 1;
                        while k < bytes.len() && bytes[k] != b'\'' {
                            k += 1;
                        }
                        k += 1;
                    } else {
                        while k < bytes.len() && bytes[k].is_ascii_digit() {
                            k += 1;
                        }
                    }
                    j = k.min(bytes.len());
                }
                if j > start {
                    out.extend_from_slice(b"IN (");
                    out.extend_from_slice(&bytes[start..j]);
                    out.push(b')');
                    i = j;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8(out).expect("only ASCII was inserted, at ASCII positions")
}

pub fn parse_select(sql: &str) -> Result<Select, String> {
    let text = parenthesize_in(sql);
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, &text).map_err(|e| {
        format!(
            "SQL syntax error: {}",
            e.to_string().trim_start_matches("sql parser error: ")
        )
    })?;
    if stmts.len() != 1 {
        return Err(format!(
            "expected exactly one SELECT statement, found {}",
            stmts.len()
        ));
    }
    let Statement::Query(q) = stmts.remove(0) else {
        return Err("only SELECT queries are allowed".into());
    };
    if q.with.is_some() {
        return Err("WITH (common table expressions) is not supported".into());
    }
    if q.order_by.is_some() {
        return Err("ORDER BY is not supported".into());
    }
    if q.limit_clause.is_some() || q.fetch.is_some() {
        return Err("LIMIT/OFFSET/FETCH is not supported".into());
    }
    if !q.locks.is_empty() {
        return Err("FOR UPDATE/SHARE is not supported".into());
    }
    let SetExpr::Select(s) = *q.body else {
        return Err("only a plain SELECT is supported (no UNION, VALUES or nested queries)".into());
    };
    let s = *s;
    if s.distinct.is_some() {
        return Err("DISTINCT is not supported".into());
    }
    if s.into.is_some() {
        return Err("SELECT INTO is not supported".into());
    }
    match &s.group_by {
        GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty() => {}
        _ => return Err("GROUP BY is not supported".into()),
    }
    if s.having.is_some() {
        return Err("HAVING is not supported".into());
    }
    if s.from.len() > 1 {
        return Err("a query reads at most one table (no comma joins)".into());
    }
    let from = match s.from.into_iter().next() {
        None => None,
        Some(twj) => {
            if !twj.joins.is_empty() {
                return Err("JOIN is not supported: a query reads one table".into());
            }
            match twj.relation {
                TableFactor::Table {
                    name,
                    alias,
                    args: None,
                    ..
                } => {
                    let parts: Vec<String> = name
                        .0
                        .iter()
                        .map(|p| match p {
                            ObjectNamePart::Identifier(i) => Ok(i.value.clone()),
                            _ => Err("unsupported table name".to_string()),
                        })
                        .collect::<Result<_, _>>()?;
                    if let Some(a) = &alias {
                        if !a.columns.is_empty() {
                            return Err("column aliases on the table are not supported".into());
                        }
                    }
                    Some((parts.join("."), alias.map(|a| a.name.value)))
                }
                _ => return Err(
                    "FROM must name one table (subqueries and table functions are not supported)"
                        .into(),
                ),
            }
        }
    };
    Ok(Select {
        projection: s.projection,
        from,
        selection: s.selection,
    })
}

/// What an expression refers to.
#[derive(Default, Debug)]
pub struct Refs {
    pub columns: Vec<String>,
    pub bucket_params: Vec<String>,
    pub request: bool,
}

/// The request value a name stands for, as SQL over `$1` (JWT claims, jsonb)
/// and `$2` (client parameters, jsonb).
fn request_sql(parts: &[String], is_call: bool) -> Option<String> {
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    match (p.as_slice(), is_call) {
        (["request", "user_id"], true) => Some("($1 ->> 'sub')".into()),
        (["request", "jwt"], true) => Some("$1".into()),
        (["request", "parameters"], true) => Some("$2".into()),
        (["token_parameters", "user_id"], false) => Some("($1 ->> 'sub')".into()),
        (["token_parameters", k], false) => Some(format!(
            "($1 -> 'parameters' ->> {})",
            crate::quote_literal(k)
        )),
        (["user_parameters", k], false) => Some(format!("($2 ->> {})", crate::quote_literal(k))),
        _ => None,
    }
}

fn parse_expr(sql: &str) -> Expr {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .expect("generated expressions parse")
}

fn ident_parts(idents: &[Ident]) -> Vec<String> {
    idents.iter().map(|i| i.value.clone()).collect()
}

/// Rewrites an expression in place: request references become `$1`/`$2` SQL,
/// column names are qualified with `alias`, `bucket.p` is left for the caller
/// (collected in the returned refs). Unknown names and subqueries are errors.
pub fn rewrite(expr: &mut Expr, table: Option<(&Table, &str)>) -> Result<Refs, String> {
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
        let replacement = match e {
            Expr::Function(f) => {
                let parts: Vec<String> = f
                    .name
                    .0
                    .iter()
                    .filter_map(|p| match p {
                        ObjectNamePart::Identifier(i) => Some(i.value.clone()),
                        _ => None,
                    })
                    .collect();
                if parts.first().map(String::as_str) == Some("request") {
                    let no_args =
                        matches!(&f.args, FunctionArguments::List(l) if l.args.is_empty());
                    match request_sql(&parts, true) {
                        Some(sql) if no_args => {
                            refs.request = true;
                            Some(parse_expr(&sql))
                        }
                        _ => {
                            err = Some(format!(
                                "unknown request function `{}()`: use request.user_id(), request.jwt() or request.parameters()",
                                parts.join(".")
                            ));
                            return ControlFlow::Break(());
                        }
                    }
                } else if f.over.is_some() {
                    err = Some("window functions are not supported".into());
                    return ControlFlow::Break(());
                } else {
                    None
                }
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
                        err = Some(format!("unknown column \"{name}\" in table \"{}\"", t.name));
                        return ControlFlow::Break(());
                    }
                    None => {
                        err = Some(format!(
                            "unknown name \"{name}\": a query without FROM can only use request values"
                        ));
                        return ControlFlow::Break(());
                    }
                }
            }
            Expr::CompoundIdentifier(ids) => {
                let parts = ident_parts(ids);
                if parts.len() == 2 && parts[0] == "bucket" {
                    refs.bucket_params.push(parts[1].clone());
                    None
                } else if let Some(sql) = request_sql(&parts, false) {
                    refs.request = true;
                    Some(parse_expr(&sql))
                } else if let (Some((t, alias)), 2) = (table, parts.len()) {
                    if parts[0] != alias && parts[0] != t.name {
                        err = Some(format!(
                            "unknown table reference \"{}\" (the query reads \"{}\")",
                            parts[0], alias
                        ));
                        return ControlFlow::Break(());
                    }
                    if t.column(&parts[1]).is_none() {
                        err = Some(format!(
                            "unknown column \"{}\" in table \"{}\"",
                            parts[1], t.name
                        ));
                        return ControlFlow::Break(());
                    }
                    refs.columns.push(parts[1].clone());
                    Some(Expr::CompoundIdentifier(vec![
                        Ident::with_quote('"', alias),
                        Ident::with_quote('"', parts[1].clone()),
                    ]))
                } else {
                    err = Some(format!("unknown name \"{}\"", parts.join(".")));
                    return ControlFlow::Break(());
                }
            }
            _ => None,
        };
        if let Some(r) = replacement {
            *e = Expr::Nested(Box::new(r));
        }
        ControlFlow::Continue(())
    });
    match err {
        Some(e) => Err(e),
        None => Ok(refs),
    }
}

/// Splits `a AND (b AND c)` into `[a, b, c]`.
pub fn conjuncts(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                *inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner, out)
        }
        other => out.push(other),
    }
}

/// `bucket.p` if the expression is exactly that.
pub fn as_bucket_param(e: &Expr) -> Option<String> {
    match e {
        Expr::CompoundIdentifier(ids) if ids.len() == 2 && ids[0].value == "bucket" => {
            Some(ids[1].value.clone())
        }
        Expr::Nested(inner) => as_bucket_param(inner),
        _ => None,
    }
}

/// The name an output column gets, and its expression.
pub fn output_name(item: &SelectItem) -> Result<(String, Expr), String> {
    match item {
        SelectItem::ExprWithAlias { expr, alias } => Ok((alias.value.clone(), expr.clone())),
        SelectItem::UnnamedExpr(e) => match e {
            Expr::Identifier(i) => Ok((i.value.clone(), e.clone())),
            Expr::CompoundIdentifier(ids) if ids.len() == 2 && ids[0].value != "bucket" => {
                Ok((ids[1].value.clone(), e.clone()))
            }
            Expr::Cast { expr, .. } => match expr.as_ref() {
                Expr::Identifier(i) => Ok((i.value.clone(), e.clone())),
                _ => Err(format!("the expression `{e}` needs a name: add `AS name`")),
            },
            _ => Err(format!("the expression `{e}` needs a name: add `AS name`")),
        },
        _ => Err("`table.*` is not supported; use `*` or list the columns".into()),
    }
}

/// Resolves the FROM table against the catalog.
pub fn resolve_table<'c>(catalog: &'c Catalog, name: &str) -> Result<&'c Table, String> {
    catalog.lookup(name).ok_or_else(|| {
        if name.starts_with("outpost.") || name.starts_with("pg_") {
            format!("table \"{name}\" cannot be synced")
        } else {
            format!("unknown table \"{name}\"")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parenthesizes_bare_in_operands() {
        assert_eq!(
            parenthesize_in("SELECT * FROM t WHERE bucket.x IN tags"),
            "SELECT * FROM t WHERE bucket.x IN (tags)"
        );
        assert_eq!(parenthesize_in("WHERE a IN (1,2)"), "WHERE a IN (1,2)");
        assert_eq!(
            parenthesize_in("WHERE a IN request.jwt() AND b = 'in x'"),
            "WHERE a IN (request.jwt()) AND b = 'in x'"
        );
        assert_eq!(parenthesize_in("SELECT min FROM t"), "SELECT min FROM t");
        assert_eq!(
            parenthesize_in("WHERE id IN request.parameters() -> 'lists' AND x"),
            "WHERE id IN (request.parameters() -> 'lists') AND x"
        );
    }

    #[test]
    fn rejects_unsupported_shapes() {
        let cases = [
            (
                "SELECT * FROM a JOIN b ON a.id = b.id",
                "JOIN is not supported",
            ),
            ("SELECT * FROM a, b", "no comma joins"),
            ("SELECT * FROM a ORDER BY id", "ORDER BY"),
            ("SELECT * FROM a LIMIT 1", "LIMIT"),
            ("SELECT DISTINCT * FROM a", "DISTINCT"),
            ("SELECT count(*) FROM a GROUP BY x", "GROUP BY"),
            ("SELECT * FROM (SELECT 1) s", "FROM must name one table"),
            ("DELETE FROM a", "only SELECT"),
            ("SELECT 1; SELECT 2", "exactly one SELECT"),
            ("SELEC 1", "SQL syntax error"),
            ("SELECT 1 UNION SELECT 2", "plain SELECT"),
        ];
        for (sql, want) in cases {
            let err = parse_select(sql)
                .err()
                .unwrap_or_else(|| panic!("{sql} parsed"));
            assert!(err.contains(want), "{sql}: {err}");
        }
    }
}
