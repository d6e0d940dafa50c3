//! The rules document as PowerSync writes it.

use crate::config::{ConfigYaml, Options};
use crate::stream::{StreamDef, StreamMeta, StreamOut, StreamYaml};
use crate::RuleError;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesYaml {
    #[serde(default)]
    pub bucket_definitions: BTreeMap<String, BucketYaml>,
    #[serde(default)]
    pub config: Option<ConfigYaml>,
    /// Accepted so PowerSync documents deploy; Outpost emits no events.
    #[serde(default)]
    pub event_definitions: Option<IgnoredAny>,
    #[serde(default)]
    pub streams: Option<BTreeMap<String, StreamYaml>>,
    /// CTEs every stream may use (edition 3).
    #[serde(default)]
    pub with: Option<BTreeMap<String, String>>,
}

/// `parameters:` and `data:` take one query or a list of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketYaml {
    #[serde(default)]
    pub parameters: Option<OneOrMany>,
    #[serde(default)]
    pub data: Option<OneOrMany>,
    #[serde(default)]
    pub priority: Option<i64>,
    /// Silences the warning about client-supplied parameters used for access.
    #[serde(default)]
    pub accept_potentially_dangerous_queries: Option<bool>,
}

/// A bucket definition after YAML parsing: name, queries as text, priority.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketSource {
    pub name: String,
    pub parameters: Vec<String>,
    pub data: Vec<String>,
    pub priority: i32,
    /// The document's `config:` options (one copy per bucket, so a bucket
    /// compiles the same way whichever path defined it).
    #[serde(default, skip_serializing_if = "Options::is_legacy")]
    pub options: Options,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_potentially_dangerous_queries: bool,
    /// Lookup queries of nested subqueries (Sync Streams), innermost first;
    /// the parameter queries read them through `_outpost_lookup('lN')`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<String>,
    /// Set when this definition is one query of a Sync Stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamMeta>,
}

/// A parsed document: its buckets and what it contains that has no effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub sources: Vec<BucketSource>,
    pub warnings: Vec<RuleError>,
}

pub fn parse_yaml(text: &str) -> Result<Vec<BucketSource>, RuleError> {
    parse_document(text).map(|d| d.sources)
}

pub fn parse_document(text: &str) -> Result<Document, RuleError> {
    if text.trim().is_empty() {
        return Err(RuleError::document(
            "the rules are empty: expected a `bucket_definitions:` or `streams:` mapping",
        ));
    }
    let doc: RulesYaml = serde_saphyr::from_str(text)
        .map_err(|e| RuleError::document(format!("invalid YAML: {e}")))?;
    let options = match &doc.config {
        None => Options::legacy(),
        Some(c) => Options::from_config(c)?,
    };
    let mut warnings = Vec::new();
    if doc.event_definitions.is_some() {
        warnings.push(RuleError::document(
            "`event_definitions:` is accepted but ignored: Outpost does not emit events",
        ));
    }
    let streams = doc.streams.unwrap_or_default();
    let has_streams = !streams.is_empty();
    if options.edition >= 3 && !doc.bucket_definitions.is_empty() {
        return Err(RuleError::document(
            "config: edition 3 compiles Sync Streams only and does not accept `bucket_definitions`; use edition 2 to keep both, or turn the buckets into streams",
        ));
    }
    if has_streams && options.edition < 2 {
        return Err(RuleError::document(
            "`streams:` (Sync Streams) need `config: {edition: 2}` or 3",
        ));
    }
    if doc.with.is_some() && options.edition < 3 {
        return Err(RuleError::document(
            "`with:` (common table expressions) needs `config: {edition: 3}`",
        ));
    }
    if doc.bucket_definitions.is_empty() && !has_streams {
        return Err(RuleError::document(
            "`bucket_definitions` is missing or empty: define at least one bucket (or, with edition 2 or 3, a stream)",
        ));
    }
    let mut sources = Vec::new();
    for (name, b) in doc.bucket_definitions {
        let mut s = bucket_source(name, b)?;
        s.options = options.clone();
        sources.push(s);
    }
    let global = doc.with.unwrap_or_default();
    for (name, s) in streams {
        if s.with.is_some() && options.edition < 3 {
            return Err(RuleError::stream(
                &name,
                "`with:` (common table expressions) needs `config: {edition: 3}`",
            ));
        }
        let def = StreamDef::from_yaml(name, s, &global)?;
        sources.extend(def.sources(&options)?);
    }
    Ok(Document { sources, warnings })
}

/// Checks a bucket's name and priority and flattens its queries.
pub fn bucket_source(name: String, b: BucketYaml) -> Result<BucketSource, RuleError> {
    let source = BucketSource {
        parameters: b.parameters.map(OneOrMany::into_vec).unwrap_or_default(),
        data: b.data.map(OneOrMany::into_vec).unwrap_or_default(),
        priority: match b.priority {
            None => 3,
            Some(p) => i32::try_from(p).unwrap_or(i32::MAX),
        },
        name,
        options: Options::legacy(),
        accept_potentially_dangerous_queries: b.accept_potentially_dangerous_queries == Some(true),
        lookups: Vec::new(),
        stream: None,
    };
    check_source(&source)?;
    Ok(source)
}

/// The checks every bucket definition passes, from YAML or `define_bucket`.
pub fn check_source(s: &BucketSource) -> Result<(), RuleError> {
    match &s.stream {
        None => check_bucket_name(&s.name)?,
        Some(m) => {
            check_bucket_name(&m.name)?;
            if s.name != crate::stream::variant_name(&m.name, m.variant) {
                return Err(RuleError::stream(&m.name, "inconsistent stream definition"));
            }
        }
    }
    if !(0..=3).contains(&s.priority) {
        return Err(RuleError::bucket(
            &s.name,
            format!(
                "priority must be between 0 (highest) and 3, got {}",
                s.priority
            ),
        ));
    }
    if s.data.is_empty() {
        return Err(RuleError::bucket(
            &s.name,
            "`data` is missing: a bucket needs at least one data query",
        ));
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct YamlOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    bucket_definitions: BTreeMap<&'a str, BucketOut<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    streams: BTreeMap<&'a str, StreamOut<'a>>,
}

#[derive(serde::Serialize)]
struct BucketOut<'a> {
    priority: i32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    parameters: &'a [String],
    data: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    accept_potentially_dangerous_queries: bool,
}

/// The bucket definitions and streams as PowerSync YAML (what
/// `outpost.rules_yaml()` returns). The `config:` block is the first
/// definition's (buckets defined one at a time through SQL take the active
/// document's, [`sql_bucket`]; streams PowerSync's current edition); with
/// streams and buckets in one document it says edition 2, which accepts both.
pub fn to_yaml(sources: &[BucketSource]) -> String {
    let legacy: Vec<&BucketSource> = sources.iter().filter(|s| s.stream.is_none()).collect();
    let streams: Vec<(&BucketSource, &StreamMeta)> = sources
        .iter()
        .filter_map(|s| s.stream.as_ref().map(|m| (s, m)))
        .filter(|(_, m)| m.variant == 0)
        .collect();
    let config = document_config(sources, !legacy.is_empty());
    let doc = YamlOut {
        config,
        bucket_definitions: legacy
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    BucketOut {
                        priority: s.priority,
                        parameters: &s.parameters,
                        data: &s.data,
                        accept_potentially_dangerous_queries: s
                            .accept_potentially_dangerous_queries,
                    },
                )
            })
            .collect(),
        streams: streams
            .iter()
            .map(|(s, m)| (m.name.as_str(), StreamOut::of(s, m)))
            .collect(),
    };
    serde_saphyr::to_string(&doc).expect("rules serialize to YAML")
}

/// The `config:` block of a document holding `sources` (and bucket
/// definitions, when `buckets`): the first definition's options, edition 2
/// when streams and buckets are mixed; `None` for the legacy defaults.
fn document_config(sources: &[BucketSource], buckets: bool) -> Option<serde_json::Value> {
    let streams = sources.iter().any(|s| s.stream.is_some());
    let mut config = sources
        .first()
        .filter(|s| !s.options.is_legacy() || s.stream.is_some())
        .map(|s| {
            let mut o = s.options.clone();
            o.streams = false;
            o.to_config()
        });
    if streams && buckets {
        if let Some(serde_json::Value::Object(m)) = &mut config {
            if m.get("edition").and_then(|e| e.as_i64()) != Some(2) {
                m.insert("edition".into(), 2.into());
            }
        }
    }
    if streams && config.is_none() {
        config = Some(serde_json::json!({"edition": 2}));
    }
    config
}

/// A bucket defined through SQL (`outpost.define_bucket`) next to the
/// `active` definitions: checked like a YAML bucket, and compiled with the
/// active document's `config:` (its edition's defaults and options), the
/// one `rules_yaml()` writes, so that deploying `rules_yaml()` gives the
/// same definitions back. With nothing deployed that is edition 1, as a
/// document without `config:`.
pub fn sql_bucket(
    name: String,
    parameters: Vec<String>,
    data: Vec<String>,
    priority: i32,
    active: &[BucketSource],
) -> Result<BucketSource, RuleError> {
    let options = match document_config(active, true) {
        None => Options::legacy(),
        Some(c) => {
            let c: ConfigYaml = serde_json::from_value(c)
                .map_err(|e| RuleError::document(format!("config: {e}")))?;
            Options::from_config(&c)?
        }
    };
    let source = BucketSource {
        name,
        parameters,
        data,
        priority,
        options,
        accept_potentially_dangerous_queries: false,
        lookups: Vec::new(),
        stream: None,
    };
    check_source(&source)?;
    Ok(source)
}

/// Bucket names become part of bucket ids and of generated SQL literals, so
/// they are restricted to identifier characters.
pub fn check_bucket_name(name: &str) -> Result<(), RuleError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(RuleError::bucket(
            name,
            "invalid bucket name: use 1-63 letters, digits and underscores, not starting with a digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trip() {
        let text = "bucket_definitions:\n  user_lists:\n    priority: 1\n    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()\n    data:\n      - SELECT * FROM todos WHERE list_id = bucket.list_id\n      - \"SELECT id, 'it''s: #1' AS label FROM lists WHERE id = bucket.list_id\"\n  global:\n    data: SELECT id FROM lists\n";
        let first = parse_yaml(text).unwrap();
        let again = parse_yaml(&to_yaml(&first)).unwrap();
        assert_eq!(first, again, "{}", to_yaml(&first));
    }

    #[test]
    fn one_or_many_queries_and_default_priority() {
        let b = parse_yaml(
            "bucket_definitions:\n  g:\n    data: SELECT * FROM t\n  u:\n    priority: 1\n    parameters:\n      - SELECT request.user_id() AS uid\n    data:\n      - SELECT * FROM t WHERE owner = bucket.uid\n      - SELECT * FROM s WHERE owner = bucket.uid\n",
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].name, "g");
        assert_eq!(b[0].priority, 3);
        assert!(b[0].parameters.is_empty());
        assert_eq!(b[1].priority, 1);
        assert_eq!(b[1].data.len(), 2);
    }

    #[test]
    fn document_errors() {
        let e = parse_yaml("").unwrap_err();
        assert!(e.message.contains("empty"), "{e}");
        let e = parse_yaml("bucket_definitions: {}\n").unwrap_err();
        assert!(e.message.contains("at least one bucket"), "{e}");
        let e = parse_yaml("bucket_definitions:\n  a:\n    data: [\n").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
        let e = parse_yaml("bucket_definitions:\n  a:\n    dta: SELECT 1\n").unwrap_err();
        assert!(e.message.contains("dta"), "{e}");
        let e =
            parse_yaml("bucket_definitions:\n  a:\n    parameters: SELECT 1 AS x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bucket \"a\": `data` is missing: a bucket needs at least one data query"
        );
        let e =
            parse_yaml("bucket_definitions:\n  a:\n    priority: 7\n    data: SELECT * FROM t\n")
                .unwrap_err();
        assert!(e.message.contains("priority must be between 0"), "{e}");
        let e =
            parse_yaml("bucket_definitions:\n  \"a'b\":\n    data: SELECT * FROM t\n").unwrap_err();
        assert!(e.message.contains("invalid bucket name"), "{e}");
    }
}
