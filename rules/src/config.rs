//! The `config:` block of a rules document: PowerSync's edition and
//! compatibility options, each either honoured or refused by name.

use crate::RuleError;
use serde::{Deserialize, Serialize};

/// What the document's `config:` says, as written (unknown keys are refused).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigYaml {
    pub edition: Option<i64>,
    pub timestamps_iso8601: Option<bool>,
    pub versioned_bucket_ids: Option<bool>,
    pub fixed_json_extract: Option<bool>,
    pub custom_postgres_types: Option<bool>,
    pub timestamp_max_precision: Option<String>,
    pub unstable_sqlite_expression_engine: Option<bool>,
}

/// Sub-second digits a timestamp keeps (`timestamp_max_precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Seconds,
    Milliseconds,
    #[default]
    Microseconds,
    Nanoseconds,
}

/// The options compilation honours, resolved from edition and overrides.
/// Stored with each bucket source so a redeploy compiles the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// PowerSync edition (1 legacy, 2 sync streams); kept for `rules_yaml()`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub edition: i64,
    /// `T` between date and time and a fixed number of sub-second digits,
    /// instead of the legacy space and trimmed fraction.
    #[serde(default, skip_serializing_if = "is_false")]
    pub timestamps_iso8601: bool,
    /// `->> 'a.b'` is the key `a.b` (only `$.a.b` is a path); legacy splits it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fixed_json_extract: bool,
    /// Only with `timestamps_iso8601`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_max_precision: Option<Precision>,
    /// Set on the sources a Sync Stream compiles to: their queries use the
    /// stream functions (`auth.*`, `subscription.*`, `connection.*`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub streams: bool,
    /// While a stream definition compiles: the SQL each of its lookups
    /// (`_outpost_lookup('lN')`) stands for. Never stored.
    #[serde(skip)]
    pub lookups: std::collections::BTreeMap<String, String>,
}

fn one() -> i64 {
    1
}
fn is_one(v: &i64) -> bool {
    *v == 1
}
fn is_false(v: &bool) -> bool {
    !*v
}

impl Default for Options {
    fn default() -> Options {
        Options::legacy()
    }
}

impl Options {
    pub fn legacy() -> Options {
        Options {
            edition: 1,
            timestamps_iso8601: false,
            fixed_json_extract: false,
            timestamp_max_precision: None,
            streams: false,
            lookups: Default::default(),
        }
    }

    pub fn is_legacy(&self) -> bool {
        *self == Options::legacy()
    }

    /// Whether a NULL bucket parameter is a value (`null` in the bucket
    /// id), as PowerSync's bucket_definitions and edition-2 streams have it;
    /// its edition-3 stream compiler skips NULL parameters (no bucket).
    pub fn null_parameters(&self) -> bool {
        self.edition < 3
    }

    /// Resolves a `config:` block: the edition sets the defaults, explicit
    /// options override them; what Outpost does not implement is refused.
    pub fn from_config(c: &ConfigYaml) -> Result<Options, RuleError> {
        let refuse = |m: String| Err(RuleError::document(format!("config: {m}")));
        let edition = c.edition.unwrap_or(1);
        match edition {
            1..=3 => {}
            e => {
                return refuse(format!(
                    "unknown edition {e}: PowerSync editions are 1, 2 and 3"
                ))
            }
        }
        let modern = edition >= 2;
        if c.versioned_bucket_ids == Some(true) {
            return refuse("versioned_bucket_ids is not supported: Outpost's bucket ids carry no rules version (a redeploy keeps the ops of unchanged buckets instead, so clients do not download them twice); remove the option or set it to false".into());
        }
        if c.custom_postgres_types == Some(true) {
            return refuse("custom_postgres_types is not supported: values of custom types (enums, domains, composites, ranges) sync as their Postgres text; remove the option or set it to false".into());
        }
        if c.unstable_sqlite_expression_engine == Some(true) {
            return refuse("unstable_sqlite_expression_engine is not supported: Outpost compiles expressions to Postgres".into());
        }
        let timestamps_iso8601 = c.timestamps_iso8601.unwrap_or(modern);
        let timestamp_max_precision = match c.timestamp_max_precision.as_deref() {
            None => None,
            Some("seconds") => Some(Precision::Seconds),
            Some("milliseconds") => Some(Precision::Milliseconds),
            Some("microseconds") => Some(Precision::Microseconds),
            Some("nanoseconds") => Some(Precision::Nanoseconds),
            Some(other) => {
                return refuse(format!("unknown timestamp_max_precision `{other}`: use seconds, milliseconds, microseconds or nanoseconds"))
            }
        };
        if timestamp_max_precision.is_some() && !timestamps_iso8601 {
            return refuse(
                "timestamp_max_precision requires timestamps_iso8601 (or edition 2)".into(),
            );
        }
        Ok(Options {
            edition,
            timestamps_iso8601,
            fixed_json_extract: c.fixed_json_extract.unwrap_or(modern),
            timestamp_max_precision,
            streams: false,
            lookups: Default::default(),
        })
    }

    /// The `config:` block that reproduces these options.
    pub fn to_config(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("edition".into(), self.edition.into());
        let modern = self.edition >= 2;
        if self.timestamps_iso8601 != modern {
            m.insert("timestamps_iso8601".into(), self.timestamps_iso8601.into());
        }
        if self.fixed_json_extract != modern {
            m.insert("fixed_json_extract".into(), self.fixed_json_extract.into());
        }
        if let Some(p) = self.timestamp_max_precision {
            m.insert(
                "timestamp_max_precision".into(),
                serde_json::to_value(p).expect("precision serializes"),
            );
        }
        serde_json::Value::Object(m)
    }
}
