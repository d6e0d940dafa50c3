//! Sync rules: PowerSync-style YAML → validated bucket definitions → SQL the
//! extension runs. Pure Rust, no Postgres: the extension hands in a snapshot of
//! the catalog and gets back SQL text to execute.
//!
//! Layout (in pipeline order):
//! - [`yaml`]: the YAML document model (`bucket_definitions`, `parameters`, `data`,
//!   `priority`, `config`, `event_definitions`).
//! - [`config`]: the `config:` block (PowerSync edition and compatibility
//!   options), resolved into the [`config::Options`] compilation honours.
//! - [`catalog`]: the tables and columns the rules may reference, as the extension reads them.
//! - [`query`]: parse one SQL query (sqlparser, on its tokens) and take it
//!   apart: source (none, `json_each(...)` or one table), outputs, WHERE.
//! - [`scope`]: the names an expression may use and what it refers to.
//! - [`typing`]: what is known of a rewritten expression's type; compiled
//!   dialect SQL as opaque nodes.
//! - [`rewrite`]: resolve the names of one expression (`request.*`,
//!   `bucket.*`, columns) and lower it to Postgres SQL, calling [`dialect`].
//! - [`dialect`]: PowerSync's functions and operators (SQLite semantics) as
//!   Postgres expressions.
//! - [`filter`]: WHERE clauses as OR branches (disjunctive normal form).
//! - [`compile`]: turn each bucket into SQL: per-row materialization queries and
//!   request-time lookup queries. `compile/mod.rs` holds the compiled types and
//!   the per-bucket driver; `param.rs` compiles parameter queries, `data.rs`
//!   data queries, `values.rs` the SQLite typing of output values and the row's
//!   JSON, `sqlgen.rs` the SQL shared by both (bucket ids, keys, tick variants).
//! - [`tick_sql`]: the one statement a tick runs to read committed changes and
//!   evaluate every rule over them in a single snapshot.
//!
//! Errors name the bucket, the query and the problem ([`RuleError`]);
//! [`validate`] also returns warnings (rules that compile but are likely
//! mistakes, and document parts that have no effect).

pub mod catalog;
pub mod compile;
pub mod config;
pub mod dialect;
pub mod filter;
pub mod query;
pub mod rewrite;
pub mod scope;
pub mod tick_sql;
pub mod typing;
pub mod yaml;

pub use catalog::{Catalog, Column, Table};
pub use compile::{compile, CompiledBucket, CompiledRules, DataQuery, ParamQuery};
pub use yaml::{parse_document, parse_yaml, BucketSource, BucketYaml, Document, RulesYaml};

use serde::{Deserialize, Serialize};

/// Capture for one table: its trigger function and triggers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapturePlan {
    pub oid: u32,
    pub qualified: String,
    pub function_sql: String,
    pub triggers_sql: Vec<String>,
}

/// A statement Postgres must accept for the rules to be valid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub bucket: String,
    pub location: String,
    pub sql: String,
}

/// Everything the extension needs to activate a rule set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub buckets: Vec<CompiledBucket>,
    pub tables: Vec<CapturePlan>,
    pub tick_sql: String,
    pub checks: Vec<Check>,
}

/// Compiles bucket sources against the catalog into a deployment plan.
pub fn plan(sources: &[BucketSource], catalog: &Catalog) -> Result<Deployment, RuleErrors> {
    plan_with_warnings(sources, catalog).map(|(d, _)| d)
}

/// How serious a problem [`validate`] found is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
}

/// What `outpost.validate_rules` reports: problems (errors first found, then
/// warnings) and, when there is no error, the plan whose SQL Postgres checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Validation {
    pub problems: Vec<(Level, RuleError)>,
    pub plan: Option<Deployment>,
}

/// Parses and compiles a rules document without deploying it.
pub fn validate(text: &str, catalog: &Catalog) -> Validation {
    let doc = match yaml::parse_document(text) {
        Ok(d) => d,
        Err(e) => {
            return Validation {
                problems: vec![(Level::Error, e)],
                plan: None,
            }
        }
    };
    let warn = |w: Vec<RuleError>| w.into_iter().map(|e| (Level::Warning, e));
    let mut problems: Vec<(Level, RuleError)> = warn(doc.warnings).collect();
    match plan_with_warnings(&doc.sources, catalog) {
        Ok((p, w)) => {
            problems.extend(warn(w));
            Validation {
                problems,
                plan: Some(p),
            }
        }
        Err(errs) => {
            let mut all: Vec<(Level, RuleError)> =
                errs.0.into_iter().map(|e| (Level::Error, e)).collect();
            all.extend(problems);
            Validation {
                problems: all,
                plan: None,
            }
        }
    }
}

fn plan_with_warnings(
    sources: &[BucketSource],
    catalog: &Catalog,
) -> Result<(Deployment, Vec<RuleError>), RuleErrors> {
    let mut seen = std::collections::BTreeSet::new();
    for s in sources {
        yaml::check_source(s).map_err(|e| RuleErrors(vec![e]))?;
        if !seen.insert(s.name.as_str()) {
            return Err(RuleErrors(vec![RuleError::bucket(
                &s.name,
                "bucket is defined twice",
            )]));
        }
    }
    let (compiled, warnings) =
        compile::compile_with_warnings(sources, catalog).map_err(RuleErrors)?;
    let checks = compiled
        .checks()
        .into_iter()
        .map(|(bucket, q, sql)| Check {
            location: format!("bucket \"{bucket}\", {q}"),
            bucket,
            sql,
        })
        .collect();
    let tables = compiled
        .tables
        .iter()
        .map(|t| CapturePlan {
            oid: t.oid,
            qualified: t.qualified.clone(),
            function_sql: tick_sql::capture_function_sql(t),
            triggers_sql: tick_sql::capture_triggers_sql(t),
        })
        .collect();
    Ok((
        Deployment {
            tick_sql: tick_sql::tick_statement(&compiled),
            buckets: compiled.buckets,
            tables,
            checks,
        },
        warnings,
    ))
}

use std::fmt;

/// Which query of a bucket a problem is in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum QueryRef {
    Parameters(usize),
    Data(usize),
}

impl fmt::Display for QueryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryRef::Parameters(i) => write!(f, "parameter query {}", i + 1),
            QueryRef::Data(i) => write!(f, "data query {}", i + 1),
        }
    }
}

/// One problem found in a rules document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub struct RuleError {
    pub bucket: Option<String>,
    pub query: Option<QueryRef>,
    /// The SQL text of the query, when the problem is in one.
    pub sql: Option<String>,
    pub message: String,
}

impl RuleError {
    pub fn document(message: impl Into<String>) -> RuleError {
        RuleError {
            bucket: None,
            query: None,
            sql: None,
            message: message.into(),
        }
    }

    pub fn bucket(bucket: &str, message: impl Into<String>) -> RuleError {
        RuleError {
            bucket: Some(bucket.to_string()),
            query: None,
            sql: None,
            message: message.into(),
        }
    }

    /// Where the problem is, e.g. `bucket "user_lists", data query 1`.
    pub fn location(&self) -> String {
        let mut s = String::new();
        if let Some(b) = &self.bucket {
            s.push_str(&format!("bucket \"{b}\""));
        }
        if let Some(q) = &self.query {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(&q.to_string());
        }
        if s.is_empty() {
            s.push_str("rules");
        }
        s
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let Some(sql) = &self.sql {
            write!(f, " (in: {sql})")?;
        }
        Ok(())
    }
}

/// All problems of a document, in the order found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Quote an SQL identifier the way Postgres' `quote_ident` does (always quoted).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
