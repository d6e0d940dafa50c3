//! One rule query: parse it with sqlparser (on its tokens, after adding the
//! parentheses PowerSync's `IN x` leaves out), reject what Outpost does not
//! support, and take it apart (source, outputs, WHERE). Names in expressions
//! are resolved by [`crate::rewrite`].

use crate::catalog::{Catalog, Table};
use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, GroupByExpr, JoinConstraint, JoinOperator,
    ObjectNamePart, SelectItem, SetExpr, Statement, TableFactor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::ops::ControlFlow;

/// The parsed shape every rule query must have: one SELECT, at most one source.
pub struct Select {
    pub projection: Vec<SelectItem>,
    pub from: Option<From>,
    pub selection: Option<Expr>,
}

/// What a query reads.
pub enum From {
    /// A table name as written, and its alias.
    Table(String, Option<String>),
    /// `json_each(<expr>) [AS alias]`: one row per element, its `value`.
    JsonEach(Box<Expr>, Option<String>),
}

/// `IN` against a single value (`bucket.p IN tags`, `x IN '["a","b"]'`) is how
/// PowerSync writes membership in an array value; Postgres syntax needs
/// parentheses there, so they are added to the token stream before parsing:
/// `IN x.y` → `IN (x.y)`, `IN f(a)` → `IN (f(a))`, `IN j -> 'k'` → `IN (j -> 'k')`.
/// Working on tokens keeps comments, quoted identifiers, dollar quotes and
/// string literals that merely contain "in" out of it.
fn parenthesize_in(tokens: Vec<Token>) -> Vec<Token> {
    let significant = |t: &Token| !matches!(t, Token::Whitespace(_));
    let next_sig = |tokens: &[Token], mut k: usize| {
        while k < tokens.len() && !significant(&tokens[k]) {
            k += 1;
        }
        k
    };
    let mut out = Vec::with_capacity(tokens.len() + 8);
    let mut i = 0;
    while i < tokens.len() {
        let is_in = matches!(&tokens[i], Token::Word(w) if w.keyword == Keyword::IN);
        out.push(tokens[i].clone());
        i += 1;
        if !is_in {
            continue;
        }
        let start = next_sig(&tokens, i);
        let end = single_operand_end(&tokens, start);
        if end > start {
            out.extend_from_slice(&tokens[i..start]);
            out.push(Token::LParen);
            out.extend_from_slice(&tokens[start..end]);
            out.push(Token::RParen);
            i = end;
        }
    }
    out
}

/// The end of an `IN` operand written without parentheses (a string literal,
/// or a dotted name, optionally called, followed by `->`/`->>` steps), or
/// `start` when the operand is something else (e.g. a parenthesized list).
fn single_operand_end(tokens: &[Token], start: usize) -> usize {
    let skip_ws = |mut k: usize| {
        while matches!(tokens.get(k), Some(Token::Whitespace(_))) {
            k += 1;
        }
        k
    };
    let mut j = start;
    match tokens.get(j) {
        Some(Token::SingleQuotedString(_)) => return j + 1,
        Some(Token::Word(_)) => {}
        _ => return start,
    }
    j += 1;
    while matches!(tokens.get(j), Some(Token::Period))
        && matches!(tokens.get(j + 1), Some(Token::Word(_)))
    {
        j += 2;
    }
    if matches!(tokens.get(j), Some(Token::LParen)) {
        let mut depth = 0usize;
        while j < tokens.len() {
            match tokens[j] {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
    }
    loop {
        let k = skip_ws(j);
        if !matches!(tokens.get(k), Some(Token::Arrow | Token::LongArrow)) {
            return j;
        }
        let v = skip_ws(k + 1);
        match tokens.get(v) {
            Some(Token::SingleQuotedString(_) | Token::Number(..)) => j = v + 1,
            _ => return j,
        }
    }
}

/// Tokens one query may have, and how deep its parentheses may nest: every
/// later step (parsing, rewriting, rendering) recurses over the expression,
/// and inside Postgres running out of stack is a crash, not an error.
pub const MAX_TOKENS: usize = 1500;
pub const MAX_NESTING: usize = 16;

fn check_size(tokens: &[Token]) -> Result<(), String> {
    let significant = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .count();
    if significant > MAX_TOKENS {
        return Err(format!(
            "the query is too long ({significant} tokens, at most {MAX_TOKENS})"
        ));
    }
    let (mut depth, mut max) = (0usize, 0usize);
    for t in tokens {
        match t {
            Token::LParen => {
                depth += 1;
                max = max.max(depth);
            }
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max > MAX_NESTING {
        return Err(format!(
            "the query nests parentheses {max} deep (at most {MAX_NESTING})"
        ));
    }
    Ok(())
}

/// Parses one query (tokens checked for size, bare `IN x` parenthesized) and
/// refuses the clauses no rule query may have; the SELECT body is the caller's.
pub fn parse_query(sql: &str) -> Result<sqlparser::ast::Select, String> {
    let syntax = |e: String| {
        format!(
            "SQL syntax error: {}",
            e.trim_start_matches("sql parser error: ")
        )
    };
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize()
        .map_err(|e| syntax(e.to_string()))?;
    check_size(&tokens)?;
    let mut stmts = Parser::new(&dialect)
        .with_tokens(parenthesize_in(tokens))
        .parse_statements()
        .map_err(|e| syntax(e.to_string()))?;
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
    Ok(s)
}

pub fn parse_select(sql: &str) -> Result<Select, String> {
    let (s, joins) = parse_select_left_joins(sql)?;
    if !joins.is_empty() {
        return Err("JOIN is not supported: a query reads one table".into());
    }
    Ok(s)
}

/// `LEFT JOIN <table> [AS alias] ON <condition>` of a data query: the one
/// join a lowered stream query keeps (to read a joined table's columns).
pub struct LeftJoin {
    pub table: String,
    pub alias: Option<String>,
    pub on: Expr,
}

/// [`parse_select`], with the LEFT JOINs of the table read; the caller
/// decides whether it takes them.
pub fn parse_select_left_joins(sql: &str) -> Result<(Select, Vec<LeftJoin>), String> {
    let s = parse_query(sql)?;
    check_plain(&s)?;
    if s.from.len() > 1 {
        return Err("a query reads at most one table (no comma joins)".into());
    }
    let mut joins = Vec::new();
    let from = match s.from.into_iter().next() {
        None => None,
        Some(twj) => {
            for j in twj.joins {
                let on = match j.join_operator {
                    JoinOperator::Left(JoinConstraint::On(e))
                    | JoinOperator::LeftOuter(JoinConstraint::On(e)) => e,
                    _ => return Err("JOIN is not supported: a query reads one table".into()),
                };
                match from_factor(j.relation)? {
                    From::Table(table, alias) => joins.push(LeftJoin { table, alias, on }),
                    From::JsonEach(..) => {
                        return Err("JOIN is not supported: a query reads one table".into())
                    }
                }
            }
            Some(from_factor(twj.relation)?)
        }
    };
    Ok((
        Select {
            projection: s.projection,
            from,
            selection: s.selection,
        },
        joins,
    ))
}

/// Refuses DISTINCT, INTO, GROUP BY and HAVING.
pub fn check_plain(s: &sqlparser::ast::Select) -> Result<(), String> {
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
    Ok(())
}

/// One FROM item: a table (as written, with its alias) or `json_each(...)`.
pub fn from_factor(relation: TableFactor) -> Result<From, String> {
    Ok({
        {
            match relation {
                TableFactor::Table {
                    name, alias, args, ..
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
                    let alias = alias.map(|a| a.name.value);
                    match args {
                        None => From::Table(parts.join("."), alias),
                        Some(a)
                            if parts.len() == 1 && parts[0].eq_ignore_ascii_case("json_each") =>
                        {
                            match a.args.as_slice() {
                                [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => {
                                    From::JsonEach(Box::new(e.clone()), alias)
                                }
                                _ => return Err("json_each takes one argument".into()),
                            }
                        }
                        Some(_) => {
                            return Err(format!(
                                "table function `{}` is not supported (only json_each)",
                                parts.join(".")
                            ))
                        }
                    }
                }
                _ => {
                    return Err(
                        "FROM must name one table or json_each(...) (subqueries are not supported)"
                            .into(),
                    )
                }
            }
        }
    })
}

/// Whether the expression refers to a `bucket.` parameter.
pub fn mentions_bucket(e: &Expr) -> bool {
    sqlparser::ast::visit_expressions(e, |x| match x {
        Expr::CompoundIdentifier(ids) if ids.len() == 2 && ids[0].value == "bucket" => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// The expression inside any parentheses.
pub fn unnest(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(i) => unnest(i),
        other => other,
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

    fn paren(sql: &str) -> String {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .with_unescape(false)
            .tokenize()
            .unwrap();
        parenthesize_in(tokens)
            .iter()
            .map(Token::to_string)
            .collect()
    }

    #[test]
    fn parenthesizes_bare_in_operands() {
        assert_eq!(
            paren("SELECT * FROM t WHERE bucket.x IN tags"),
            "SELECT * FROM t WHERE bucket.x IN (tags)"
        );
        assert_eq!(paren("WHERE a IN (1,2)"), "WHERE a IN (1,2)");
        assert_eq!(
            paren("WHERE a IN request.jwt() AND b = 'in x'"),
            "WHERE a IN (request.jwt()) AND b = 'in x'"
        );
        assert_eq!(paren("SELECT min FROM t"), "SELECT min FROM t");
        assert_eq!(
            paren("WHERE id IN request.parameters() -> 'lists' AND x"),
            "WHERE id IN (request.parameters() -> 'lists') AND x"
        );
    }

    #[test]
    fn in_inside_comments_quotes_and_dollar_strings_is_left_alone() {
        for sql in [
            "SELECT id FROM t -- x IN tags\n",
            "SELECT id FROM t /* a IN b */",
            "SELECT $$ a IN b $$ AS x FROM t",
            "SELECT \"in\" FROM t",
            "SELECT 'a IN b' AS x FROM t",
        ] {
            assert_eq!(paren(sql), sql, "{sql}");
        }
        assert_eq!(
            paren("WHERE c IN '[\"a\"]' AND d NOT IN json_extract(x, '$.a')"),
            "WHERE c IN ('[\"a\"]') AND d NOT IN (json_extract(x, '$.a'))"
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
            (
                &format!("SELECT {}1{} AS x", "(".repeat(17), ")".repeat(17)),
                "nests parentheses 17 deep",
            ),
            (&format!("SELECT 1{} AS x", " + 1".repeat(2000)), "too long"),
        ];
        for (sql, want) in cases {
            let err = parse_select(sql)
                .err()
                .unwrap_or_else(|| panic!("{sql} parsed"));
            assert!(err.contains(want), "{sql}: {err}");
        }
    }
}
