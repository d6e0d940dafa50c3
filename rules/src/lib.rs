//! Sync rules: PowerSync-style YAML → validated bucket definitions → SQL the
//! extension runs. Pure Rust, no Postgres: the extension hands in a snapshot of
//! the catalog and gets back SQL text to execute.
//!
//! Layout (in pipeline order):
//! - [`yaml`]: the YAML document model (`bucket_definitions`, `parameters`, `data`, `priority`).
//! - [`catalog`]: the tables and columns the rules may reference, as the extension reads them.
//! - [`query`]: parse one SQL query (sqlparser) and classify it: parameter query
//!   (static or one table) or data query; rewrite `request.*`/`bucket.*` references.
//! - [`compile`]: turn each bucket into SQL: per-row materialization queries and
//!   request-time lookup queries.
//! - [`values`]: row values converted the way a SQLite client stores them.
//! - [`tick_sql`]: the one statement a tick runs to read committed changes and
//!   evaluate every rule over them in a single snapshot.
//!
//! Errors name the bucket, the query and the problem ([`RuleError`]).

pub mod catalog;
pub mod compile;
pub mod query;
pub mod tick_sql;
pub mod values;
pub mod yaml;

pub use catalog::{Catalog, Column, Table};
pub use compile::{compile, CompiledBucket, CompiledRules, DataQuery, ParamQuery};
pub use yaml::{parse_yaml, BucketSource, BucketYaml, RulesYaml};

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
    let compiled = compile(sources, catalog).map_err(RuleErrors)?;
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
    Ok(Deployment {
        tick_sql: tick_sql::tick_statement(&compiled),
        buckets: compiled.buckets,
        tables,
        checks,
    })
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
