//! Data queries: the rows of one table a bucket holds, as
//! `(bucket, object_type, object_id, subkey, relid, pk, data)`.
//!
//! The WHERE clause becomes OR branches over its bucket-parameter matches
//! (plain filters stay whole); every branch must match each bucket parameter
//! once, and the branches' rows are the union, as in PowerSync.

use super::joined;
use super::sqlgen::{bucket_id_sql, pk_exprs, RowQuery};
use super::values::{
    cast_type, json_object_sql, param_jsonb, sqlite_type, sqlite_value, ClientColumn,
};
use super::DataQuery;
use crate::catalog::{Catalog, Table};
use crate::filter;
use crate::query::{
    self, as_bucket_param, mentions_bucket, output_name, parse_select_left_joins, From,
};
use crate::rewrite::{elements_jsonb, rewrite, rewrite_output, Scope};
use crate::yaml::BucketSource;
use crate::{quote_ident, quote_literal};
use sqlparser::ast::{BinaryOperator, Expr, SelectItem};

pub fn compile_data_query<'c>(
    src: &BucketSource,
    sql: &str,
    catalog: &'c Catalog,
    params: &[String],
) -> Result<(DataQuery, &'c Table), String> {
    let (sel, left_joins) = parse_select_left_joins(sql)?;
    if !left_joins.is_empty() && !src.options.streams {
        return Err("JOIN is not supported: a query reads one table".into());
    }
    let (name, alias) = match sel.from {
        Some(From::Table(n, a)) => (n, a),
        Some(From::JsonEach(..)) => {
            return Err(
                "a data query must read a table; json_each(...) is for parameter queries".into(),
            )
        }
        None => return Err("a data query must read a table (FROM ...)".into()),
    };
    let t = query::resolve_table(catalog, &name)?;
    let object_type = alias.clone().unwrap_or_else(|| t.name.clone());
    let alias = alias.unwrap_or_else(|| t.name.clone());
    let scope = Scope {
        table: Some((t, &alias)),
        json_each: None,
        options: &src.options,
    };
    let (pk_json, keyed_from) = pk_exprs(t, &alias, &src.name)?;
    let a = quote_ident(&alias);
    let joins = joined::resolve(left_joins, catalog, t, &alias)?;

    let mut columns: Vec<(String, String)> = Vec::new();
    let mut client_columns: Vec<ClientColumn> = Vec::new();
    let mut push = |columns: &mut Vec<(String, String)>,
                    name: String,
                    e: String,
                    pg_type: Option<&str>|
     -> Result<(), String> {
        if columns.iter().any(|(n, _)| *n == name) {
            return Err(format!("column \"{name}\" is selected twice"));
        }
        client_columns.push(ClientColumn {
            name: name.clone(),
            sqlite_type: sqlite_type(pg_type).to_string(),
        });
        columns.push((name, e));
        Ok(())
    };
    let bytea_err = |c: &str| {
        format!("column \"{c}\" is bytea, which a SQLite client cannot receive as JSON: select encode({c}, 'base64') AS {c} instead")
    };
    for item in &sel.projection {
        match item {
            SelectItem::Wildcard(_) => {
                for c in &t.columns {
                    // PowerSync's `*` skips columns starting with `_`.
                    if c.name.starts_with('_') {
                        continue;
                    }
                    if c.type_name == "bytea" {
                        return Err(bytea_err(&c.name));
                    }
                    let e = format!("{a}.{}", quote_ident(&c.name));
                    push(
                        &mut columns,
                        c.name.clone(),
                        sqlite_value(&e, Some(&c.type_name), &src.options),
                        Some(&c.type_name),
                    )?;
                }
            }
            _ => {
                let (out, mut e) = output_name(item)?;
                let (t, scope) = match joined::owner(&e, &joins)? {
                    Some(j) => (
                        joins[j].table,
                        Scope {
                            table: Some((joins[j].table, joins[j].alias.as_str())),
                            ..scope
                        },
                    ),
                    None => (t, scope),
                };
                let plain_col = match &e {
                    Expr::Identifier(i) => Some(i.value.clone()),
                    Expr::CompoundIdentifier(ids) if ids.len() == 2 => Some(ids[1].value.clone()),
                    _ => None,
                };
                let cast_ty = cast_type(&e);
                let refs = rewrite_output(&mut e, scope)?;
                if refs.request {
                    return Err(format!("column \"{out}\" uses request values; data queries can only use the table's columns and bucket parameters"));
                }
                if !refs.bucket_params.is_empty() {
                    return Err(format!(
                        "column \"{out}\" uses bucket parameters; use them only in WHERE"
                    ));
                }
                let col = plain_col.and_then(|c| t.column(&c));
                if let Some(c) = col {
                    if c.type_name == "bytea" {
                        return Err(bytea_err(&c.name));
                    }
                }
                let ty = col.map(|c| c.type_name.as_str()).or(cast_ty);
                let typed = sqlite_value(
                    &e.to_string(),
                    col.map(|c| c.type_name.as_str()),
                    &src.options,
                );
                push(&mut columns, out, typed, ty)?;
            }
        }
    }
    let Some(id_expr) = id_expr_of(&sel.projection, scope)? else {
        return Err(format!(
            "the query must select an `id` column (table \"{}\" rows are identified by it); add e.g. `{} AS id`",
            t.name,
            t.primary_key.first().map(String::as_str).unwrap_or("key")
        ));
    };

    let branches = filter::branches(sel.selection, &|e| !mentions_bucket(e))?;
    let data = json_object_sql(&columns);
    let subkey = format!(
        "({} || ({pk_json})::text)",
        quote_literal(&format!("{}:", t.oid))
    );
    let mut keyed = Vec::new();
    let mut full = Vec::new();
    let multi = branches.len() > 1;
    let mut may_duplicate = multi;
    for conds in branches {
        let b = compile_branch(conds, scope, params, multi)?;
        may_duplicate |= !b.laterals.is_empty();
        let mut filters = b.filters;
        filters.push(format!("({id_expr}) IS NOT NULL"));
        let select = format!(
            "SELECT {bucket} AS bucket, {otype} AS object_type, ({id_expr})::text AS object_id, {subkey} AS subkey, {oid}::oid AS relid, {pk_json} AS pk, {data} AS data",
            bucket = bucket_id_sql(&src.name, &b.values),
            otype = quote_literal(&object_type),
            oid = t.oid,
        );
        let q = RowQuery {
            select,
            from_table: format!("{} AS {a}", t.qualified()),
            from_rest: format!(
                "{} {}",
                joins
                    .iter()
                    .map(|j| j.sql.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                b.laterals.join(" ")
            ),
            conds: filters,
            table: t,
            bucket: &src.name,
            keyed_from: keyed_from.clone(),
        };
        keyed.push(q.keyed());
        full.push(q.full());
    }
    Ok((
        DataQuery {
            relid: t.oid,
            object_type,
            may_duplicate,
            columns: client_columns,
            sql_keyed: keyed.join(" UNION ALL "),
            sql_full: full.join(" UNION ALL "),
            joined: joins.into_iter().map(|j| j.keys).collect(),
        },
        t,
    ))
}

/// One OR branch of a data query's WHERE: the bucket id values (in
/// parameter order), the filters and the laterals that expand `IN`.
struct Branch {
    values: Vec<String>,
    filters: Vec<String>,
    laterals: Vec<String>,
}

fn compile_branch(
    conds: Vec<Expr>,
    scope: Scope,
    params: &[String],
    multi: bool,
) -> Result<Branch, String> {
    let mut bound: Vec<(String, String)> = Vec::new(); // param -> jsonb expr
    let mut filters = Vec::new();
    let mut laterals = Vec::new();
    for c in conds {
        let shown = c.to_string();
        // (parameter, row expression, `IN`, a NULL row value matches `null`)
        let binding = match query::unnest(&c) {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (as_bucket_param(left), as_bucket_param(right)) {
                (Some(p), None) => Some((p, right.as_ref().clone(), false, false)),
                (None, Some(p)) => Some((p, left.as_ref().clone(), false, false)),
                _ => None,
            },
            // What a stream's `col IN (SELECT …)` lowers to (not PowerSync's
            // bucket_definitions grammar, so only there).
            Expr::IsNotDistinctFrom(l, r) if scope.options.streams => {
                as_bucket_param(r).map(|p| (p, l.as_ref().clone(), false, true))
            }
            Expr::InList {
                expr,
                list,
                negated: false,
            } if list.len() == 1 => as_bucket_param(expr).map(|p| (p, list[0].clone(), true, true)),
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => as_bucket_param(left).map(|p| (p, right.as_ref().clone(), true, true)),
            _ => None,
        };
        match binding {
            Some((p, mut e, is_in, nulls)) => {
                let refs = rewrite(&mut e, scope)?;
                if refs.request || !refs.bucket_params.is_empty() {
                    return Err(format!("unsupported condition `{shown}`: compare bucket.{p} with a column expression"));
                }
                if !params.contains(&p) {
                    return Err(unknown_param(&p, params));
                }
                if bound.iter().any(|(q, _)| *q == p) {
                    return Err(format!("bucket.{p} is matched twice in WHERE"));
                }
                if is_in {
                    let n = laterals.len() + 1;
                    laterals.push(format!(
                        "CROSS JOIN LATERAL outpost._elements({}) AS _outpost_e{n}(v)",
                        elements_jsonb(&e, &scope)
                    ));
                    if !scope.options.null_parameters() {
                        filters.push(format!("_outpost_e{n}.v <> 'null'::jsonb"));
                    }
                    bound.push((p, format!("_outpost_e{n}.v")));
                } else {
                    if !nulls || !scope.options.null_parameters() {
                        filters.push(format!("({e}) IS NOT NULL"));
                    }
                    bound.push((p, param_jsonb(&e, &scope)));
                }
            }
            None => {
                let mut e = c;
                let refs = rewrite(&mut e, scope)?;
                if refs.request {
                    return Err(format!("unsupported condition `{shown}`: data queries cannot use request values; use a parameter query"));
                }
                if let Some(p) = refs.bucket_params.first() {
                    if !params.contains(p) {
                        return Err(unknown_param(p, params));
                    }
                    return Err(format!(
                        "unsupported condition `{shown}`: bucket parameters may only be matched with `= bucket.{p}` or `bucket.{p} IN column`, combined with AND or OR"
                    ));
                }
                filters.push(format!("({e})"));
            }
        }
    }
    for p in params {
        if !bound.iter().any(|(q, _)| q == p) {
            return Err(if multi {
                format!("bucket parameter `{p}` is not matched in every OR branch: each side of an OR must match the same bucket parameters (or split it into separate queries)")
            } else {
                format!("bucket parameter `{p}` is not matched: add `WHERE <column> = bucket.{p}`")
            });
        }
    }
    let values = params
        .iter()
        .map(|p| {
            let e = &bound.iter().find(|(q, _)| q == p).expect("checked").1;
            format!("coalesce(({e})::text, 'null')")
        })
        .collect();
    Ok(Branch {
        values,
        filters,
        laterals,
    })
}

fn unknown_param(p: &str, params: &[String]) -> String {
    if params.is_empty() {
        format!("unknown bucket parameter `bucket.{p}`: this bucket has no parameter query")
    } else {
        format!(
            "unknown bucket parameter `bucket.{p}` (the parameter queries define: {})",
            params.join(", ")
        )
    }
}

/// The `id` output's expression, unconverted (object ids are its text form).
fn id_expr_of(projection: &[SelectItem], scope: Scope) -> Result<Option<String>, String> {
    let (t, alias) = scope.table.expect("data queries read a table");
    for item in projection {
        match item {
            SelectItem::Wildcard(_) => {
                if t.column("id").is_some() {
                    return Ok(Some(format!("{}.\"id\"", quote_ident(alias))));
                }
            }
            _ => {
                let (name, mut e) = output_name(item)?;
                if name == "id" {
                    rewrite(&mut e, scope)?;
                    return Ok(Some(e.to_string()));
                }
            }
        }
    }
    Ok(None)
}
