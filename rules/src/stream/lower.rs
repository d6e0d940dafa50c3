//! One stream query → the legacy pair it stands for, so that a stream runs on
//! the bucket machinery the tick already keeps current incrementally: at most
//! one parameter query (the subquery's table, or the request values alone)
//! whose outputs `p0, p1, …` parameterize the bucket, and one data query over
//! the selected table that matches them with `= bucket.pN`.
//!
//! `[INNER] JOIN`s (and comma joins) become `IN (SELECT …)` subqueries first:
//! the selected table is the root, every joined table hangs off the table it
//! is joined to by a `a.x = b.y` condition. A CTE is inlined where it is used
//! (`IN cte`, `IN (SELECT c FROM cte)`, `JOIN cte`).
//!
//! What the tick cannot keep current with one lookup level is refused by
//! name: a subquery inside a subquery, two subqueries of one query, a request
//! value compared with a data column next to a subquery on another column.

use crate::query::{self, conjuncts, From};
use sqlparser::ast::{
    BinaryOperator, Expr, JoinConstraint, JoinOperator, ObjectNamePart, Query, Select, SelectItem,
    SetExpr, TableFactor, Value,
};
use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// A stream query as legacy bucket queries (text, in the stream dialect).
#[derive(Debug, PartialEq)]
pub struct Lowered {
    /// Lookups of nested subqueries, innermost first: `lN` is the Nth, a
    /// one-column table query the parameter query (or a later lookup) reads
    /// as `column IN _outpost_lookup('lN')`.
    pub lookups: Vec<String>,
    pub parameters: Option<String>,
    pub data: String,
}

/// What one level of the query reads.
#[derive(Clone, Debug)]
enum Source {
    /// The table as written and its alias, if any.
    Table(String, Option<String>),
    JsonEach(Box<Expr>, Option<String>),
    Nothing,
}

/// One table of the query with its own conditions and the subqueries that
/// hang off it (`lhs IN (child)`).
#[derive(Clone, Debug)]
struct Level {
    source: Source,
    /// Subquery levels: what the level selects.
    output: Option<Expr>,
    conds: Vec<Expr>,
    /// `true`: an `IN (SELECT …)` (or `IN cte`), whose NULL is a bucket
    /// value as in PowerSync; `false`: a join, where NULL matches nothing.
    subs: Vec<(Expr, Level, bool)>,
    /// Tables joined straight to this level's table (`root.x = t.y`, by
    /// `[INNER] JOIN` or `LEFT JOIN`) whose columns the top level may select.
    joined: Vec<Joined>,
}

/// A table joined to the selected table, as the data query joins it to
/// read its columns (the data compiler checks that `their_side` is its
/// primary key, so a row gets at most one).
#[derive(Clone, Debug)]
struct Joined {
    name: String,
    table: String,
    alias: Option<String>,
    root_side: Expr,
    their_side: Expr,
}

type Ctes = BTreeMap<String, String>;

/// The output of a stream's parameter query that only gates (no bucket parameter).
pub const GATE: &str = "_gate";

/// How a lowered query reads a nested subquery's lookup: `_outpost_lookup('lN')`
/// stands for the values that lookup gives the request (a JSON array).
pub const LOOKUP_FN: &str = "_outpost_lookup";

pub fn lower(sql: &str, ctes: &Ctes) -> Result<Lowered, String> {
    let s = query::parse_query(sql)?;
    query::check_plain(&s)?;
    let projection = s.projection.clone();
    let root = build_level(s, ctes, Output::Data(&projection), 0)?;
    let Source::Table(table, alias) = &root.source else {
        return Err("a stream query must select from a table (FROM table ...)".into());
    };
    let root_alias = alias.clone().unwrap_or_else(|| last_part(table));
    let (items, used) = data_projection(&projection, &root_alias, table, &root.joined)?;

    let mut data_conds: Vec<String> = Vec::new();
    let mut statics: Vec<(Expr, Expr)> = Vec::new();
    let mut arrays: Vec<(Expr, Expr)> = Vec::new();
    let mut req_filters: Vec<Expr> = Vec::new();
    for c in root.conds {
        let req = has_request(&c);
        if !req {
            data_conds.push(c.to_string());
            continue;
        }
        match request_match(&c) {
            Some(Match::Eq(row, r)) => statics.push((row, r)),
            Some(Match::In(row, r)) => arrays.push((row, r)),
            None if !has_columns(&c) => req_filters.push(c),
            None => {
                return Err(format!(
                    "unsupported condition `{c}`: compare a column with a request value using = or IN, or filter through a subquery"
                ))
            }
        }
    }
    if root.subs.len() > 1 {
        return Err("a stream query may filter through one subquery or joined table per query; split it into several `queries:`".into());
    }
    let mut outputs: Vec<String> = Vec::new();
    let mut param_sql = None;
    let mut lookups = Vec::new();
    if let Some((lhs, mut child, nulls)) = root.subs.into_iter().next() {
        chain(&mut child, &mut lookups)?;
        let out = child
            .output
            .clone()
            .expect("subquery levels select one value");
        let p0 = if nulls {
            // PowerSync puts a row whose column is NULL in the bucket of a
            // NULL the subquery returns (`[null]`), unlike `=`.
            let p = format!("p{}", outputs.len());
            data_conds.push(format!("({lhs}) IS NOT DISTINCT FROM bucket.{p}"));
            outputs.push(p.clone());
            p
        } else {
            bucket_match(&lhs, &mut data_conds, &mut outputs)
        };
        let mut select = vec![format!("{out} AS {p0}")];
        // `col = <request value>` on the subquery's column narrows the lookup.
        for (row, r) in statics {
            if same_expr(&row, &lhs) {
                child.conds.push(eq(out.clone(), r));
            } else if matches!(child.source, Source::Table(..)) {
                return Err(format!(
                    "`{row} = {r}` next to a subquery on another column is not supported yet: compare the subquery's column, or move the condition into the subquery"
                ));
            } else {
                let p = bucket_match(&row, &mut data_conds, &mut outputs);
                select.push(format!("{r} AS {p}"));
            }
        }
        if !arrays.is_empty() {
            return Err("`column IN <request array>` next to a subquery is not supported yet: use one of them per query".into());
        }
        child.conds.extend(req_filters);
        param_sql = Some(render_select(&select, &child.source, &child.conds));
    } else if !statics.is_empty() || !arrays.is_empty() || !req_filters.is_empty() {
        if arrays.len() > 1 {
            return Err("at most one `column IN <request array>` per stream query".into());
        }
        let mut select = Vec::new();
        for (row, r) in &statics {
            let p = bucket_match(row, &mut data_conds, &mut outputs);
            select.push(format!("{r} AS {p}"));
        }
        let mut source = Source::Nothing;
        if let Some((row, r)) = arrays.into_iter().next() {
            let p = bucket_match(&row, &mut data_conds, &mut outputs);
            select.push(format!("value AS {p}"));
            source = Source::JsonEach(Box::new(r), None);
        }
        param_sql = Some(render_select(&select, &source, &req_filters));
    }
    let where_ = if data_conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", data_conds.join(" AND "))
    };
    let mut from = match alias {
        Some(a) => format!("{table} AS {a}"),
        None => table.clone(),
    };
    // Columns of joined tables: the data query reads them through a LEFT
    // JOIN on the join's key (NULL when the joined row is missing); the
    // tick re-evaluates a row when its joined row changes.
    for j in used {
        from.push_str(&format!(" LEFT JOIN {}", j.table));
        if let Some(a) = &j.alias {
            from.push_str(&format!(" AS {a}"));
        }
        from.push_str(&format!(" ON {} = {}", j.root_side, j.their_side));
    }
    Ok(Lowered {
        lookups,
        parameters: param_sql,
        data: format!("SELECT {} FROM {from}{where_}", items.join(", ")),
    })
}

/// Turns the subqueries of a lookup level into chained lookups, innermost
/// first: `lhs IN (child)` becomes `lhs IN _outpost_lookup('lN')` with `lN`
/// the child's own one-column lookup query, which the tick materializes like
/// any parameter query (so a write to the inner table moves rows too).
fn chain(level: &mut Level, lookups: &mut Vec<String>) -> Result<(), String> {
    for (lhs, mut child, _) in std::mem::take(&mut level.subs) {
        chain(&mut child, lookups)?;
        if !matches!(child.source, Source::Table(..)) {
            return Err(
                "a nested subquery must read a table (json_each only at the first level)".into(),
            );
        }
        let out = child
            .output
            .clone()
            .expect("subquery levels select one value");
        let name = format!("l{}", lookups.len());
        lookups.push(render_select(
            &[format!("{out} AS v")],
            &child.source,
            &child.conds,
        ));
        let text = format!("{lhs} IN ({LOOKUP_FN}('{name}'))");
        let e = sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| format!("cannot compile `{text}`: {e}"))?;
        level.conds.push(e);
    }
    Ok(())
}

/// A new bucket parameter `pN` that the data query matches `lhs` against.
fn bucket_match(lhs: &Expr, data_conds: &mut Vec<String>, outputs: &mut Vec<String>) -> String {
    let p = format!("p{}", outputs.len());
    data_conds.push(format!("({lhs}) = bucket.{p}"));
    outputs.push(p.clone());
    p
}

/// `SELECT <outputs> [FROM <source>] [WHERE <conds>]`.
fn render_select(outputs: &[String], source: &Source, conds: &[Expr]) -> String {
    let from = match source {
        Source::Table(t, Some(a)) => format!(" FROM {t} AS {a}"),
        Source::Table(t, None) => format!(" FROM {t}"),
        Source::JsonEach(e, Some(a)) => format!(" FROM json_each({e}) AS {a}"),
        Source::JsonEach(e, None) => format!(" FROM json_each({e})"),
        Source::Nothing => String::new(),
    };
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        let c: Vec<String> = conds.iter().map(|c| format!("({c})")).collect();
        format!(" WHERE {}", c.join(" AND "))
    };
    let outputs = if outputs.is_empty() {
        // No parameter: one bucket for every request the filters admit.
        format!("1 AS {GATE}")
    } else {
        outputs.join(", ")
    };
    format!("SELECT {outputs}{from}{where_}")
}

/// The data query's columns: `t.*` of the selected table becomes `*`; a
/// column of a table joined to it directly stays as written, and that table
/// is returned so the data query joins it.
fn data_projection(
    items: &[SelectItem],
    alias: &str,
    table: &str,
    joined: &[Joined],
) -> Result<(Vec<String>, Vec<Joined>), String> {
    let is_root = |q: &str| q == alias || q == table || q == last_part(table);
    let mut out = Vec::new();
    let mut used: Vec<Joined> = Vec::new();
    for item in items {
        match item {
            SelectItem::QualifiedWildcard(kind, _) => {
                let q = wildcard_table(&kind.to_string());
                let q = q.as_str();
                if joined.iter().any(|j| j.name == q) {
                    return Err(format!("`{q}.*`: select a joined table's columns by name (`{q}.name AS {q}_name`); its `id` would clash with the row's own"));
                }
                if !is_root(q) {
                    return Err(format!("`{q}.*` selects another table's columns; a stream query returns the columns of one table (`{alias}.*`) and named columns of tables joined to it"));
                }
                out.push("*".to_string());
            }
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                let mut tables: Vec<String> = qualifiers(e)
                    .into_iter()
                    .filter(|q| !is_root(q.as_str()))
                    .collect();
                tables.dedup();
                match tables.as_slice() {
                    [] => {}
                    [q] => {
                        let Some(j) = joined.iter().find(|j| j.name == *q) else {
                            return Err(format!("`{item}` reads `{q}`, which is not joined to `{alias}` directly: only the columns of a table joined to the selected table (`{alias}.x = {q}.id`) can be selected"));
                        };
                        if reads_unqualified(e) || qualifiers(e).iter().any(|x| is_root(x.as_str()))
                        {
                            return Err(format!("`{item}` mixes columns of `{alias}` and `{q}`: select each table's columns apart"));
                        }
                        if !used.iter().any(|u| u.name == j.name) {
                            used.push(j.clone());
                        }
                    }
                    _ => {
                        return Err(format!(
                        "`{item}` reads several joined tables: select each table's columns apart"
                    ))
                    }
                }
                out.push(item.to_string());
            }
            other => out.push(other.to_string()),
        }
    }
    Ok((out, used))
}

/// The table qualifiers (`t` of `t.c`) an expression's columns use.
fn qualifiers(e: &Expr) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        if let Expr::CompoundIdentifier(ids) = x {
            if ids.len() == 2 && !out.contains(&ids[0].value) {
                out.push(ids[0].value.clone());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

fn reads_unqualified(e: &Expr) -> bool {
    sqlparser::ast::visit_expressions(e, |x| match x {
        Expr::Identifier(_) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// Whether an expression reads a column of the table named `name`.
fn mentions_table(e: &Expr, name: &str) -> bool {
    qualifiers(e).iter().any(|q| q == name)
}

enum Output<'a> {
    /// The top level: the table whose columns the projection selects.
    Data(&'a [SelectItem]),
    /// A subquery: the one value it selects.
    Value(Box<Expr>),
}

/// `t` of `t.*` (sqlparser prints the kind with its `.*`).
fn wildcard_table(printed: &str) -> String {
    printed.trim_end_matches(".*").trim_matches('"').to_string()
}

fn last_part(table: &str) -> String {
    table
        .rsplit('.')
        .next()
        .unwrap_or(table)
        .trim_matches('"')
        .to_string()
}

/// A FROM item of a query: its name (alias, else the table's name) and source.
struct Node {
    name: String,
    source: Source,
    /// The CTE this item reads, if it names one.
    cte: Option<String>,
}

fn node(relation: TableFactor, ctes: &Ctes) -> Result<Node, String> {
    let table_text = match &relation {
        TableFactor::Table { name, .. } => Some(name.to_string()),
        _ => None,
    };
    let cte_name = match &relation {
        TableFactor::Table {
            name, args: None, ..
        } if name.0.len() == 1 => match &name.0[0] {
            ObjectNamePart::Identifier(i) if ctes.contains_key(&i.value) => Some(i.value.clone()),
            _ => None,
        },
        _ => None,
    };
    Ok(match query::from_factor(relation)? {
        From::Table(n, alias) => Node {
            name: alias.clone().unwrap_or_else(|| last_part(&n)),
            source: Source::Table(table_text.unwrap_or(n), alias),
            cte: cte_name,
        },
        From::JsonEach(e, alias) => Node {
            name: alias.clone().unwrap_or_else(|| "json_each".into()),
            source: Source::JsonEach(e, alias),
            cte: None,
        },
    })
}

/// Builds the level of a SELECT (the top query or a subquery): its FROM
/// items as a tree of subqueries rooted at the table the output reads.
fn build_level(s: Select, ctes: &Ctes, output: Output, depth: usize) -> Result<Level, String> {
    if depth > 4 {
        return Err("CTEs and subqueries nest too deep".into());
    }
    let mut nodes: Vec<Node> = Vec::new();
    let mut conds: Vec<Expr> = Vec::new();
    // LEFT JOINs of the stream's own FROM: they add columns, never filter.
    let mut lefts: Vec<(Node, Expr)> = Vec::new();
    let top = matches!(output, Output::Data(_));
    for twj in s.from {
        nodes.push(node(twj.relation, ctes)?);
        for j in twj.joins {
            let (on, left) = match j.join_operator {
                JoinOperator::Inner(JoinConstraint::On(e)) | JoinOperator::Join(JoinConstraint::On(e)) => (e, false),
                JoinOperator::Inner(_) | JoinOperator::Join(_) => {
                    return Err("JOIN needs an ON condition (`JOIN b ON a.x = b.y`)".into())
                }
                JoinOperator::Left(JoinConstraint::On(e)) | JoinOperator::LeftOuter(JoinConstraint::On(e)) if top => (e, true),
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) if top => {
                    return Err("LEFT JOIN needs an ON condition (`LEFT JOIN b ON a.x = b.id`)".into())
                }
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => {
                    return Err("LEFT JOIN adds columns to the stream's rows, so it belongs to the stream's own FROM, not to a subquery or CTE".into())
                }
                _ => return Err("only [INNER] JOIN and LEFT JOIN are supported in a stream query (no RIGHT, FULL or CROSS JOIN)".into()),
            };
            let n = node(j.relation, ctes)?;
            if left {
                lefts.push((n, on));
            } else {
                nodes.push(n);
                conjuncts(on, &mut conds);
            }
        }
    }
    if let Some(w) = s.selection {
        conjuncts(w, &mut conds);
    }
    if nodes.is_empty() {
        return match output {
            Output::Value(out) => Ok(Level {
                source: Source::Nothing,
                output: Some(*out),
                conds,
                subs: Vec::new(),
                joined: Vec::new(),
            }),
            Output::Data(_) => {
                Err("a stream query must select from a table (FROM table ...)".into())
            }
        };
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let all_names: Vec<String> = names
        .iter()
        .cloned()
        .chain(lefts.iter().map(|(n, _)| n.name.clone()))
        .collect();
    if let Some(d) = all_names
        .iter()
        .enumerate()
        .find(|(i, n)| all_names[..*i].contains(n))
    {
        return Err(format!(
            "the name `{}` is used twice in FROM; give one an alias",
            d.1
        ));
    }
    let single = nodes.len() == 1;
    let owner = |e: &Expr| -> Result<Vec<usize>, String> { owners(e, &names, single) };
    // The root: the node the output reads.
    let root = match &output {
        Output::Value(e) => match owner(e)?.as_slice() {
            [] if single => 0,
            [n] => *n,
            _ => {
                return Err(format!(
                    "the subquery must select one column of one table, not `{e}`"
                ))
            }
        },
        Output::Data(items) => {
            if !lefts.is_empty() && items.iter().any(|i| matches!(i, SelectItem::Wildcard(_))) {
                return Err(
                    "`*` in a query with JOIN: select the columns of one table (`t.*`) and name the joined table's columns"
                        .into(),
                );
            }
            if single {
                0
            } else {
                selected_table(items, &names, &all_names)?
            }
        }
    };
    // A LEFT JOIN: `root.x = t.y`, nothing else, and nothing else on it.
    let mut joined: Vec<Joined> = Vec::new();
    for (n, on) in lefts {
        let Source::Table(table, alias) = &n.source else {
            return Err(format!("LEFT JOIN `{}`: join a table", n.name));
        };
        if n.cte.is_some() {
            return Err(format!(
                "LEFT JOIN `{}`: a CTE cannot be LEFT JOINed; join a table",
                n.name
            ));
        }
        let shown = on.to_string();
        let sides = match query::unnest(&on) {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                let q = |e: &Expr| match query::unnest(e) {
                    Expr::CompoundIdentifier(ids) if ids.len() == 2 => Some(ids[0].value.clone()),
                    _ => None,
                };
                match (q(left), q(right)) {
                    (Some(a), Some(b)) if a == names[root] && b == n.name => {
                        Some((left.as_ref().clone(), right.as_ref().clone()))
                    }
                    (Some(a), Some(b)) if b == names[root] && a == n.name => {
                        Some((right.as_ref().clone(), left.as_ref().clone()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((root_side, their_side)) = sides else {
            return Err(format!(
                "LEFT JOIN {} ON {shown}: compare a column of the selected table with the joined table's key (`{}.x = {}.id`), and nothing else",
                n.name, names[root], n.name
            ));
        };
        if let Some(c) = conds.iter().find(|c| mentions_table(c, &n.name)) {
            return Err(format!(
                "`{c}`: `{}` is LEFT JOINed, which adds columns and filters nothing; use [INNER] JOIN to filter by it",
                n.name
            ));
        }
        joined.push(Joined {
            name: n.name.clone(),
            table: table.clone(),
            alias: alias.clone(),
            root_side,
            their_side,
        });
    }

    // Conditions: per node, and the join edges between two nodes.
    let mut per_node: Vec<Vec<Expr>> = vec![Vec::new(); nodes.len()];
    let mut edges: Vec<(usize, Expr, usize, Expr)> = Vec::new();
    let mut subqueries: Vec<(usize, Expr, Level)> = Vec::new();
    for c in conds {
        if let Some((lhs, sub)) = in_subquery(&c, ctes, depth)? {
            let o = owner(&lhs)?;
            let n = match o.as_slice() {
                [n] => *n,
                [] if single => 0,
                _ => {
                    return Err(format!(
                        "the left side of `IN (SELECT ...)` must read one table: `{lhs}`"
                    ))
                }
            };
            subqueries.push((n, lhs, sub));
            continue;
        }
        if has_subquery(&c) {
            return Err(format!("unsupported subquery in `{c}`: write `column IN (SELECT ...)` as a condition of its own, joined by AND"));
        }
        let o = owner(&c)?;
        match o.as_slice() {
            [] => per_node[root].push(c),
            [n] => per_node[*n].push(c),
            [a, b] => match query::unnest(&c) {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } if is_column(left) && is_column(right) && !has_request(&c) => {
                    let (l, r) = (left.as_ref().clone(), right.as_ref().clone());
                    let lo = owner(&l)?[0];
                    let (ea, eb) = if lo == *a { (l, r) } else { (r, l) };
                    edges.push((*a, ea, *b, eb));
                }
                _ => {
                    return Err(format!(
                    "unsupported condition `{c}` between two tables: join them with `a.x = b.y`"
                ))
                }
            },
            _ => {
                return Err(format!(
                    "unsupported condition `{c}`: it reads more than two tables"
                ))
            }
        }
    }

    // Hang every node off the root through the edges (a tree: each node
    // joined once).
    let mut level_of: Vec<Option<Level>> = Vec::new();
    let mut sources: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    for _ in 0..sources.len() {
        level_of.push(None);
    }
    let mut parent: Vec<Option<(usize, Expr, Expr)>> = vec![None; sources.len()];
    let mut seen = vec![false; sources.len()];
    seen[root] = true;
    let mut order = vec![root];
    let mut used = vec![false; edges.len()];
    let mut k = 0;
    while k < order.len() {
        let cur = order[k];
        for (i, (a, ea, b, eb)) in edges.iter().enumerate() {
            if used[i] {
                continue;
            }
            let (other, mine, theirs) = if *a == cur {
                (*b, ea, eb)
            } else if *b == cur {
                (*a, eb, ea)
            } else {
                continue;
            };
            used[i] = true;
            if seen[other] {
                return Err(format!(
                    "`{}` is joined twice; join each table once",
                    names[other]
                ));
            }
            seen[other] = true;
            parent[other] = Some((cur, mine.clone(), theirs.clone()));
            order.push(other);
        }
        k += 1;
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(format!(
            "`{}` is not joined to `{}`: add `{}.x = {}.y`",
            names[i], names[root], names[i], names[root]
        ));
    }
    // Build levels leaves first.
    for &n in order.iter().rev() {
        let nd = sources[n].take().expect("each node once");
        if let (Some((p, mine, theirs)), Source::Table(table, alias), None) =
            (&parent[n], &nd.source, &nd.cte)
        {
            if *p == root {
                joined.push(Joined {
                    name: names[n].clone(),
                    table: table.clone(),
                    alias: alias.clone(),
                    root_side: mine.clone(),
                    their_side: theirs.clone(),
                });
            }
        }
        let out = match (&parent[n], n == root, &output) {
            (Some((_, _, theirs)), _, _) => Some(theirs.clone()),
            (None, true, Output::Value(e)) => Some(e.as_ref().clone()),
            _ => None,
        };
        let mut level = match &nd.cte {
            Some(cte) => {
                let col = match &out {
                    Some(e) => column_name(e).ok_or_else(|| format!("select a column of `{cte}` by name, not `{e}`"))?,
                    None => return Err(format!("`{cte}` is a CTE; a stream returns the rows of a table, so filter with `IN {cte}`")),
                };
                cte_level(cte, Some(&col), ctes, depth + 1)?
            }
            None => Level {
                source: nd.source,
                output: out,
                conds: Vec::new(),
                subs: Vec::new(),
                joined: Vec::new(),
            },
        };
        level.conds.append(&mut per_node[n]);
        for (owner_n, lhs, sub) in subqueries.iter() {
            if *owner_n == n {
                level.subs.push((lhs.clone(), sub.clone(), true));
            }
        }
        for (c, slot) in parent.iter().enumerate() {
            if let Some((p, mine, _)) = slot {
                if *p == n {
                    let child = level_of[c].take().expect("children are built first");
                    level.subs.push((mine.clone(), child, false));
                }
            }
        }
        level_of[n] = Some(level);
    }
    let mut root_level = level_of[root].take().expect("root built");
    root_level.joined = joined;
    Ok(root_level)
}

/// The table a query with joins selects: the one of `t.*`, else the one
/// its `id` comes from.
fn selected_table(
    items: &[SelectItem],
    names: &[String],
    all_names: &[String],
) -> Result<usize, String> {
    for item in items {
        match item {
            SelectItem::QualifiedWildcard(k, _) => {
                let k = wildcard_table(&k.to_string());
                return match names.iter().position(|n| *n == k) {
                    Some(n) => Ok(n),
                    None if all_names.contains(&k) => Err(format!(
                        "`{k}.*`: `{k}` is LEFT JOINed; select the columns of the table the rows come from (`t.*`) and name `{k}`'s columns"
                    )),
                    None => Err(format!("unknown table `{k}` in `{k}.*`")),
                };
            }
            SelectItem::Wildcard(_) => {
                return Err(
                    "`*` in a query with JOIN: select the columns of one table (`t.*`)".into(),
                )
            }
            _ => {}
        }
    }
    for item in items {
        let (name, e) = match item {
            SelectItem::ExprWithAlias { expr, alias } => (alias.value.clone(), expr),
            SelectItem::UnnamedExpr(e) => match column_name(e) {
                Some(n) => (n, e),
                None => continue,
            },
            _ => continue,
        };
        if name != "id" {
            continue;
        }
        if let [q] = qualifiers(e).as_slice() {
            if let Some(n) = names.iter().position(|n| n == q) {
                return Ok(n);
            }
        }
    }
    Err(
        "select the columns of one table (`t.*`, or its `id` and other columns) the rows come from"
            .into(),
    )
}

/// The level a CTE stands for, selecting `column` (or its one output).
fn cte_level(name: &str, column: Option<&str>, ctes: &Ctes, depth: usize) -> Result<Level, String> {
    let sql = &ctes[name];
    let s = query::parse_query(sql).map_err(|e| format!("in CTE `{name}`: {e}"))?;
    query::check_plain(&s).map_err(|e| format!("in CTE `{name}`: {e}"))?;
    let mut chosen = None;
    for item in &s.projection {
        let (n, e) = query::output_name(item).map_err(|e| format!("in CTE `{name}`: {e}"))?;
        match column {
            Some(c) if c == n => chosen = Some(e),
            None if s.projection.len() == 1 => chosen = Some(e),
            None => {
                return Err(format!(
                "`IN {name}` needs a CTE with one column; write `IN (SELECT column FROM {name})`"
            ))
            }
            _ => {}
        }
    }
    let out = chosen.ok_or_else(|| {
        format!(
            "CTE `{name}` has no column `{}`",
            column.unwrap_or_default()
        )
    })?;
    build_level(s, ctes, Output::Value(Box::new(out)), depth)
        .map_err(|e| format!("in CTE `{name}`: {e}"))
}

/// `lhs IN (SELECT ...)` or `lhs IN cte`: the left side and the subquery's level.
fn in_subquery(c: &Expr, ctes: &Ctes, depth: usize) -> Result<Option<(Expr, Level)>, String> {
    match query::unnest(c) {
        Expr::InSubquery { expr, subquery, negated: false } => {
            Ok(Some((expr.as_ref().clone(), subquery_level(subquery, ctes, depth)?)))
        }
        Expr::InSubquery { negated: true, .. } => {
            Err("`NOT IN (SELECT ...)` is not supported: a row's buckets come from what the subquery returns".into())
        }
        Expr::InList { expr, list, negated: false } if list.len() == 1 => match &list[0] {
            Expr::Identifier(i) if ctes.contains_key(&i.value) => {
                Ok(Some((expr.as_ref().clone(), cte_level(&i.value, None, ctes, depth + 1)?)))
            }
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

fn subquery_level(q: &Query, ctes: &Ctes, depth: usize) -> Result<Level, String> {
    if q.with.is_some() {
        return Err("WITH inside a subquery is not supported: define CTEs under `with:`".into());
    }
    if q.order_by.is_some() || q.limit_clause.is_some() {
        return Err("ORDER BY and LIMIT are not supported in a subquery".into());
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return Err("a subquery must be a plain SELECT".into());
    };
    let s = s.as_ref().clone();
    query::check_plain(&s)?;
    let out = match s.projection.as_slice() {
        [SelectItem::UnnamedExpr(e)] | [SelectItem::ExprWithAlias { expr: e, .. }] => e.clone(),
        _ => return Err("a subquery must select exactly one column".into()),
    };
    // `SELECT c FROM cte [WHERE ...]`: the CTE's level with the extra conditions.
    if s.from.len() == 1 && s.from[0].joins.is_empty() {
        if let TableFactor::Table {
            name,
            args: None,
            alias: None,
            ..
        } = &s.from[0].relation
        {
            if name.0.len() == 1 {
                if let ObjectNamePart::Identifier(i) = &name.0[0] {
                    if ctes.contains_key(&i.value) {
                        let col = column_name(&out).ok_or_else(|| {
                            format!("select a column of `{}` by name, not `{out}`", i.value)
                        })?;
                        let mut level = cte_level(&i.value, Some(&col), ctes, depth + 1)?;
                        if let Some(w) = s.selection.clone() {
                            conjuncts(w, &mut level.conds);
                        }
                        return Ok(level);
                    }
                }
            }
        }
    }
    build_level(s, ctes, Output::Value(Box::new(out)), depth + 1)
}

fn column_name(e: &Expr) -> Option<String> {
    match query::unnest(e) {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(ids) if ids.len() == 2 => Some(ids[1].value.clone()),
        _ => None,
    }
}

fn is_column(e: &Expr) -> bool {
    matches!(
        query::unnest(e),
        Expr::Identifier(_) | Expr::CompoundIdentifier(_)
    )
}

/// Which FROM items an expression's columns belong to (subqueries skipped).
fn owners(e: &Expr, names: &[String], single: bool) -> Result<Vec<usize>, String> {
    let mut out: Vec<usize> = Vec::new();
    let mut err = None;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        let hit = match x {
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => {
                return ControlFlow::Break(())
            }
            Expr::CompoundIdentifier(ids) if ids.len() == 2 => {
                match names.iter().position(|n| *n == ids[0].value) {
                    Some(n) => Some(n),
                    None if single => Some(0),
                    None => {
                        err = Some(format!("unknown table `{}` in `{x}`", ids[0].value));
                        return ControlFlow::Break(());
                    }
                }
            }
            Expr::Identifier(i) if single => {
                let _ = i;
                Some(0)
            }
            Expr::Identifier(i) => {
                err = Some(format!(
                    "qualify the column `{}` with its table: the query reads several",
                    i.value
                ));
                return ControlFlow::Break(());
            }
            _ => None,
        };
        if let Some(n) = hit {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        ControlFlow::Continue(())
    });
    match err {
        Some(e) => Err(e),
        None => {
            out.sort();
            Ok(out)
        }
    }
}

fn has_subquery(e: &Expr) -> bool {
    sqlparser::ast::visit_expressions(e, |x| match x {
        Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// Whether the expression reads `auth.*`, `subscription.*` or `connection.*`.
pub fn has_request(e: &Expr) -> bool {
    sqlparser::ast::visit_expressions(e, |x| match x {
        Expr::Function(f)
            if is_request_fn(&f.name.to_string())
                || f.name.to_string().eq_ignore_ascii_case(LOOKUP_FN) =>
        {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn is_request_fn(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["auth.", "subscription.", "connection.", "request."]
        .iter()
        .any(|p| lower.starts_with(p))
}

fn has_columns(e: &Expr) -> bool {
    sqlparser::ast::visit_expressions(e, |x| match x {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

enum Match {
    /// `row = request`
    Eq(Expr, Expr),
    /// `row IN request-array`
    In(Expr, Expr),
}

fn request_match(c: &Expr) -> Option<Match> {
    let side = |e: &Expr| (has_columns(e), has_request(e));
    match query::unnest(c) {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => match (side(left), side(right)) {
            ((true, false), (false, true)) => {
                Some(Match::Eq(left.as_ref().clone(), right.as_ref().clone()))
            }
            ((false, true), (true, false)) => {
                Some(Match::Eq(right.as_ref().clone(), left.as_ref().clone()))
            }
            _ => None,
        },
        Expr::InList {
            expr,
            list,
            negated: false,
        } if list.len() == 1 => match (side(expr), side(&list[0])) {
            ((true, false), (false, true)) => {
                Some(Match::In(expr.as_ref().clone(), list[0].clone()))
            }
            _ => None,
        },
        _ => None,
    }
}

fn same_expr(a: &Expr, b: &Expr) -> bool {
    let strip = |e: &Expr| column_name(e).unwrap_or_else(|| query::unnest(e).to_string());
    strip(a) == strip(b)
}

fn eq(l: Expr, r: Expr) -> Expr {
    Expr::BinaryOp {
        left: Box::new(l),
        op: BinaryOperator::Eq,
        right: Box::new(r),
    }
}

/// The keys of `subscription.parameter('k')` calls in a query (what a
/// subscription must pass).
pub fn subscription_keys(sql: &str) -> Vec<String> {
    let Ok(s) = query::parse_query(sql) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let _ = sqlparser::ast::visit_expressions(&s, |x| {
        if let Expr::Function(f) = x {
            if f.name
                .to_string()
                .eq_ignore_ascii_case("subscription.parameter")
            {
                if let Ok(args) = crate::typing::call_args(f) {
                    if let [Expr::Value(v)] = args.as_slice() {
                        if let Value::SingleQuotedString(k) = &v.value {
                            if !keys.contains(k) {
                                keys.push(k.clone());
                            }
                        }
                    }
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    keys
}
