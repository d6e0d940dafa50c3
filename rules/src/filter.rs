//! WHERE clauses as OR of AND branches (disjunctive normal form), for the
//! conditions that must be matched structurally (bucket parameters, lookups).
//! Conditions the caller calls plain stay whole, so an `OR` of ordinary
//! filters is not expanded.

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator};

/// More branches than this is almost certainly a mistake, and each one
/// becomes a query the tick runs.
pub const MAX_BRANCHES: usize = 32;

/// `where_` as branches: the row matches when every condition of some
/// branch holds. `plain(e)` says a condition can stay as written.
pub fn branches(
    where_: Option<Expr>,
    plain: &dyn Fn(&Expr) -> bool,
) -> Result<Vec<Vec<Expr>>, String> {
    let Some(w) = where_ else {
        return Ok(vec![vec![]]);
    };
    dnf(w, false, plain)
}

fn not(e: Expr) -> Expr {
    Expr::UnaryOp {
        op: UnaryOperator::Not,
        expr: Box::new(Expr::Nested(Box::new(e))),
    }
}

fn dnf(e: Expr, negated: bool, plain: &dyn Fn(&Expr) -> bool) -> Result<Vec<Vec<Expr>>, String> {
    if plain(&e) {
        return Ok(vec![vec![if negated { not(e) } else { e }]]);
    }
    match e {
        Expr::Nested(inner) => dnf(*inner, negated, plain),
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => dnf(*expr, !negated, plain),
        Expr::BinaryOp { left, op, right }
            if matches!(op, BinaryOperator::And | BinaryOperator::Or) =>
        {
            // De Morgan: NOT (a AND b) = NOT a OR NOT b, and the reverse.
            let conjunction = (op == BinaryOperator::And) != negated;
            let l = dnf(*left, negated, plain)?;
            let r = dnf(*right, negated, plain)?;
            let out = if conjunction {
                let mut out = Vec::new();
                for a in &l {
                    for b in &r {
                        out.push(a.iter().chain(b).cloned().collect());
                    }
                }
                out
            } else {
                l.into_iter().chain(r).collect::<Vec<_>>()
            };
            if out.len() > MAX_BRANCHES {
                return Err(format!(
                    "the WHERE clause expands to more than {MAX_BRANCHES} OR branches; split the query"
                ));
            }
            Ok(out)
        }
        other => Ok(vec![vec![if negated { not(other) } else { other }]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn parse(s: &str) -> Expr {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(s)
            .unwrap()
            .parse_expr()
            .unwrap()
    }

    fn shown(b: Vec<Vec<Expr>>) -> Vec<Vec<String>> {
        b.into_iter()
            .map(|c| c.iter().map(|e| e.to_string()).collect())
            .collect()
    }

    #[test]
    fn or_and_not_expand_only_what_is_not_plain() {
        let special = |e: &Expr| !e.to_string().contains("bucket.");
        let b = branches(
            Some(parse("(a = bucket.x OR b = bucket.x) AND (c OR d)")),
            &special,
        )
        .unwrap();
        assert_eq!(
            shown(b),
            vec![
                vec!["a = bucket.x", "(c OR d)"],
                vec!["b = bucket.x", "(c OR d)"]
            ]
        );
        let b = branches(Some(parse("NOT (a = bucket.x AND c)")), &special).unwrap();
        assert_eq!(shown(b), vec![vec!["NOT (a = bucket.x)"], vec!["NOT (c)"]]);
        assert_eq!(
            shown(branches(None, &special).unwrap()),
            vec![Vec::<String>::new()]
        );
    }

    #[test]
    fn too_many_branches_is_an_error() {
        let special = |_: &Expr| false;
        let e = parse("(a OR b) AND (c OR d) AND (e OR f) AND (g OR h) AND (i OR j) AND (k OR l)");
        assert!(branches(Some(e), &special)
            .unwrap_err()
            .contains("OR branches"));
    }
}
