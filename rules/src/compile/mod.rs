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
//! Bucket parameter values are rendered as the JSON text of the value row data
//! has (`values::param_jsonb`: booleans 1/0, timestamps PowerSync's text), so
//! bucket ids look like `lists["7c0e…"]` and match PowerSync's byte for byte;
//! lookup values are compared as text so an integer column matches a numeric
//! string from a JWT.

mod data;
mod joined;
mod param;
pub(crate) mod sqlgen;
mod values;

pub use joined::JoinKeys;
pub use values::ClientColumn;

use crate::catalog::{Catalog, Table};
use crate::yaml::BucketSource;
use crate::{quote_ident, quote_literal, QueryRef, RuleError};
use serde::{Deserialize, Serialize};
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
        /// A nested subquery's lookup (Sync Streams): its rows map request
        /// values to values (JSON text in `bucket`) that another lookup of the
        /// definition reads, not to buckets.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lookup_only: bool,
        /// Set when some bucket parameters are request values (`SELECT
        /// request.user_id() AS u FROM users WHERE …`): the lookup rows then
        /// hold the row outputs as a JSON array in `bucket`, and this
        /// expression over `p` (the `outpost.param_rows` row) and `$1`/`$2`
        /// gives the bucket id (NULL: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bucket_sql: Option<String>,
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
    /// Tables whose columns the query reads through a join: a change there
    /// re-evaluates the rows that reference the changed row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<JoinKeys>,
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
                        out.push((b.source.name.clone(), r, sqlgen::check_sql(sql)))
                    }
                    ParamQuery::Table {
                        sql_full,
                        lookup_sql,
                        bucket_sql,
                        ..
                    } => {
                        out.push((
                            b.source.name.clone(),
                            r.clone(),
                            sqlgen::check_sql(sql_full),
                        ));
                        out.push((
                            b.source.name.clone(),
                            r.clone(),
                            sqlgen::check_sql(lookup_sql),
                        ));
                        if let Some(e) = bucket_sql {
                            out.push((
                                b.source.name.clone(),
                                r,
                                sqlgen::check_sql(&format!(
                                    "SELECT {e} AS bucket FROM outpost.param_rows p"
                                )),
                            ));
                        }
                    }
                }
            }
            for (i, q) in b.data_queries.iter().enumerate() {
                out.push((
                    b.source.name.clone(),
                    QueryRef::Data(i),
                    sqlgen::check_sql(&q.sql_full),
                ));
                for j in &q.joined {
                    out.push((
                        b.source.name.clone(),
                        QueryRef::Data(i),
                        sqlgen::check_join_keys_sql(&j.keys_sql),
                    ));
                }
            }
        }
        out
    }
}

/// Compiles every bucket; collects all problems rather than stopping at the first.
pub fn compile(
    sources: &[BucketSource],
    catalog: &Catalog,
) -> Result<CompiledRules, Vec<RuleError>> {
    compile_with_warnings(sources, catalog).map(|(c, _)| c)
}

/// [`compile`], plus the warnings about rules that compile but are probably
/// not what was meant (PowerSync's, e.g. access decided by client parameters).
pub fn compile_with_warnings(
    sources: &[BucketSource],
    catalog: &Catalog,
) -> Result<(CompiledRules, Vec<RuleError>), Vec<RuleError>> {
    let mut buckets = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut tables: Vec<CaptureTable> = Vec::new();
    for src in sources {
        match compile_bucket(src, catalog, &mut tables, &mut warnings) {
            Ok(b) => buckets.push(b),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok((CompiledRules { buckets, tables }, warnings))
    } else {
        Err(errors)
    }
}

pub(crate) fn err(bucket: &str, q: QueryRef, sql: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        bucket: Some(bucket.to_string()),
        query: Some(q),
        sql: Some(sql.trim().to_string()),
        message: message.into(),
    }
}

const DANGEROUS: &str = "access is decided by values the client chooses (request.parameters(), request.parameter() or user_parameters) with no value from the token: any client can send any value, so this is no place for authorization; compare with request.user_id() or request.jwt(), or set `accept_potentially_dangerous_queries: true` on the bucket";

fn compile_bucket(
    src: &BucketSource,
    catalog: &Catalog,
    tables: &mut Vec<CaptureTable>,
    warnings: &mut Vec<RuleError>,
) -> Result<CompiledBucket, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut param_names: Option<Vec<String>> = None;
    let mut parameter_queries = Vec::new();
    let mut priority: Option<(i32, usize)> = None;
    // Nested subqueries' lookups first: each later query may read them.
    let mut lookup_queries = Vec::new();
    let mut with_lookups = src.clone();
    for (n, sql) in src.lookups.iter().enumerate() {
        let r = QueryRef::Parameters(n);
        match param::compile_param_query(&with_lookups, n, sql, catalog, None, true) {
            Ok(c) => {
                if let ParamQuery::Table {
                    id,
                    relid,
                    lookup_sql,
                    ..
                } = &c.query
                {
                    if let Some(t) = catalog.by_oid(*relid) {
                        add_capture(tables, t);
                    }
                    with_lookups.options.lookups.insert(
                        format!("l{n}"),
                        format!(
                            "(SELECT coalesce(jsonb_agg(_p.bucket::jsonb), '[]'::jsonb) FROM outpost.param_rows _p WHERE _p.query_id = {} AND _p.lookup IN ({lookup_sql}))",
                            quote_literal(id)
                        ),
                    );
                    lookup_queries.push(c.query);
                } else {
                    errors.push(err(
                        &src.name,
                        r,
                        sql,
                        "a nested subquery must read a table",
                    ));
                }
            }
            Err(m) => errors.push(err(&src.name, r, sql, m)),
        }
    }
    let src = &with_lookups;
    for (i, sql) in src.parameters.iter().enumerate() {
        let r = QueryRef::Parameters(i);
        match param::compile_param_query(src, i, sql, catalog, None, false) {
            Ok(c) => {
                let names = c.names;
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
                if let Some(p) = c.priority {
                    let conflict = match priority {
                        Some((q, _)) => q != p,
                        None => src.priority != 3 && src.priority != p,
                    };
                    if conflict {
                        errors.push(err(&src.name, r.clone(), sql, format!(
                            "`_priority` {p} disagrees with the bucket's priority {}: a bucket has one priority",
                            priority.map(|(q, _)| q).unwrap_or(src.priority))));
                        continue;
                    }
                    priority = Some((p, i));
                }
                if c.dangerous && !src.accept_potentially_dangerous_queries {
                    warnings.push(err(&src.name, r.clone(), sql, DANGEROUS));
                }
                if let ParamQuery::Table { relid, .. } = &c.query {
                    if let Some(t) = catalog.by_oid(*relid) {
                        add_capture(tables, t);
                    }
                }
                parameter_queries.push((names, c.query));
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
                param::compile_param_query(
                    src,
                    i,
                    &src.parameters[i],
                    catalog,
                    Some(&param_names),
                    false,
                )
                .expect("compiled once already")
                .query
            }
        })
        .collect();
    let mut data_queries = Vec::new();
    for (i, sql) in src.data.iter().enumerate() {
        match data::compile_data_query(src, sql, catalog, &param_names) {
            Ok((q, t)) => {
                add_capture(tables, t);
                for j in &q.joined {
                    if let Some(jt) = catalog.by_oid(j.relid) {
                        add_capture(tables, jt);
                    }
                }
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
    let mut parameter_queries = parameter_queries;
    parameter_queries.extend(lookup_queries);
    let mut source = src.clone();
    source.options.lookups.clear();
    if let Some((p, _)) = priority {
        source.priority = p;
    }
    Ok(CompiledBucket {
        source,
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
