//! Bucket definitions → SQL.
//!
//! Every query compiles to plain Postgres SQL that the extension embeds in the
//! tick statement ([`crate::tick_sql`]) or runs at request time:
//! - a data query yields rows `(bucket, object_type, object_id, subkey, relid, pk, data)`;
//! - a table parameter query yields `(query_id, relid, pk, lookup, bucket)`, the
//!   materialized lookup that maps request values to bucket ids;
//! - its request-time half (and a static parameter query) reads `$1` (JWT claims)
//!   and `$2` (client parameters) and yields lookups (or bucket ids).
//!
//! Bucket parameter values are rendered as `to_jsonb(value)::text`, so bucket ids
//! look like `lists["7c0e…"]`; lookup values are compared as text so an integer
//! column matches a numeric string from a JWT.

use crate::catalog::{Catalog, Table};
use crate::query::{self, as_bucket_param, conjuncts, output_name, parse_select, rewrite};
use crate::yaml::BucketSource;
use crate::{quote_ident, quote_literal, QueryRef, RuleError};
use serde::{Deserialize, Serialize};
use sqlparser::ast::{BinaryOperator, Expr, SelectItem};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompiledRules {
    pub buckets: Vec<CompiledBucket>,
    /// Every table that needs capture, once.
    pub tables: Vec<CaptureTable>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureTable {
    pub oid: u32,
    pub qualified: String,
    /// `jsonb_build_array(...)` of the primary key over a row alias `r`.
    pub pk_json: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompiledBucket {
    pub source: BucketSource,
    pub param_names: Vec<String>,
    pub parameter_queries: Vec<ParamQuery>,
    pub data_queries: Vec<DataQuery>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParamQuery {
    /// No table: bucket ids straight from request values. `sql` yields `bucket`.
    Static { id: String, sql: String },
    /// One table: materialized lookups plus the request-time lookup query.
    Table {
        id: String,
        relid: u32,
        /// Yields `(query_id, relid, pk, lookup, bucket)`; `keyed`/`full` variants for ticks.
        sql_keyed: String,
        sql_full: String,
        /// Yields `lookup` rows for the request (`$1` claims, `$2` parameters).
        lookup_sql: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataQuery {
    pub relid: u32,
    pub object_type: String,
    /// Output columns with the SQLite type a client should declare.
    pub columns: Vec<ClientColumn>,
    /// Whether one source row can yield the same (bucket, row) twice (an `IN`
    /// expansion with repeated elements); the tick then deduplicates.
    pub may_duplicate: bool,
    pub sql_keyed: String,
    pub sql_full: String,
}

impl CompiledRules {
    /// SQL statements (each `LIMIT 0`) that make Postgres type-check every
    /// compiled query; parameterized ones take `$1`, `$2` as jsonb.
    pub fn checks(&self) -> Vec<(String, QueryRef, String)> {
        let mut out = Vec::new();
        for b in &self.buckets {
            for (i, q) in b.parameter_queries.iter().enumerate() {
                let r = QueryRef::Parameters(i);
                match q {
                    ParamQuery::Static { sql, .. } => {
                        out.push((b.source.name.clone(), r, limit0(sql)))
                    }
                    ParamQuery::Table {
                        sql_full,
                        lookup_sql,
                        ..
                    } => {
                        out.push((b.source.name.clone(), r.clone(), limit0(&no_ctes(sql_full))));
                        out.push((b.source.name.clone(), r, limit0(lookup_sql)));
                    }
                }
            }
            for (i, q) in b.data_queries.iter().enumerate() {
                out.push((
                    b.source.name.clone(),
                    QueryRef::Data(i),
                    limit0(&no_ctes(&q.sql_full)),
                ));
            }
        }
        out
    }
}

fn limit0(sql: &str) -> String {
    format!("SELECT * FROM ({sql}) _check LIMIT 0")
}

/// The full variants reference the tick's `_full` CTE; outside a tick it is
/// replaced by an always-true condition so the query can be checked alone.
fn no_ctes(sql: &str) -> String {
    sql.replace(
        FULL_MARK_PREFIX,
        "TRUE OR EXISTS (SELECT 1 FROM (SELECT 0::oid AS relid, ''::text AS def) f WHERE ",
    )
}

const FULL_MARK_PREFIX: &str = "EXISTS (SELECT 1 FROM _full f WHERE ";

/// Compiles every bucket; collects all problems rather than stopping at the first.
pub fn compile(
    sources: &[BucketSource],
    catalog: &Catalog,
) -> Result<CompiledRules, Vec<RuleError>> {
    let mut buckets = Vec::new();
    let mut errors = Vec::new();
    let mut tables: Vec<CaptureTable> = Vec::new();
    for src in sources {
        match compile_bucket(src, catalog, &mut tables) {
            Ok(b) => buckets.push(b),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(CompiledRules { buckets, tables })
    } else {
        Err(errors)
    }
}

fn err(bucket: &str, q: QueryRef, sql: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        bucket: Some(bucket.to_string()),
        query: Some(q),
        sql: Some(sql.trim().to_string()),
        message: message.into(),
    }
}

fn compile_bucket(
    src: &BucketSource,
    catalog: &Catalog,
    tables: &mut Vec<CaptureTable>,
) -> Result<CompiledBucket, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut param_names: Option<Vec<String>> = None;
    let mut parameter_queries = Vec::new();
    for (i, sql) in src.parameters.iter().enumerate() {
        let r = QueryRef::Parameters(i);
        match compile_param_query(src, i, sql, catalog) {
            Ok((names, q)) => {
                match &param_names {
                    None => param_names = Some(names.clone()),
                    Some(first) => {
                        let mut a = first.clone();
                        let mut b = names.clone();
                        a.sort();
                        b.sort();
                        if a != b {
                            errors.push(err(&src.name, r, sql, format!(
                                "every parameter query of a bucket must output the same parameters: expected ({}), got ({})",
                                first.join(", "), names.join(", "))));
                            continue;
                        }
                    }
                }
                if let ParamQuery::Table { relid, .. } = &q {
                    if let Some(t) = catalog.by_oid(*relid) {
                        add_capture(tables, t);
                    }
                }
                parameter_queries.push((names, q));
            }
            Err(m) => errors.push(err(&src.name, r, sql, m)),
        }
    }
    let param_names = param_names.unwrap_or_default();
    // Bucket ids list parameters in the first query's order; later queries are
    // compiled with their own output order, so re-render them in that order.
    let parameter_queries: Vec<ParamQuery> = parameter_queries
        .into_iter()
        .enumerate()
        .map(|(i, (names, q))| {
            if names == param_names {
                q
            } else {
                compile_param_query_ordered(src, i, &src.parameters[i], catalog, &param_names)
                    .expect("compiled once already")
            }
        })
        .collect();
    let mut data_queries = Vec::new();
    for (i, sql) in src.data.iter().enumerate() {
        match compile_data_query(src, sql, catalog, &param_names) {
            Ok((q, t)) => {
                add_capture(tables, t);
                data_queries.push(q);
            }
            Err(m) => errors.push(err(&src.name, QueryRef::Data(i), sql, m)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // No parameter query: one global bucket everybody gets.
    let parameter_queries = if src.parameters.is_empty() {
        vec![ParamQuery::Static {
            id: format!("{}#global", src.name),
            sql: format!(
                "SELECT {} AS bucket",
                quote_literal(&format!("{}[]", src.name))
            ),
        }]
    } else {
        parameter_queries
    };
    Ok(CompiledBucket {
        source: src.clone(),
        param_names,
        parameter_queries,
        data_queries,
    })
}

fn add_capture(tables: &mut Vec<CaptureTable>, t: &Table) {
    if tables.iter().any(|c| c.oid == t.oid) {
        return;
    }
    let cols: Vec<String> = t
        .primary_key
        .iter()
        .map(|c| format!("r.{}", quote_ident(c)))
        .collect();
    tables.push(CaptureTable {
        oid: t.oid,
        qualified: t.qualified(),
        pk_json: format!("jsonb_build_array({})", cols.join(", ")),
    });
}

/// `'name[' || concat_ws(',', v1, v2) || ']'` where each `v` is jsonb text.
fn bucket_id_sql(name: &str, values: &[String]) -> String {
    if values.is_empty() {
        return quote_literal(&format!("{name}[]"));
    }
    format!(
        "({} || concat_ws(',', {}) || ']')",
        quote_literal(&format!("{name}[")),
        values.join(", ")
    )
}

fn jsonb_text(expr: &str) -> String {
    format!("(to_jsonb({expr}))::text")
}

/// Lookup values compare as text (`'5'` from a JWT matches integer 5).
fn lookup_text(jsonb_expr: &str) -> String {
    format!("({jsonb_expr} #>> '{{}}')")
}

fn pk_exprs(t: &Table, alias: &str) -> Result<(String, String), String> {
    if t.primary_key.is_empty() {
        return Err(format!(
            "table \"{}\" has no primary key; Outpost needs one to track its rows",
            t.name
        ));
    }
    let a = quote_ident(alias);
    let cols: Vec<String> = t
        .primary_key
        .iter()
        .map(|c| format!("{a}.{}", quote_ident(c)))
        .collect();
    let casts: Vec<String> = t
        .primary_key
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = &t.column(c).expect("pk columns exist").type_name;
            format!("(k.pk ->> {i})::{ty}")
        })
        .collect();
    let json = format!("jsonb_build_array({})", cols.join(", "));
    let keyed = if cols.len() == 1 {
        format!(
            "{} IN (SELECT {} FROM _keys k WHERE k.relid = {} AND k.def IS NULL)",
            cols[0], casts[0], t.oid
        )
    } else {
        format!(
            "({}) IN (SELECT {} FROM _keys k WHERE k.relid = {} AND k.def IS NULL)",
            cols.join(", "),
            casts.join(", "),
            t.oid
        )
    };
    Ok((json, keyed))
}

/// The keyed and full variants of a per-row query. The keyed one evaluates
/// the rows whose keys changed; the full one the whole table, when a deploy
/// (re)defines this query's bucket (`_full` names table and bucket).
fn variants(
    select_from: &str,
    mut conds: Vec<String>,
    t: &Table,
    bucket: &str,
    keyed_cond: &str,
) -> (String, String) {
    let full_mark = format!(
        "({FULL_MARK_PREFIX}f.def = {} AND f.relid = {}))",
        quote_literal(bucket),
        t.oid
    );
    conds.push(full_mark.clone());
    let full = format!("{select_from} WHERE {}", conds.join(" AND "));
    conds.pop();
    conds.push(format!("NOT {full_mark}"));
    conds.push(keyed_cond.to_string());
    let keyed = format!("{select_from} WHERE {}", conds.join(" AND "));
    (keyed, full)
}

struct ParamParts {
    outputs: Vec<(String, Expr)>,
}

fn compile_param_query(
    src: &BucketSource,
    i: usize,
    sql: &str,
    catalog: &Catalog,
) -> Result<(Vec<String>, ParamQuery), String> {
    compile_param_query_inner(src, i, sql, catalog, None)
}

fn compile_param_query_ordered(
    src: &BucketSource,
    i: usize,
    sql: &str,
    catalog: &Catalog,
    order: &[String],
) -> Result<ParamQuery, String> {
    compile_param_query_inner(src, i, sql, catalog, Some(order)).map(|(_, q)| q)
}

fn compile_param_query_inner(
    src: &BucketSource,
    i: usize,
    sql: &str,
    catalog: &Catalog,
    order: Option<&[String]>,
) -> Result<(Vec<String>, ParamQuery), String> {
    let sel = parse_select(sql)?;
    let id = format!("{}#{}", src.name, i);
    let table = match &sel.from {
        None => None,
        Some((name, alias)) => {
            let t = query::resolve_table(catalog, name)?;
            Some((t, alias.clone().unwrap_or_else(|| t.name.clone())))
        }
    };
    let tref = table.as_ref().map(|(t, a)| (*t, a.as_str()));
    let mut parts = ParamParts {
        outputs: Vec::new(),
    };
    for item in &sel.projection {
        if matches!(item, SelectItem::Wildcard(_)) {
            return Err(
                "`*` is not allowed in a parameter query: name each bucket parameter".into(),
            );
        }
        let (name, mut e) = output_name(item)?;
        let refs = rewrite(&mut e, tref)?;
        if !refs.bucket_params.is_empty() {
            return Err("`bucket.` parameters cannot be used in a parameter query".into());
        }
        if table.is_some() && refs.request {
            return Err(format!(
                "parameter `{name}` mixes request values into a table query; output columns of the table only"
            ));
        }
        if parts.outputs.iter().any(|(n, _)| *n == name) {
            return Err(format!("parameter `{name}` is defined twice"));
        }
        parts.outputs.push((name, e));
    }
    if parts.outputs.is_empty() {
        return Err("a parameter query must output at least one parameter".into());
    }
    let mut names: Vec<String> = parts.outputs.iter().map(|(n, _)| n.clone()).collect();
    if let Some(order) = order {
        let mut reordered = Vec::new();
        for n in order {
            let pos = parts
                .outputs
                .iter()
                .position(|(m, _)| m == n)
                .expect("same parameter set");
            reordered.push(parts.outputs[pos].clone());
        }
        parts.outputs = reordered;
        names = order.to_vec();
    }
    let mut conds = Vec::new();
    if let Some(w) = sel.selection {
        conjuncts(w, &mut conds);
    }

    match table {
        None => {
            let mut filters = Vec::new();
            for mut c in conds {
                let refs = rewrite(&mut c, None)?;
                if !refs.bucket_params.is_empty() {
                    return Err("`bucket.` parameters cannot be used in a parameter query".into());
                }
                filters.push(format!("({c})"));
            }
            let values: Vec<String> = parts
                .outputs
                .iter()
                .map(|(_, e)| jsonb_text(&format!("({e})")))
                .collect();
            for (_, e) in &parts.outputs {
                filters.push(format!("({e}) IS NOT NULL"));
            }
            let where_ = if filters.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", filters.join(" AND "))
            };
            Ok((
                names,
                ParamQuery::Static {
                    id,
                    sql: format!(
                        "SELECT {} AS bucket{where_}",
                        bucket_id_sql(&src.name, &values)
                    ),
                },
            ))
        }
        Some((t, alias)) => {
            let (pk_json, keyed_cond) = pk_exprs(t, &alias)?;
            let mut row_filters = Vec::new();
            let mut req_filters = Vec::new();
            // Lookup components: (row side jsonb, request side jsonb), plus laterals.
            let mut row_lookup = Vec::new();
            let mut req_lookup = Vec::new();
            let mut row_laterals = Vec::new();
            let mut req_laterals = Vec::new();
            for c in conds {
                let shown = c.to_string();
                let classify = |e: &Expr| -> Result<(Expr, bool, bool), String> {
                    let mut e = e.clone();
                    let r = rewrite(&mut e, Some((t, alias.as_str())))?;
                    if !r.bucket_params.is_empty() {
                        return Err(
                            "`bucket.` parameters cannot be used in a parameter query".into()
                        );
                    }
                    Ok((e, !r.columns.is_empty(), r.request))
                };
                let pair = match &c {
                    Expr::BinaryOp {
                        left,
                        op: BinaryOperator::Eq,
                        right,
                    } => Some((left.as_ref(), right.as_ref(), false)),
                    Expr::InList {
                        expr,
                        list,
                        negated: false,
                    } if list.len() == 1 => Some((expr.as_ref(), &list[0], true)),
                    Expr::AnyOp {
                        left,
                        compare_op: BinaryOperator::Eq,
                        right,
                        ..
                    } => Some((left.as_ref(), right.as_ref(), true)),
                    _ => None,
                };
                let (whole, has_row, has_req) = classify(&c)?;
                if !has_req {
                    row_filters.push(format!("({whole})"));
                    continue;
                }
                if !has_row {
                    req_filters.push(format!("({whole})"));
                    continue;
                }
                let Some((l, r, is_in)) = pair else {
                    return Err(format!(
                        "unsupported condition `{shown}`: compare a column with a request value using = or IN"
                    ));
                };
                let (le, lrow, lreq) = classify(l)?;
                let (re, rrow, rreq) = classify(r)?;
                let n = row_lookup.len() + 1;
                match ((lrow, lreq), (rrow, rreq), is_in) {
                    ((true, false), (false, true), false) | ((false, true), (true, false), false) => {
                        let (row, req) = if lrow { (le, re) } else { (re, le) };
                        row_lookup.push(lookup_text(&format!("to_jsonb({row})")));
                        req_lookup.push(lookup_text(&format!("to_jsonb({req})")));
                    }
                    // column IN request-array: expand the request side.
                    ((true, false), (false, true), true) => {
                        row_lookup.push(lookup_text(&format!("to_jsonb({le})")));
                        req_laterals.push(format!("CROSS JOIN LATERAL outpost._elements(to_jsonb({re})) AS _outpost_r{n}(v)"));
                        req_lookup.push(lookup_text(&format!("_outpost_r{n}.v")));
                    }
                    // request value IN column-array: expand the row side.
                    ((false, true), (true, false), true) => {
                        row_laterals.push(format!("CROSS JOIN LATERAL outpost._elements(to_jsonb({re})) AS _outpost_e{n}(v)"));
                        row_lookup.push(lookup_text(&format!("_outpost_e{n}.v")));
                        req_lookup.push(lookup_text(&format!("to_jsonb({le})")));
                    }
                    _ => {
                        return Err(format!(
                            "unsupported condition `{shown}`: one side must be a column expression and the other a request value"
                        ))
                    }
                }
            }
            if row_lookup.is_empty() {
                return Err("a parameter query that reads a table must compare a column with a request value (e.g. `WHERE owner_id = request.user_id()`)".into());
            }
            let values: Vec<String> = parts
                .outputs
                .iter()
                .map(|(_, e)| jsonb_text(&format!("({e})")))
                .collect();
            let mut conds = row_filters;
            for (_, e) in &parts.outputs {
                conds.push(format!("({e}) IS NOT NULL"));
            }
            let select_from = format!(
                "SELECT {id_lit} AS query_id, {oid}::oid AS relid, {pk_json} AS pk, jsonb_build_array({lookup}) AS lookup, {bucket} AS bucket FROM {tbl} AS {alias_q} {laterals}",
                id_lit = quote_literal(&id),
                oid = t.oid,
                lookup = row_lookup.join(", "),
                bucket = bucket_id_sql(&src.name, &values),
                tbl = t.qualified(),
                alias_q = quote_ident(&alias),
                laterals = row_laterals.join(" "),
            );
            let (sql_keyed, sql_full) =
                variants(select_from.trim_end(), conds, t, &src.name, &keyed_cond);
            let where_ = if req_filters.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", req_filters.join(" AND "))
            };
            let lookup_sql = format!(
                "SELECT jsonb_build_array({}) AS lookup FROM (SELECT 1) AS _req {}{where_}",
                req_lookup.join(", "),
                req_laterals.join(" ")
            );
            Ok((
                names,
                ParamQuery::Table {
                    id,
                    relid: t.oid,
                    sql_keyed,
                    sql_full,
                    lookup_sql,
                },
            ))
        }
    }
}

fn compile_data_query<'c>(
    src: &BucketSource,
    sql: &str,
    catalog: &'c Catalog,
    params: &[String],
) -> Result<(DataQuery, &'c Table), String> {
    let sel = parse_select(sql)?;
    let Some((name, alias)) = sel.from else {
        return Err("a data query must read a table (FROM ...)".into());
    };
    let t = query::resolve_table(catalog, &name)?;
    let object_type = alias.clone().unwrap_or_else(|| t.name.clone());
    let alias = alias.unwrap_or_else(|| t.name.clone());
    let (pk_json, keyed_cond) = pk_exprs(t, &alias)?;
    let a = quote_ident(&alias);

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
                        sqlite_value(&e, Some(&c.type_name)),
                        Some(&c.type_name),
                    )?;
                }
            }
            _ => {
                let (out, mut e) = output_name(item)?;
                let plain_col = match &e {
                    Expr::Identifier(i) => Some(i.value.clone()),
                    Expr::CompoundIdentifier(ids) if ids.len() == 2 => Some(ids[1].value.clone()),
                    _ => None,
                };
                let refs = rewrite(&mut e, Some((t, &alias)))?;
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
                let ty = col.map(|c| c.type_name.as_str()).or_else(|| cast_type(&e));
                let typed = sqlite_value(&e.to_string(), col.map(|c| c.type_name.as_str()));
                push(&mut columns, out, typed, ty)?;
            }
        }
    }
    let Some(id_expr) = id_expr_of(&sel.projection, t, &alias)? else {
        return Err(format!(
            "the query must select an `id` column (table \"{}\" rows are identified by it); add e.g. `{} AS id`",
            t.name,
            t.primary_key.first().map(String::as_str).unwrap_or("key")
        ));
    };

    // WHERE: bucket parameter bindings and plain filters.
    let mut conds = Vec::new();
    if let Some(w) = sel.selection {
        conjuncts(w, &mut conds);
    }
    let mut bound: Vec<(String, String)> = Vec::new(); // param -> jsonb expr
    let mut filters = Vec::new();
    let mut laterals = Vec::new();
    for c in conds {
        let shown = c.to_string();
        let binding = match &c {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (as_bucket_param(left), as_bucket_param(right)) {
                (Some(p), None) => Some((p, right.as_ref().clone(), false)),
                (None, Some(p)) => Some((p, left.as_ref().clone(), false)),
                _ => None,
            },
            Expr::InList {
                expr,
                list,
                negated: false,
            } if list.len() == 1 => as_bucket_param(expr).map(|p| (p, list[0].clone(), true)),
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => as_bucket_param(left).map(|p| (p, right.as_ref().clone(), true)),
            _ => None,
        };
        match binding {
            Some((p, mut e, is_in)) => {
                let refs = rewrite(&mut e, Some((t, &alias)))?;
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
                        "CROSS JOIN LATERAL outpost._elements(to_jsonb({e})) AS _outpost_e{n}(v)"
                    ));
                    bound.push((p, format!("_outpost_e{n}.v")));
                } else {
                    filters.push(format!("({e}) IS NOT NULL"));
                    bound.push((p, format!("to_jsonb({e})")));
                }
            }
            None => {
                let mut e = c;
                let refs = rewrite(&mut e, Some((t, &alias)))?;
                if refs.request {
                    return Err(format!("unsupported condition `{shown}`: data queries cannot use request values; use a parameter query"));
                }
                if let Some(p) = refs.bucket_params.first() {
                    if !params.contains(p) {
                        return Err(unknown_param(p, params));
                    }
                    return Err(format!(
                        "unsupported condition `{shown}`: bucket parameters may only be matched with `= bucket.{p}` or `bucket.{p} IN column`, combined with AND"
                    ));
                }
                filters.push(format!("({e})"));
            }
        }
    }
    for p in params {
        if !bound.iter().any(|(q, _)| q == p) {
            return Err(format!(
                "bucket parameter `{p}` is not matched: add `WHERE <column> = bucket.{p}`"
            ));
        }
    }
    let values: Vec<String> = params
        .iter()
        .map(|p| {
            let e = &bound.iter().find(|(q, _)| q == p).expect("checked").1;
            format!("({e})::text")
        })
        .collect();
    filters.push(format!("({id_expr}) IS NOT NULL"));

    let data = json_object_sql(&columns);
    let subkey = format!(
        "({} || ({pk_json})::text)",
        quote_literal(&format!("{}:", t.oid))
    );
    let select_from = format!(
        "SELECT {bucket} AS bucket, {otype} AS object_type, ({id_expr})::text AS object_id, {subkey} AS subkey, {oid}::oid AS relid, {pk_json} AS pk, {data} AS data FROM {tbl} AS {a} {laterals}",
        bucket = bucket_id_sql(&src.name, &values),
        otype = quote_literal(&object_type),
        oid = t.oid,
        tbl = t.qualified(),
        laterals = laterals.join(" "),
    );
    let may_duplicate = !laterals.is_empty();
    let (sql_keyed, sql_full) =
        variants(select_from.trim_end(), filters, t, &src.name, &keyed_cond);
    Ok((
        DataQuery {
            relid: t.oid,
            object_type,
            may_duplicate,
            columns: client_columns,
            sql_keyed,
            sql_full,
        },
        t,
    ))
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

/// A column of a synced table as a client declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientColumn {
    pub name: String,
    /// `integer`, `real` or `text`.
    pub sqlite_type: String,
}

/// SQLite's type for a Postgres type (unknown expressions are text).
fn sqlite_type(pg_type: Option<&str>) -> &'static str {
    match pg_type {
        Some("smallint" | "integer" | "bigint" | "boolean") => "integer",
        Some("real" | "double precision") => "real",
        Some(t) if t.starts_with("numeric") => "real",
        _ => "text",
    }
}

/// The target type of a top-level cast (`x::int`, `CAST(x AS real)`).
fn cast_type(e: &Expr) -> Option<&'static str> {
    let Expr::Cast { data_type, .. } = e else {
        return None;
    };
    let t = data_type.to_string().to_lowercase();
    Some(match t.as_str() {
        "int" | "integer" | "int4" | "int8" | "bigint" | "smallint" | "int2" | "boolean"
        | "bool" => "integer",
        "real" | "float" | "float4" | "float8" | "double precision" | "numeric" => "real",
        _ => "text",
    })
}

/// The `id` output's expression, uncoverted (object ids are its text form).
fn id_expr_of(projection: &[SelectItem], t: &Table, alias: &str) -> Result<Option<String>, String> {
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
                    rewrite(&mut e, Some((t, alias)))?;
                    return Ok(Some(e.to_string()));
                }
            }
        }
    }
    Ok(None)
}

/// A value as a SQLite client stores it, as SQL. Column types known from the
/// catalog convert directly (cheapest); other expressions go through
/// `outpost._sqlite_value(jsonb)`. Booleans become 1/0, json and arrays JSON
/// text; timestamps render as ISO-8601 and uuids as text by Postgres' JSON output.
fn sqlite_value(expr: &str, type_name: Option<&str>) -> String {
    match type_name {
        Some("boolean") => format!("({expr})::int"),
        Some("json") | Some("jsonb") => format!("({expr})::text"),
        Some(t) if t.ends_with("[]") => format!("(to_jsonb({expr}))::text"),
        Some(_) => expr.to_string(),
        None => format!("outpost._sqlite_value(to_jsonb({expr}))"),
    }
}

/// The row's JSON text. `json_build_object` takes at most 100 arguments, so
/// wide rows are built in chunks and concatenated as jsonb.
fn json_object_sql(columns: &[(String, String)]) -> String {
    let chunks: Vec<String> = columns
        .chunks(50)
        .map(|ch| {
            let args: Vec<String> = ch
                .iter()
                .map(|(n, e)| format!("{}, {e}", quote_literal(n)))
                .collect();
            args.join(", ")
        })
        .collect();
    if chunks.len() == 1 {
        format!("(json_build_object({}))::text", chunks[0])
    } else {
        let parts: Vec<String> = chunks
            .iter()
            .map(|c| format!("jsonb_build_object({c})"))
            .collect();
        format!("({})::text", parts.join(" || "))
    }
}
