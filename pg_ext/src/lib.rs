//! `outpost`: the Postgres side of Outpost, as a thin pgrx shell.
//!
//! Layout:
//! - this file: the few functions that need Rust (rules compilation and
//!   validation, checksums, row fingerprints), each a wrapper over a Postgres-free crate
//!   (`outpost-rules`, `outpost-protocol`);
//! - `capture.rs`: the capture trigger on the writer's path (`outpost._capture()`);
//! - `tick_plan.rs`: the small tick's statement from a kept plan (`outpost._tick_kept`);
//! - `sql/extension/*.sql` (repository root): everything else — plain SQL and
//!   PL/pgSQL, because it is set-based work Postgres plans best. One file per
//!   concern, loaded in the order below (each `requires` the one before, so the
//!   order is explicit; the first comes after every Rust function, which the
//!   SQL-language bodies reference when they are created):
//!   `00_schema` tables and sequences, `01_helpers` small shared functions (and the
//!   rules dialect's `_json`, `_timestamp_utc`),
//!   `02_tick` the tick, `03_deploy` rules activation and the rules SQL API,
//!   `04_relay_api` what the relay calls, `05_compaction`, `06_schema_changes`
//!   DDL event triggers, `07_stats` the stats view, `08_crud` client writes
//!   (`/crud`), `09_privileges` who may use what (last; the security model is
//!   docs/security.md).
//!
//! Errors in rules are raised with SQLSTATE 22023 (invalid_parameter_value) and
//! a message naming the bucket, the query and the problem.

use pgrx::prelude::*;
use pgrx::JsonB;

mod capture;
mod tick_plan;

::pgrx::pg_module_magic!();

extension_sql_file!(
    "../../sql/extension/00_schema.sql",
    name = "schema",
    requires = [
        _parse_yaml,
        _plan,
        _validate_yaml,
        _to_yaml,
        _stream_sources,
        _sql_bucket,
        _empty_tick_sql,
        _op_checksum,
        _fingerprint,
        _capture,
        _tick_kept
    ]
);
extension_sql_file!(
    "../../sql/extension/01_helpers.sql",
    name = "helpers",
    requires = ["schema"]
);
extension_sql_file!(
    "../../sql/extension/02_tick.sql",
    name = "tick",
    requires = ["helpers"]
);
extension_sql_file!(
    "../../sql/extension/03_deploy.sql",
    name = "deploy",
    requires = ["tick"]
);
extension_sql_file!(
    "../../sql/extension/04_relay_api.sql",
    name = "relay_api",
    requires = ["deploy"]
);
extension_sql_file!(
    "../../sql/extension/05_compaction.sql",
    name = "compaction",
    requires = ["relay_api"]
);
extension_sql_file!(
    "../../sql/extension/06_schema_changes.sql",
    name = "schema_changes",
    requires = ["compaction"]
);
extension_sql_file!(
    "../../sql/extension/07_stats.sql",
    name = "stats",
    requires = ["schema_changes"]
);
extension_sql_file!(
    "../../sql/extension/08_crud.sql",
    name = "crud",
    requires = ["stats"]
);
extension_sql_file!(
    "../../sql/extension/09_privileges.sql",
    name = "privileges",
    requires = ["crud"],
    finalize
);

fn rules_error(message: String) -> ! {
    ereport!(
        PgLogLevel::ERROR,
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message
    );
    unreachable!("ereport(ERROR) does not return")
}

fn sources_from(sources: JsonB) -> Vec<outpost_rules::BucketSource> {
    serde_json::from_value(sources.0)
        .unwrap_or_else(|e| rules_error(format!("invalid bucket sources: {e}")))
}

fn catalog_from(catalog: JsonB) -> outpost_rules::Catalog {
    serde_json::from_value(catalog.0)
        .unwrap_or_else(|e| rules_error(format!("invalid catalog snapshot: {e}")))
}

/// PowerSync YAML → bucket sources (`[{name, parameters, data, priority}]`).
#[pg_extern(immutable, parallel_safe)]
fn _parse_yaml(rules: &str) -> JsonB {
    match outpost_rules::parse_yaml(rules) {
        Ok(sources) => JsonB(serde_json::to_value(sources).expect("sources serialize")),
        Err(e) => rules_error(e.to_string()),
    }
}

/// Bucket sources + catalog snapshot → deployment plan (compiled SQL).
#[pg_extern(immutable, parallel_safe)]
fn _plan(sources: JsonB, catalog: JsonB) -> JsonB {
    let sources = sources_from(sources);
    let catalog = catalog_from(catalog);
    match outpost_rules::plan(&sources, &catalog) {
        Ok(p) => JsonB(serde_json::to_value(p).expect("plans serialize")),
        Err(e) => rules_error(e.to_string()),
    }
}

/// Like `_parse_yaml` + `_plan`, but returns the problems (errors and
/// warnings) instead of raising: `{"problems": [{level, message, location}], "plan": …|null}`.
#[pg_extern(immutable, parallel_safe)]
fn _validate_yaml(rules: &str, catalog: JsonB) -> JsonB {
    let v = outpost_rules::validate(rules, &catalog_from(catalog));
    let problems: Vec<serde_json::Value> = v
        .problems
        .iter()
        .map(|(level, e)| serde_json::json!({"level": level, "message": e.message, "location": e.location()}))
        .collect();
    JsonB(serde_json::json!({"problems": problems, "plan": v.plan}))
}

/// Bucket sources → PowerSync YAML.
#[pg_extern(immutable, parallel_safe, strict)]
fn _to_yaml(sources: JsonB) -> String {
    outpost_rules::yaml::to_yaml(&sources_from(sources))
}

/// `define_stream(name, queries, auto_subscribe, priority)` → the bucket
/// sources the stream compiles to (one per query), checked like YAML.
#[pg_extern(immutable, parallel_safe)]
fn _stream_sources(
    name: &str,
    queries: Vec<Option<String>>,
    auto_subscribe: bool,
    priority: i32,
) -> JsonB {
    let queries: Vec<String> = queries.into_iter().flatten().collect();
    match outpost_rules::stream::define(name, queries, auto_subscribe, priority) {
        Ok(sources) => JsonB(serde_json::to_value(sources).expect("sources serialize")),
        Err(e) => rules_error(e.to_string()),
    }
}

/// `define_bucket(name, parameters, data, priority)` → its bucket source,
/// checked like YAML, with the `config:` of the `active` sources.
#[pg_extern(immutable, parallel_safe)]
fn _sql_bucket(
    name: &str,
    parameters: Vec<Option<String>>,
    data: Vec<Option<String>>,
    priority: i32,
    active: JsonB,
) -> JsonB {
    let active = sources_from(active);
    match outpost_rules::yaml::sql_bucket(
        name.to_string(),
        parameters.into_iter().flatten().collect(),
        data.into_iter().flatten().collect(),
        priority,
        &active,
    ) {
        Ok(s) => JsonB(serde_json::to_value(s).expect("sources serialize")),
        Err(e) => rules_error(e.to_string()),
    }
}

/// The tick statement when no rules are deployed (write checkpoints still flow).
#[pg_extern(immutable, parallel_safe)]
fn _empty_tick_sql() -> String {
    outpost_rules::tick_sql::tick_statement(&outpost_rules::CompiledRules {
        buckets: vec![],
        tables: vec![],
    })
}

/// The op's checksum (u32 as bigint); see `outpost_protocol::op_checksum`.
#[pg_extern(immutable, parallel_safe)]
fn _op_checksum(
    op: &str,
    object_type: &str,
    object_id: &str,
    subkey: &str,
    data: Option<&str>,
) -> i64 {
    outpost_protocol::op_checksum(op, object_type, object_id, subkey, data).0 as i64
}

/// 64-bit fingerprint of a row's data, to detect unchanged rows without
/// keeping a second copy of the data.
#[pg_extern(immutable, parallel_safe, strict)]
fn _fingerprint(data: &str) -> i64 {
    let h = blake3::hash(data.as_bytes());
    let b = h.as_bytes();
    i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}
