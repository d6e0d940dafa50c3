//! Parameter queries: static ones (request values only, optionally over
//! `json_each(...)`) compile to SQL that yields bucket ids; table ones to the
//! materialized lookups a tick keeps current plus the request-time lookup query.
//!
//! A table query's WHERE becomes OR branches over its column-to-request
//! comparisons; each branch is its own lookup (tagged with the branch, so a
//! value from one branch never matches another's), and the buckets are the
//! union, as in PowerSync.

use super::sqlgen::{bucket_id_sql, jsonb_text_of, lookup_text, pk_exprs, RowQuery};
use super::values::param_jsonb;
use super::ParamQuery;
use crate::catalog::Catalog;
use crate::filter;
use crate::query::{self, conjuncts, output_name, parse_select, From};
use crate::rewrite::{elements_jsonb, rewrite, rewrite_output, Refs, Scope, JSON_EACH_SQL};
use crate::yaml::BucketSource;
use crate::{quote_ident, quote_literal};
use sqlparser::ast::{BinaryOperator, Expr, SelectItem, Value};

/// A compiled parameter query and what the bucket learns from it.
pub struct Compiled {
    pub names: Vec<String>,
    pub query: ParamQuery,
    /// A `_priority` output (a constant 0–3).
    pub priority: Option<i32>,
    /// Client-chosen values decide access and no token value takes part.
    pub dangerous: bool,
}

pub fn compile_param_query(
    src: &BucketSource,
    i: usize,
    sql: &str,
    catalog: &Catalog,
    order: Option<&[String]>,
    lookup: bool,
) -> Result<Compiled, String> {
    let sel = parse_select(sql)?;
    // A lookup's rows carry a value (JSON text), not a bucket id.
    let id = if lookup {
        format!("{}#l{}", src.name, i)
    } else {
        format!("{}#{}", src.name, i)
    };
    let (table, json_each) = match &sel.from {
        None => (None, None),
        Some(From::Table(name, alias)) => {
            let t = query::resolve_table(catalog, name)?;
            (
                Some((t, alias.clone().unwrap_or_else(|| t.name.clone()))),
                None,
            )
        }
        Some(From::JsonEach(arg, alias)) => (
            None,
            Some((
                arg.clone(),
                alias.clone().unwrap_or_else(|| "json_each".into()),
            )),
        ),
    };
    let scope = Scope {
        table: table.as_ref().map(|(t, a)| (*t, a.as_str())),
        json_each: json_each.as_ref().map(|(_, a)| a.as_str()),
        options: &src.options,
    };
    let mut outputs: Vec<(String, Expr, bool)> = Vec::new();
    let mut priority = None;
    let mut output_refs = Refs::default();
    for item in &sel.projection {
        if matches!(item, SelectItem::Wildcard(_)) {
            return Err(
                "`*` is not allowed in a parameter query: name each bucket parameter".into(),
            );
        }
        let (name, mut e) = output_name(item)?;
        if name == "_priority" {
            priority = Some(priority_of(&e)?);
            continue;
        }
        if name == crate::stream::GATE && src.options.streams && table.is_none() {
            continue;
        }
        let refs = rewrite_output(&mut e, scope)?;
        if !refs.bucket_params.is_empty() {
            return Err("`bucket.` parameters cannot be used in a parameter query".into());
        }
        // A table query's output is either the row's (materialized with the
        // lookup) or the request's (evaluated when a request reads the
        // lookup), as PowerSync splits them; one expression cannot be both.
        let from_request = table.is_some() && refs.request;
        if from_request && !refs.columns.is_empty() {
            return Err(format!(
                "parameter `{name}` mixes request values and columns in one expression; output either a column expression or a request value"
            ));
        }
        if from_request && lookup {
            return Err(format!(
                "parameter `{name}`: a nested subquery outputs columns of its table only"
            ));
        }
        if outputs.iter().any(|(n, _, _)| *n == name) {
            return Err(format!("parameter `{name}` is defined twice"));
        }
        output_refs.merge(refs);
        outputs.push((name, e, from_request));
    }
    if outputs.is_empty() && !(src.options.streams && table.is_none()) {
        return Err("a parameter query must output at least one parameter".into());
    }
    let mut names: Vec<String> = outputs.iter().map(|(n, _, _)| n.clone()).collect();
    if let Some(order) = order {
        let mut reordered = Vec::new();
        for n in order {
            let pos = outputs
                .iter()
                .position(|(m, _, _)| m == n)
                .expect("same parameter set");
            reordered.push(outputs[pos].clone());
        }
        outputs = reordered;
        names = order.to_vec();
    }
    let values: Vec<String> = outputs
        .iter()
        .map(|(_, e, _)| jsonb_text_of(&param_jsonb(&Expr::Nested(Box::new(e.clone())), &scope)))
        .collect();
    // A NULL output (a missing claim, a NULL column) is a bucket parameter
    // like any other, `null` in the bucket id, except in edition 3, where
    // it gives no bucket (a JSON null counts as NULL there).
    let nulls = src.options.null_parameters();
    let not_null = |e: &Expr| format!("nullif(to_jsonb({e}), 'null'::jsonb) IS NOT NULL");
    let request_outputs = outputs.iter().any(|(_, _, r)| *r);
    let (row_outputs, req_outputs): (Vec<_>, Vec<_>) = outputs.iter().partition(|(_, _, r)| !*r);
    let not_null_row: Vec<String> = if nulls {
        Vec::new()
    } else {
        row_outputs.iter().map(|(_, e, _)| not_null(e)).collect()
    };

    match &table {
        None => {
            let mut conds = Vec::new();
            if let Some(w) = sel.selection {
                conjuncts(w, &mut conds);
            }
            let mut filters = Vec::new();
            let mut client = output_refs.client_params;
            for mut c in conds {
                let refs = rewrite(&mut c, scope)?;
                if !refs.bucket_params.is_empty() {
                    return Err("`bucket.` parameters cannot be used in a parameter query".into());
                }
                client |= refs.client_params;
                filters.push(format!("({c})"));
            }
            filters.extend(not_null_row);
            let mut from = String::new();
            if let Some((arg, _)) = &json_each {
                let mut arg = arg.as_ref().clone();
                let r = rewrite(
                    &mut arg,
                    Scope {
                        json_each: None,
                        ..scope
                    },
                )?;
                client |= r.client_params;
                from = format!(" FROM {}", json_each_sql(&arg.to_string()));
            }
            let where_ = if filters.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", filters.join(" AND "))
            };
            Ok(Compiled {
                names,
                query: ParamQuery::Static {
                    id,
                    sql: format!(
                        "SELECT {} AS bucket{from}{where_}",
                        bucket_id_sql(&src.name, &values)
                    ),
                },
                priority,
                // Safe only when a bucket parameter comes from the token.
                dangerous: client && !output_refs.token_params,
            })
        }
        Some((t, alias)) => {
            let (pk_json, keyed_from) = pk_exprs(t, alias, &src.name)?;
            let mixes = |e: &Expr| {
                let mut e = e.clone();
                rewrite(&mut e, scope)
                    .map(|r| !r.columns.is_empty() && r.request)
                    .unwrap_or(false)
            };
            let branches = filter::branches(sel.selection, &|e| !mixes(e))?;
            let tagged = branches.len() > 1;
            let (mut keyed, mut full, mut lookups) = (Vec::new(), Vec::new(), Vec::new());
            let (mut client, mut authenticated) = (false, false);
            for (k, conds) in branches.into_iter().enumerate() {
                let b = compile_branch(conds, scope)?;
                client |= b.client;
                authenticated |= b.authenticated;
                let tag = tagged.then(|| quote_literal(&format!("#{}", k + 1)));
                let row_lookup: Vec<String> = tag.iter().cloned().chain(b.row_lookup).collect();
                let req_lookup: Vec<String> = tag.into_iter().chain(b.req_lookup).collect();
                let mut conds = b.row_filters;
                conds.extend(not_null_row.iter().cloned());
                let select = format!(
                    "SELECT {id_lit} AS query_id, {oid}::oid AS relid, {pk_json} AS pk, jsonb_build_array({lookup}) AS lookup, {bucket} AS bucket",
                    id_lit = quote_literal(&id),
                    oid = t.oid,
                    lookup = row_lookup.join(", "),
                    bucket = if lookup {
                        values[0].clone()
                    } else if request_outputs {
                        row_values_sql(&row_outputs, &scope)
                    } else {
                        bucket_id_sql(&src.name, &values)
                    },
                );
                let q = RowQuery {
                    select,
                    from_table: format!("{} AS {}", t.qualified(), quote_ident(alias)),
                    from_rest: b.row_laterals.join(" "),
                    conds,
                    table: t,
                    bucket: &src.name,
                    keyed_from: keyed_from.clone(),
                };
                keyed.push(q.keyed());
                full.push(q.full());
                let where_ = if b.req_filters.is_empty() {
                    String::new()
                } else {
                    format!(" WHERE {}", b.req_filters.join(" AND "))
                };
                lookups.push(format!(
                    "SELECT jsonb_build_array({}) AS lookup FROM (SELECT 1) AS _req {}{where_}",
                    req_lookup.join(", "),
                    b.req_laterals.join(" ")
                ));
            }
            Ok(Compiled {
                names,
                query: ParamQuery::Table {
                    id,
                    relid: t.oid,
                    sql_keyed: keyed.join(" UNION ALL "),
                    sql_full: full.join(" UNION ALL "),
                    lookup_sql: lookups.join(" UNION ALL "),
                    lookup_only: lookup,
                    bucket_sql: request_outputs.then(|| {
                        request_bucket_sql(&src.name, &outputs, &req_outputs, nulls, &scope)
                    }),
                },
                priority,
                // Safe when some lookup compares a column with a token value,
                // or a bucket parameter comes from the token (PowerSync's rule).
                dangerous: (client || output_refs.client_params)
                    && !authenticated
                    && !output_refs.token_params,
            })
        }
    }
}

/// What a lookup row of a query with request outputs stores in `bucket`:
/// its row outputs as a JSON array (text), in parameter order.
fn row_values_sql(row_outputs: &[&(String, Expr, bool)], scope: &Scope) -> String {
    let items: Vec<String> = row_outputs
        .iter()
        .map(|(_, e, _)| param_jsonb(e, scope))
        .collect();
    format!("(jsonb_build_array({}))::text", items.join(", "))
}

/// The bucket id of a lookup row (`p` of `outpost.param_rows`, whose
/// `bucket` holds the row outputs, [`row_values_sql`]) for a request
/// (`$1`, `$2`): the row outputs and the request outputs in parameter
/// order; a NULL request value is `null` (`nulls`) or no bucket (NULL).
fn request_bucket_sql(
    name: &str,
    outputs: &[(String, Expr, bool)],
    req_outputs: &[&(String, Expr, bool)],
    nulls: bool,
    scope: &Scope,
) -> String {
    let mut k = 0;
    let values: Vec<String> = outputs
        .iter()
        .map(|(_, e, from_request)| {
            if *from_request {
                jsonb_text_of(&param_jsonb(&Expr::Nested(Box::new(e.clone())), scope))
            } else {
                k += 1;
                format!("((p.bucket)::jsonb -> {})::text", k - 1)
            }
        })
        .collect();
    if nulls {
        return bucket_id_sql(name, &values);
    }
    let conds: Vec<String> = req_outputs
        .iter()
        .map(|(_, e, _)| format!("nullif(to_jsonb({e}), 'null'::jsonb) IS NOT NULL"))
        .collect();
    format!(
        "(CASE WHEN {} THEN {} END)",
        conds.join(" AND "),
        bucket_id_sql(name, &values)
    )
}

/// The rows of `json_each(arg)`, as PowerSync makes them: an array's
/// elements (`key` their index), an object's members (`key` the name), a
/// scalar itself (`key` NULL; JSON `null` too, while SQL NULL gives no
/// rows); text is parsed as JSON first (text that is not JSON gives no rows).
fn json_each_sql(arg: &str) -> String {
    format!(
        "(SELECT CASE WHEN jsonb_typeof(_r) = 'string' THEN outpost._json(_r #>> '{{}}') ELSE _r END AS _j \
         FROM (SELECT to_jsonb({arg}) AS _r) _r0) _src \
         CROSS JOIN LATERAL (SELECT to_jsonb(_e.key), _e.value FROM jsonb_each(CASE WHEN jsonb_typeof(_src._j) = 'object' THEN _src._j END) _e \
         UNION ALL SELECT to_jsonb(_x.n - 1), _x.v FROM jsonb_array_elements(CASE WHEN jsonb_typeof(_src._j) = 'array' THEN _src._j END) WITH ORDINALITY _x(v, n) \
         UNION ALL SELECT NULL::jsonb, _src._j WHERE jsonb_typeof(_src._j) NOT IN ('array', 'object')) AS {JSON_EACH_SQL}(k, v)"
    )
}

/// `_priority` must be a constant the bucket's priority can take.
fn priority_of(e: &Expr) -> Result<i32, String> {
    match query::unnest(e) {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => match n.parse::<i32>() {
                Ok(p) if (0..=3).contains(&p) => Ok(p),
                _ => Err(format!(
                    "`_priority` must be between 0 (highest) and 3, got {n}"
                )),
            },
            _ => Err("`_priority` must be an integer literal".into()),
        },
        _ => Err("`_priority` must be an integer literal".into()),
    }
}

/// One OR branch of a table parameter query's WHERE.
#[derive(Default)]
struct Branch {
    row_filters: Vec<String>,
    req_filters: Vec<String>,
    /// Lookup components: row side and request side, plus their laterals.
    row_lookup: Vec<String>,
    req_lookup: Vec<String>,
    row_laterals: Vec<String>,
    req_laterals: Vec<String>,
    client: bool,
    authenticated: bool,
}

fn compile_branch(conds: Vec<Expr>, scope: Scope) -> Result<Branch, String> {
    let mut b = Branch::default();
    for c in conds {
        let shown = c.to_string();
        let classify = |e: &Expr| -> Result<(Expr, Refs), String> {
            let mut e = e.clone();
            let r = rewrite(&mut e, scope)?;
            if !r.bucket_params.is_empty() {
                return Err("`bucket.` parameters cannot be used in a parameter query".into());
            }
            Ok((e, r))
        };
        let pair = match query::unnest(&c) {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => Some((left.as_ref().clone(), right.as_ref().clone(), false)),
            Expr::InList {
                expr,
                list,
                negated: false,
            } if list.len() == 1 => Some((expr.as_ref().clone(), list[0].clone(), true)),
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => Some((left.as_ref().clone(), right.as_ref().clone(), true)),
            _ => None,
        };
        let (whole, refs) = classify(&c)?;
        b.client |= refs.client_params;
        if !refs.request {
            b.row_filters.push(format!("({whole})"));
            continue;
        }
        if refs.columns.is_empty() {
            b.req_filters.push(format!("({whole})"));
            continue;
        }
        let Some((l, r, is_in)) = pair else {
            return Err(format!(
                "unsupported condition `{shown}`: compare a column with a request value using = or IN"
            ));
        };
        let (le, lr) = classify(&l)?;
        let (re, rr) = classify(&r)?;
        let (lrow, lreq) = (!lr.columns.is_empty(), lr.request);
        let (rrow, rreq) = (!rr.columns.is_empty(), rr.request);
        b.authenticated |= (lreq && lr.token_params) || (rreq && rr.token_params);
        let n = b.row_lookup.len() + 1;
        match ((lrow, lreq), (rrow, rreq), is_in) {
            ((true, false), (false, true), false) | ((false, true), (true, false), false) => {
                let (row, req) = if lrow { (le, re) } else { (re, le) };
                // `=` never matches a NULL row value, so no request value
                // (NULL included) finds that row; PowerSync stores no lookup.
                b.row_filters.push(format!("({row}) IS NOT NULL"));
                b.row_lookup.push(lookup_text(&format!("to_jsonb({row})")));
                b.req_lookup.push(lookup_text(&format!("to_jsonb({req})")));
            }
            // column IN request-array: expand the request side.
            ((true, false), (false, true), true) => {
                b.row_lookup.push(lookup_text(&format!("to_jsonb({le})")));
                b.req_laterals.push(format!(
                    "CROSS JOIN LATERAL outpost._elements({}) AS _outpost_r{n}(v)",
                    elements_jsonb(&re, &scope)
                ));
                b.req_lookup.push(lookup_text(&format!("_outpost_r{n}.v")));
            }
            // request value IN column-array: expand the row side.
            ((false, true), (true, false), true) => {
                b.row_laterals.push(format!(
                    "CROSS JOIN LATERAL outpost._elements({}) AS _outpost_e{n}(v)",
                    elements_jsonb(&re, &scope)
                ));
                b.row_lookup.push(lookup_text(&format!("_outpost_e{n}.v")));
                b.req_lookup.push(lookup_text(&format!("to_jsonb({le})")));
            }
            _ => {
                return Err(format!(
                    "unsupported condition `{shown}`: one side must be a column expression and the other a request value"
                ))
            }
        }
    }
    // No column compared with a request value (`SELECT id AS c FROM
    // categories [WHERE <row or request filters>]`): every request reads the
    // rows' buckets, as in PowerSync; the lookup is the empty array.
    Ok(b)
}
