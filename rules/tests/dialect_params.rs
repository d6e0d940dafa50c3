//! PowerSync's dialect, continued: table parameter queries that output
//! request values, `define_bucket`'s `config:`, JSON text written and
//! compared as SQLite writes it, and NULL bucket parameters. Checked on the generated plan without Postgres; the
//! values are checked in tests/tests/dialect_params_e2e.rs.

mod support;

use outpost_rules::yaml::{sql_bucket, to_yaml};
use outpost_rules::{parse_document, plan, validate, Catalog, Level, ParamQuery};
use support::table;

fn catalog() -> Catalog {
    Catalog::from_tables([
        table(
            100,
            "users",
            &[("id", "text"), ("is_admin", "boolean"), ("org_id", "text")],
        ),
        table(
            200,
            "docs",
            &[
                ("id", "text"),
                ("owner_id", "text"),
                ("org_id", "text"),
                ("region", "text"),
                ("j", "jsonb"),
                ("js", "json"),
                ("t", "text"),
            ],
        ),
    ])
}

fn deploy(yaml: &str) -> outpost_rules::Deployment {
    let doc = parse_document(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    plan(&doc.sources, &catalog()).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn refused(yaml: &str) -> String {
    let doc = parse_document(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    match plan(&doc.sources, &catalog()) {
        Ok(_) => panic!("compiled but should not:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn table_query(d: &outpost_rules::Deployment) -> (&str, &str, Option<&str>) {
    match &d.buckets[0].parameter_queries[0] {
        ParamQuery::Table {
            sql_full,
            lookup_sql,
            bucket_sql,
            ..
        } => (sql_full, lookup_sql, bucket_sql.as_deref()),
        q => panic!("not a table query: {q:?}"),
    }
}

/// `hay` contains `needle`, compared without parentheses (sqlparser
/// re-renders them freely).
fn has(hay: &str, needle: &str) -> bool {
    let bare = |s: &str| s.replace(['(', ')'], "");
    bare(hay).contains(&bare(needle))
}

fn one_bucket(parameters: &str, data: &str) -> String {
    format!("bucket_definitions:\n  b:\n    parameters: {parameters}\n    data: {data}\n")
}

#[test]
fn a_table_query_may_output_request_values() {
    let d = deploy(&one_bucket(
        "SELECT request.user_id() AS user_id FROM users WHERE users.id = request.user_id() AND users.is_admin",
        "SELECT id FROM docs WHERE owner_id = bucket.user_id",
    ));
    let (full, lookup, bucket) = table_query(&d);
    // The lookup row holds the row outputs (none here); the request adds its own.
    assert!(has(full, "(jsonb_build_array())::text AS bucket"), "{full}");
    assert!(has(full, "\"users\".\"is_admin\""), "{full}");
    assert!(has(lookup, "$1 ->> 'sub'"), "{lookup}");
    let bucket = bucket.expect("bucket_sql");
    assert!(has(bucket, "'b['"), "{bucket}");
    assert!(has(bucket, "$1 ->> 'sub'"), "{bucket}");
    assert!(
        !bucket.contains("CASE WHEN") && has(bucket, "'null'"),
        "a NULL request value is `null` in the bucket id: {bucket}"
    );
    // Postgres type-checks the expression on deploy.
    assert!(
        d.checks
            .iter()
            .any(|c| c.sql.contains("FROM outpost.param_rows p") && c.sql.contains(bucket)),
        "{:?}",
        d.checks
    );
}

#[test]
fn row_and_request_outputs_keep_the_parameter_order() {
    let d = deploy(&one_bucket(
        "SELECT token_parameters.region AS region, org_id AS org FROM users WHERE id = request.user_id()",
        "SELECT id FROM docs WHERE region = bucket.region AND org_id = bucket.org",
    ));
    assert_eq!(d.buckets[0].param_names, vec!["region", "org"]);
    let (full, _, bucket) = table_query(&d);
    assert!(
        has(
            full,
            "(jsonb_build_array(to_jsonb(\"users\".\"org_id\")))::text AS bucket"
        ),
        "{full}"
    );
    // A NULL org_id is a parameter value (`null`), so no filter drops the row.
    assert!(
        !has(
            full,
            "nullif(to_jsonb(\"users\".\"org_id\"), 'null'::jsonb) IS NOT NULL"
        ),
        "{full}"
    );
    let bucket = bucket.unwrap();
    let region = bucket.find("'parameters' ->> 'region'").expect(bucket);
    let org = bucket.find("(p.bucket)::jsonb -> 0").expect(bucket);
    assert!(region < org, "region first, as in the bucket id: {bucket}");

    // A second parameter query in another order is re-rendered in the first's.
    let d = deploy(
        "bucket_definitions:\n  b:\n    parameters:\n      - SELECT token_parameters.region AS region, org_id AS org FROM users WHERE id = request.user_id()\n      - SELECT org_id AS org, request.jwt() ->> 'region' AS region FROM users WHERE id = request.jwt() ->> 'alt'\n    data: SELECT id FROM docs WHERE region = bucket.region AND org_id = bucket.org\n",
    );
    let ParamQuery::Table { bucket_sql, .. } = &d.buckets[0].parameter_queries[1] else {
        panic!()
    };
    let b = bucket_sql.as_deref().unwrap();
    assert!(
        b.find("$1 #> ARRAY['region']")
            .or(b.find("'region'"))
            .unwrap()
            < b.find("(p.bucket)::jsonb -> 0").unwrap(),
        "{b}"
    );
}

#[test]
fn a_query_without_request_outputs_compiles_as_before() {
    let d = deploy(&one_bucket(
        "SELECT org_id AS org FROM users WHERE id = request.user_id()",
        "SELECT id FROM docs WHERE org_id = bucket.org",
    ));
    let (full, _, bucket) = table_query(&d);
    assert!(bucket.is_none());
    assert!(has(full, "'b[' || concat_ws("), "{full}");
}

#[test]
fn one_output_cannot_mix_columns_and_request_values() {
    let e = refused(&one_bucket(
        "SELECT org_id || request.user_id() AS x FROM users WHERE id = request.user_id()",
        "SELECT id FROM docs WHERE org_id = bucket.x",
    ));
    assert!(
        e.contains("parameter `x` mixes request values and columns in one expression"),
        "{e}"
    );
    assert!(e.contains("bucket \"b\", parameter query 1"), "{e}");
}

fn warnings(yaml: &str) -> Vec<String> {
    let v = validate(yaml, &catalog());
    assert!(v.plan.is_some(), "{:?}", v.problems);
    v.problems
        .iter()
        .filter(|(l, _)| *l == Level::Warning)
        .map(|(_, e)| e.to_string())
        .collect()
}

#[test]
fn request_outputs_take_part_in_the_dangerous_query_warning() {
    // Client-chosen values only: warned.
    let w = warnings(&one_bucket(
        "SELECT org_id AS org, request.parameters() ->> 'r' AS r FROM users WHERE id = request.parameters() ->> 'u'",
        "SELECT id FROM docs WHERE org_id = bucket.org AND region = bucket.r",
    ));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("values the client chooses"), "{w:?}");
    // A client-chosen output next to a match on the token: safe.
    let w = warnings(&one_bucket(
        "SELECT org_id AS org, request.parameters() ->> 'r' AS r FROM users WHERE id = request.user_id()",
        "SELECT id FROM docs WHERE org_id = bucket.org AND region = bucket.r",
    ));
    assert!(w.is_empty(), "{w:?}");
    // A bucket parameter from the token: safe, as PowerSync has it.
    let w = warnings(&one_bucket(
        "SELECT org_id AS org, request.jwt() ->> 'r' AS r FROM users WHERE id = request.parameters() ->> 'u'",
        "SELECT id FROM docs WHERE org_id = bucket.org AND region = bucket.r",
    ));
    assert!(w.is_empty(), "{w:?}");
}

const EDITION_2: &str = "config:\n  edition: 2\n  timestamp_max_precision: milliseconds\nbucket_definitions:\n  a:\n    data: SELECT id FROM docs\n";

#[test]
fn define_bucket_takes_the_active_documents_config() {
    let active = parse_document(EDITION_2).unwrap().sources;
    let b = sql_bucket(
        "b".into(),
        vec![],
        vec!["SELECT id, j ->> 'x.y' AS v FROM docs".into()],
        3,
        &active,
    )
    .unwrap();
    assert_eq!(b.options, active[0].options);
    assert!(b.options.timestamps_iso8601 && b.options.fixed_json_extract);
    // rules_yaml() deploys back to the same definitions.
    let all = vec![active[0].clone(), b.clone()];
    let again = parse_document(&to_yaml(&all)).unwrap().sources;
    assert_eq!(again, all, "{}", to_yaml(&all));
    // Compiled with edition 2's fixed_json_extract: `x.y` is one key.
    let p = plan(&all, &catalog()).unwrap();
    assert!(
        p.buckets[1].data_queries[0]
            .sql_full
            .contains("ARRAY['x.y']::text[]"),
        "{}",
        p.buckets[1].data_queries[0].sql_full
    );
}

#[test]
fn define_bucket_defaults_follow_what_is_deployed() {
    let q = || vec!["SELECT id FROM docs".to_string()];
    // Nothing deployed: edition 1, as a document without `config:`.
    let b = sql_bucket("b".into(), vec![], q(), 3, &[]).unwrap();
    assert!(b.options.is_legacy());
    // Legacy rules stay legacy.
    let legacy = parse_document("bucket_definitions:\n  a:\n    data: SELECT id FROM docs\n")
        .unwrap()
        .sources;
    assert!(sql_bucket("b".into(), vec![], q(), 3, &legacy)
        .unwrap()
        .options
        .is_legacy());
    // An explicit option of the document is kept.
    let off = parse_document(
        "config:\n  edition: 2\n  timestamps_iso8601: false\nbucket_definitions:\n  a:\n    data: SELECT id FROM docs\n",
    )
    .unwrap()
    .sources;
    let b = sql_bucket("b".into(), vec![], q(), 3, &off).unwrap();
    assert_eq!(b.options.edition, 2);
    assert!(!b.options.timestamps_iso8601 && b.options.fixed_json_extract);
    // Redefining the only bucket keeps its config.
    let active = parse_document(EDITION_2).unwrap().sources;
    let b = sql_bucket("a".into(), vec![], q(), 3, &active).unwrap();
    assert_eq!(b.options, active[0].options);
    // Streams only: edition 2, which accepts buckets beside them.
    let streams = parse_document(
        "config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT * FROM docs WHERE owner_id = auth.user_id()\n",
    )
    .unwrap()
    .sources;
    let b = sql_bucket("b".into(), vec![], q(), 3, &streams).unwrap();
    assert_eq!(b.options.edition, 2);
    assert!(!b.options.streams && b.options.timestamps_iso8601);
    let mut all = streams.clone();
    all.push(b.clone());
    let again = parse_document(&to_yaml(&all)).unwrap().sources;
    assert_eq!(again.iter().find(|s| s.name == "b"), Some(&b));
    // Checked like YAML.
    let e = sql_bucket("b".into(), vec![], vec![], 3, &[]).unwrap_err();
    assert!(e.message.contains("`data` is missing"), "{e}");
}

fn data_sql(yaml_data: &str) -> String {
    let d = deploy(&format!(
        "bucket_definitions:\n  g:\n    data:\n      - \"{yaml_data}\"\n"
    ));
    d.buckets[0].data_queries[0].sql_full.clone()
}

#[test]
fn json_text_is_written_as_sqlite_writes_it() {
    // `->` as an output: JSON text without spaces.
    let s = data_sql("SELECT id, j -> 'a' AS a FROM docs");
    assert!(
        has(
            &s,
            "outpost._json_min(((\"docs\".\"j\")::jsonb #> ARRAY['a']::text[])::text)"
        ),
        "{s}"
    );
    // A json column (and text) is read as json, keeping its key order.
    let s = data_sql("SELECT id, js -> 'a' AS a, js ->> 'a' AS b, t -> '$.a' AS c FROM docs");
    assert!(has(&s, "(\"docs\".\"js\")::json #> ARRAY['a']"), "{s}");
    assert!(
        has(&s, "outpost._sqlite_json((\"docs\".\"js\")::json #>"),
        "{s}"
    );
    assert!(has(&s, "_t::json END"), "{s}");
    // Legacy `->` of a JSON null is NULL.
    assert!(has(&s, "nullif(outpost._json_min("), "{s}");
    // Inside an expression, a `->` result used as text is SQLite's text too;
    // a column's own text is left as replicated.
    let s = data_sql("SELECT id, length(j -> 'a') AS n, length(j) AS m FROM docs");
    assert!(has(&s, "length(nullif(outpost._json_min("), "{s}");
    assert!(has(&s, "length((\"docs\".\"j\")::text)"), "{s}");
}

#[test]
fn a_table_query_without_a_request_match_gives_every_request_its_rows() {
    let d = deploy(&one_bucket(
        "SELECT org_id AS org FROM users WHERE is_admin",
        "SELECT id FROM docs WHERE org_id = bucket.org",
    ));
    let (full, lookup, _) = table_query(&d);
    assert!(has(full, "jsonb_build_array() AS lookup"), "{full}");
    assert!(
        lookup.starts_with("SELECT jsonb_build_array() AS lookup"),
        "{lookup}"
    );
    // PowerSync's own "safe" example; decided by a client value: warned.
    assert!(warnings(&one_bucket(
        "SELECT org_id AS org FROM users",
        "SELECT id FROM docs WHERE org_id = bucket.org"
    ))
    .is_empty());
    let w = warnings(&one_bucket(
        "SELECT org_id AS org FROM users WHERE request.parameters() ->> 'all' = 'yes'",
        "SELECT id FROM docs WHERE org_id = bucket.org",
    ));
    assert_eq!(w.len(), 1, "{w:?}");
}

#[test]
fn arrow_as_a_bucket_parameter_is_json_text() {
    let d = deploy(&one_bucket(
        "SELECT request.jwt() -> 'org' AS org",
        "SELECT id FROM docs WHERE org_id = bucket.org",
    ));
    let ParamQuery::Static { sql, .. } = &d.buckets[0].parameter_queries[0] else {
        panic!()
    };
    assert!(
        has(
            sql,
            "to_jsonb(nullif(outpost._json_min($1::jsonb #> ARRAY['org']::text[]::text"
        ),
        "{sql}"
    );
}

fn static_sql(d: &outpost_rules::Deployment) -> &str {
    match &d.buckets[0].parameter_queries[0] {
        ParamQuery::Static { sql, .. } => sql,
        q => panic!("not a static query: {q:?}"),
    }
}

#[test]
fn a_null_bucket_parameter_is_null_in_the_bucket_id() {
    // PowerSync serializes a NULL parameter as `null` (`b[null,"x"]`);
    // no filter drops the request's bucket, and concat_ws must not drop
    // the value either (which would shift the other parameters).
    let d = deploy(&one_bucket(
        "SELECT request.jwt() ->> 'org' AS org, request.user_id() AS u",
        "SELECT id FROM docs WHERE org_id = bucket.org AND owner_id = bucket.u",
    ));
    let sql = static_sql(&d);
    assert!(!sql.contains("IS NOT NULL"), "{sql}");
    assert!(has(sql, "coalesce(to_jsonb("), "{sql}");
    assert!(has(sql, "::text, 'null'"), "{sql}");
    // Row outputs: a NULL column is a parameter too.
    let d = deploy(&one_bucket(
        "SELECT org_id AS org FROM users WHERE id = request.user_id()",
        "SELECT id FROM docs WHERE org_id = bucket.org",
    ));
    let (full, _, _) = table_query(&d);
    assert!(
        !has(full, "nullif(to_jsonb(\"users\".\"org_id\")"),
        "{full}"
    );
    assert!(has(full, "::text, 'null'"), "{full}");
    // `=` never matches a NULL column, so a NULL request value finds no
    // row (PowerSync stores no lookup for it).
    assert!(has(full, "\"users\".\"id\" IS NOT NULL"), "{full}");
}

#[test]
fn arrow_compares_as_json_text() {
    // `->` is SQLite's JSON text in a WHERE too, not jsonb.
    let d = deploy(
        "bucket_definitions:\n  g:\n    data: SELECT id FROM docs WHERE j -> 'a' = '{\"b\":5}' AND js -> 'k' IN ('\"x\"', '1.0') AND t -> 'a' -> 'b' = '[1]'\n",
    );
    let sql = &d.buckets[0].data_queries[0].sql_full;
    assert!(!sql.contains("::jsonb = "), "{sql}");
    assert!(
        has(
            sql,
            "outpost._json_min(\"docs\".\"j\"::jsonb #> ARRAY['a']::text[])::text)"
        ),
        "{sql}"
    );
    // A json column and text keep their key order, through a chain too.
    assert!(has(sql, "\"docs\".\"js\"::json #>"), "{sql}");
    assert!(sql.matches("_t::json").count() >= 2, "{sql}");
    // `->>` of an object is its JSON text as well.
    let d = deploy(
        "bucket_definitions:\n  g:\n    data: SELECT id FROM docs WHERE j ->> 'a' = '{\"b\":5}'\n",
    );
    let sql = &d.buckets[0].data_queries[0].sql_full;
    assert!(has(sql, "jsonb_typeof(_x) IN ('object', 'array') THEN outpost._json_min(_x::text) ELSE _x #>> '{}'"), "{sql}");
    // The bucket value of `-> = bucket.p` is the text, as the parameter's.
    let d = deploy(&one_bucket(
        "SELECT request.jwt() -> 'org' AS org",
        "SELECT id FROM docs WHERE j -> 'org' = bucket.org",
    ));
    let sql = &d.buckets[0].data_queries[0].sql_full;
    assert!(has(sql, "to_jsonb(nullif(outpost._json_min("), "{sql}");
    assert!(!has(sql, "#> ARRAY['org']::text[]) IS NOT NULL"), "{sql}");
}
