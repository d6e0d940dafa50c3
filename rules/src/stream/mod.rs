//! Sync Streams (`streams:` with `config: edition: 2` or `3`): each query of
//! a stream becomes one bucket definition of its own, named
//! `<stream>|<i>` (PowerSync's variant naming), lowered by [`lower`] to the
//! legacy parameter and data queries the compiler and the tick already
//! handle. The stream itself (its queries as written, CTEs, `auto_subscribe`)
//! travels with each of those sources as [`StreamMeta`], which is what the
//! relay resolves subscriptions with and what `rules_yaml()` prints.

pub mod lower;

pub use lower::{GATE, LOOKUP_FN};

use crate::config::Options;
use crate::yaml::{check_bucket_name, BucketSource};
use crate::RuleError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A stream as the YAML writes it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamYaml {
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub queries: Option<Vec<String>>,
    #[serde(default)]
    pub with: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub auto_subscribe: Option<bool>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub accept_potentially_dangerous_queries: Option<bool>,
}

/// What a stream's bucket definitions carry about the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    pub name: String,
    /// Which of the stream's queries this definition is.
    pub variant: usize,
    /// Every query of the stream, as written.
    pub queries: Vec<String>,
    /// The CTEs the stream sees (global ones merged, the stream's own win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub with: BTreeMap<String, String>,
    #[serde(default)]
    pub auto_subscribe: bool,
    /// `subscription.parameter(k)` keys this query reads; a subscription
    /// without one of them is reported in the stream's errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscription_keys: Vec<String>,
}

/// A stream as `define_stream` or the YAML gives it.
#[derive(Clone, Debug, Default)]
pub struct StreamDef {
    pub name: String,
    pub queries: Vec<String>,
    pub with: BTreeMap<String, String>,
    pub auto_subscribe: bool,
    pub priority: i32,
    pub accept_potentially_dangerous_queries: bool,
}

impl StreamDef {
    pub fn from_yaml(
        name: String,
        s: StreamYaml,
        global: &BTreeMap<String, String>,
    ) -> Result<StreamDef, RuleError> {
        let err = |m: &str| Err(RuleError::stream(&name, m));
        let queries = match (s.query, s.queries) {
            (Some(q), None) => vec![q],
            (None, Some(qs)) if !qs.is_empty() => qs,
            (None, Some(_)) => return err("`queries` is empty: a stream needs at least one query"),
            (None, None) => return err("one of `query` or `queries` must be given"),
            (Some(_), Some(_)) => return err("give `query` or `queries`, not both"),
        };
        let mut with = global.clone();
        with.extend(s.with.unwrap_or_default());
        Ok(StreamDef {
            queries,
            with,
            auto_subscribe: s.auto_subscribe == Some(true),
            priority: match s.priority {
                None => 3,
                Some(p) => i32::try_from(p).unwrap_or(i32::MAX),
            },
            accept_potentially_dangerous_queries: s.accept_potentially_dangerous_queries
                == Some(true),
            name,
        })
    }

    /// The bucket definitions the stream compiles to, one per query.
    pub fn sources(&self, options: &Options) -> Result<Vec<BucketSource>, RuleError> {
        check_bucket_name(&self.name).map_err(|_| {
            RuleError::stream(
                &self.name,
                "invalid stream name: use 1-60 letters, digits and underscores, not starting with a digit",
            )
        })?;
        if self.name.len() > 60 {
            return Err(RuleError::stream(&self.name, "invalid stream name: use 1-60 letters, digits and underscores, not starting with a digit"));
        }
        if !(0..=3).contains(&self.priority) {
            return Err(RuleError::stream(
                &self.name,
                format!(
                    "priority must be between 0 (highest) and 3, got {}",
                    self.priority
                ),
            ));
        }
        if self.queries.is_empty() {
            return Err(RuleError::stream(
                &self.name,
                "a stream needs at least one query",
            ));
        }
        for (c, sql) in &self.with {
            if check_bucket_name(c).is_err() {
                return Err(RuleError::stream(
                    &self.name,
                    format!("invalid CTE name `{c}`"),
                ));
            }
            let _ = sql;
        }
        let mut options = options.clone();
        options.streams = true;
        let mut out = Vec::new();
        for (i, sql) in self.queries.iter().enumerate() {
            let l = lower::lower(sql, &self.with).map_err(|m| RuleError {
                bucket: Some(variant_name(&self.name, i)),
                query: None,
                sql: Some(sql.trim().to_string()),
                message: m,
            })?;
            let mut keys = lower::subscription_keys(&l.data);
            if let Some(p) = &l.parameters {
                for k in lower::subscription_keys(p) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            for q in &l.lookups {
                for k in lower::subscription_keys(q) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            out.push(BucketSource {
                name: variant_name(&self.name, i),
                lookups: l.lookups,
                parameters: l.parameters.into_iter().collect(),
                data: vec![l.data],
                priority: self.priority,
                options: options.clone(),
                accept_potentially_dangerous_queries: self.accept_potentially_dangerous_queries,
                stream: Some(StreamMeta {
                    name: self.name.clone(),
                    variant: i,
                    queries: self.queries.clone(),
                    with: self.with.clone(),
                    auto_subscribe: self.auto_subscribe,
                    subscription_keys: keys,
                }),
            });
        }
        Ok(out)
    }
}

/// `<stream>|<i>`: the definition (and bucket name prefix) of a stream's query.
pub fn variant_name(stream: &str, i: usize) -> String {
    format!("{stream}|{i}")
}

/// The options a stream defined through SQL (`define_stream`) compiles with:
/// PowerSync's current edition.
pub fn sql_options() -> Options {
    let mut o = Options::from_config(&crate::config::ConfigYaml {
        edition: Some(3),
        ..Default::default()
    })
    .expect("edition 3 is valid");
    o.streams = true;
    o
}

/// `define_stream(name, queries, auto_subscribe, priority)`.
pub fn define(
    name: &str,
    queries: Vec<String>,
    auto_subscribe: bool,
    priority: i32,
) -> Result<Vec<BucketSource>, RuleError> {
    StreamDef {
        name: name.to_string(),
        queries,
        with: BTreeMap::new(),
        auto_subscribe,
        priority,
        accept_potentially_dangerous_queries: false,
    }
    .sources(&sql_options())
}

/// How a stream prints in `rules_yaml()`.
#[derive(Serialize)]
pub struct StreamOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queries: Option<&'a [String]>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub with: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auto_subscribe: bool,
    pub priority: i32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub accept_potentially_dangerous_queries: bool,
}

impl<'a> StreamOut<'a> {
    pub fn of(s: &'a BucketSource, m: &'a StreamMeta) -> StreamOut<'a> {
        let one = m.queries.len() == 1;
        StreamOut {
            query: one.then(|| m.queries[0].as_str()),
            queries: (!one).then_some(m.queries.as_slice()),
            with: &m.with,
            auto_subscribe: m.auto_subscribe,
            priority: s.priority,
            accept_potentially_dangerous_queries: s.accept_potentially_dangerous_queries,
        }
    }
}
