//! PowerSync's rules dialect: each construct compiles (or is refused by
//! name), checked on the generated plan without Postgres. What the compiled
//! SQL evaluates to is checked against real Postgres in
//! tests/tests/dialect_e2e.rs.

mod support;

use outpost_rules::{parse_document, plan, validate, Catalog, Level, ParamQuery};
use support::table;

fn catalog() -> Catalog {
    Catalog::from_tables([
        table(
            100,
            "assets",
            &[
                ("id", "uuid"),
                ("owner_id", "text"),
                ("shared_with", "text"),
                ("org_id", "text"),
                ("category", "text"),
                ("tags", "jsonb"),
                ("meta", "text"),
                ("doc", "json"),
                ("price", "numeric"),
                ("created", "timestamp with time zone"),
                ("region_ids", "text[]"),
                ("geo", "geometry"),
                ("archived", "boolean"),
            ],
        ),
        table(
            200,
            "members",
            &[
                ("id", "uuid"),
                ("user_id", "text"),
                ("org_id", "text"),
                ("role", "text"),
            ],
        ),
    ])
}

fn deploy(yaml: &str) -> outpost_rules::Deployment {
    let doc = parse_document(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    plan(&doc.sources, &catalog()).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn refused(yaml: &str) -> String {
    match parse_document(yaml) {
        Err(e) => e.to_string(),
        Ok(doc) => match plan(&doc.sources, &catalog()) {
            Ok(_) => panic!("compiled but should not:\n{yaml}"),
            Err(e) => e.to_string(),
        },
    }
}

fn bucket(data: &str) -> String {
    format!("bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS user_id\n    data:\n      - {data}\n")
}

fn global(data: &str) -> String {
    format!("bucket_definitions:\n  g:\n    data:\n      - \"{data}\"\n")
}

/// The data query's SQL, lowercased (sqlparser renders type names in capitals).
fn data_sql(d: &outpost_rules::Deployment) -> String {
    d.buckets[0].data_queries[0].sql_full.to_lowercase()
}

#[test]
fn parentheses_anywhere() {
    let d = deploy(&bucket(
        "SELECT id FROM assets WHERE (owner_id = bucket.user_id)",
    ));
    assert!(data_sql(&d).contains("to_jsonb((\"assets\".\"owner_id\"))"));
    deploy(&bucket(
        "SELECT id FROM assets WHERE ((owner_id = bucket.user_id) AND (NOT archived))",
    ));
}

#[test]
fn or_over_bucket_parameters_is_a_union_of_branches() {
    let d = deploy(&bucket(
        "SELECT id FROM assets WHERE owner_id = bucket.user_id OR shared_with = bucket.user_id",
    ));
    let q = &d.buckets[0].data_queries[0];
    assert_eq!(
        q.sql_full.matches(" UNION ALL ").count(),
        1,
        "{}",
        q.sql_full
    );
    assert!(q.may_duplicate, "a row may match both branches");
    assert!(q.sql_keyed.contains("\"shared_with\""));
    // NOT over a bucket match cannot be matched structurally.
    let e = refused(&bucket(
        "SELECT id FROM assets WHERE NOT (owner_id = bucket.user_id)",
    ));
    assert!(e.contains("unsupported condition"), "{e}");
}

#[test]
fn or_of_plain_filters_stays_one_condition() {
    let d = deploy(&bucket(
        "SELECT id FROM assets WHERE owner_id = bucket.user_id AND (archived OR category IS NULL)",
    ));
    assert!(!data_sql(&d).contains("UNION ALL"), "{}", data_sql(&d));
    assert!(data_sql(&d).contains("is null"));
}

#[test]
fn or_in_parameter_queries_tags_each_branch_lookup() {
    let d = deploy(
        "bucket_definitions:\n  b:\n    parameters: SELECT id AS asset_id FROM assets WHERE owner_id = request.user_id() OR org_id = request.jwt() ->> 'org'\n    data: SELECT id FROM assets WHERE id = bucket.asset_id\n",
    );
    let ParamQuery::Table {
        sql_full,
        lookup_sql,
        ..
    } = &d.buckets[0].parameter_queries[0]
    else {
        panic!()
    };
    // A value matched by one branch must not satisfy another's lookup.
    assert!(sql_full.contains("jsonb_build_array('#1'"), "{sql_full}");
    assert!(sql_full.contains("jsonb_build_array('#2'"), "{sql_full}");
    assert!(
        lookup_sql.contains("'#1'") && lookup_sql.contains("'#2'"),
        "{lookup_sql}"
    );
    assert_eq!(lookup_sql.matches("UNION ALL").count(), 1);
}

#[test]
fn in_over_json_arrays_literals_and_columns() {
    let d = deploy(&global(
        "SELECT id FROM assets WHERE category IN '[\\\"draft\\\",\\\"hidden\\\"]'",
    ));
    assert!(
        data_sql(&d).contains("outpost._elements(to_jsonb(('[\"draft\",\"hidden\"]')::text))"),
        "{}",
        data_sql(&d)
    );
    let d = deploy(&global("SELECT id FROM assets WHERE category NOT IN tags"));
    assert!(data_sql(&d).contains("not (case when"), "{}", data_sql(&d));
    let d = deploy(&global(
        "SELECT id FROM assets WHERE category IN ('a', 'b')",
    ));
    assert!(
        data_sql(&d).contains("in ('a', 'b')"),
        "a list stays a list"
    );
    deploy(&bucket(
        "SELECT id FROM assets WHERE bucket.user_id IN tags",
    ));
}

#[test]
fn json_each_parameter_queries() {
    let d = deploy(
        "bucket_definitions:\n  by_tag:\n    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags') WHERE value <> 'hidden'\n    data: SELECT id FROM assets WHERE bucket.tag IN tags\n",
    );
    let ParamQuery::Static { sql, .. } = &d.buckets[0].parameter_queries[0] else {
        panic!()
    };
    assert!(sql.contains("jsonb_each("), "{sql}");
    assert!(sql.contains("_outpost_je.v #>> '{}'"), "{sql}");
    deploy(
        "bucket_definitions:\n  by_tag:\n    parameters: SELECT t.value AS tag FROM json_each(request.parameters() -> 'tags') AS t\n    accept_potentially_dangerous_queries: true\n    data: SELECT id FROM assets WHERE category = bucket.tag\n",
    );
    // `key`, as SQLite has it: an array's index, an object member's name.
    let d = deploy(
        "bucket_definitions:\n  b:\n    parameters: SELECT key AS k, e.value AS v FROM json_each(request.jwt() -> 'tags') AS e WHERE e.key <> 'skip'\n    data: SELECT id FROM assets WHERE category = bucket.k AND org_id = bucket.v\n",
    );
    let ParamQuery::Static { sql, .. } = &d.buckets[0].parameter_queries[0] else {
        panic!()
    };
    assert!(sql.contains("_outpost_je(k, v)"), "{sql}");
    assert!(
        sql.contains("coalesce(((SELECT") && sql.contains("to_jsonb(((_outpost_je.k))) AS _b"),
        "{sql}"
    );
    assert!(sql.contains("_outpost_je.k #>> '{}'"), "{sql}");
    assert!(sql.contains("WITH ORDINALITY"), "array indexes: {sql}");
    let e = refused(
        "bucket_definitions:\n  b:\n    parameters: SELECT atom AS k FROM json_each(request.jwt() -> 'tags')\n    data: SELECT id FROM assets WHERE category = bucket.k\n",
    );
    assert!(
        e.contains("json_each(...) rows have a `key` and a `value`"),
        "{e}"
    );
    let e = refused(&global("SELECT value AS id FROM json_each('[1]')"));
    assert!(e.contains("json_each(...) is for parameter queries"), "{e}");
}

#[test]
fn request_functions_and_legacy_names() {
    for q in [
        "SELECT request.parameter('org') AS org",
        "SELECT request.parameters() ->> 'org' AS org",
        "SELECT user_parameters.org AS org",
        "SELECT token_parameters.org AS org",
        "SELECT request.jwt() ->> 'org' AS org",
    ] {
        let d = deploy(&format!(
            "bucket_definitions:\n  b:\n    accept_potentially_dangerous_queries: true\n    parameters: {q}\n    data: SELECT id FROM assets WHERE org_id = bucket.org\n"
        ));
        let ParamQuery::Static { sql, .. } = &d.buckets[0].parameter_queries[0] else {
            panic!()
        };
        assert!(sql.contains("$1") || sql.contains("$2"), "{q}: {sql}");
    }
}

#[test]
fn output_renames_table_aliases_and_priority() {
    let d = deploy(
        "bucket_definitions:\n  b:\n    parameters: SELECT m.org_id AS org, 1 AS _priority FROM members AS m WHERE m.user_id = request.user_id()\n    data: SELECT a.id, a.category AS kind FROM assets AS a WHERE a.org_id = bucket.org\n",
    );
    let b = &d.buckets[0];
    assert_eq!(
        b.param_names,
        vec!["org"],
        "_priority is not a bucket parameter"
    );
    assert_eq!(b.source.priority, 1, "_priority sets the bucket's priority");
    assert_eq!(
        b.data_queries[0].object_type, "a",
        "the alias names the output table"
    );
    assert_eq!(b.data_queries[0].columns[1].name, "kind");
    let e = refused(
        "bucket_definitions:\n  b:\n    priority: 2\n    parameters: SELECT request.user_id() AS u, 1 AS _priority\n    data: SELECT id FROM assets WHERE owner_id = bucket.u\n",
    );
    assert!(
        e.contains("`_priority` 1 disagrees with the bucket's priority 2"),
        "{e}"
    );
    let e = refused(
        "bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS u, request.user_id() AS _priority\n    data: SELECT id FROM assets WHERE owner_id = bucket.u\n",
    );
    assert!(e.contains("`_priority` must be an integer literal"), "{e}");
}

#[test]
fn semantic_errors_stay_errors() {
    let cases = [
        ("bucket_definitions:\n  b:\n    parameters: SELECT upper(request.user_id())\n    data: SELECT id FROM assets\n", "bucket \"b\", parameter query 1: the expression `upper(request.user_id())` needs a name"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS u\n    data: SELECT id FROM assets\n", "bucket \"b\", data query 1: bucket parameter `u` is not matched"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS u\n    data: SELECT id FROM assets WHERE owner_id = bucket.u AND shared_with = bucket.u\n", "bucket \"b\", data query 1: bucket.u is matched twice"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS u, request.jwt() ->> 'o' AS o\n    data: SELECT id FROM assets WHERE owner_id = bucket.u OR org_id = bucket.o\n", "bucket parameter `o` is not matched in every OR branch"),
    ];
    for (yaml, want) in cases {
        let e = refused(yaml);
        assert!(e.contains(want), "want `{want}`, got `{e}`");
        assert!(e.contains("(in: "), "names the query: {e}");
    }
}

#[test]
fn functions_compile_to_postgres() {
    let cases = [
        ("upper(category)", "upper((\"assets\".\"category\")::text)"),
        ("hex(category)", "encode(convert_to("),
        ("base64(category)", "translate(encode("),
        (
            "length(category)",
            "length((\"assets\".\"category\")::text)",
        ),
        ("substring(category, 2, 3)", "substr(_t"),
        ("uuid_blob(id)", "decode(replace(_u"),
        ("typeof(price)", "pg_typeof("),
        ("ifnull(category, 'x')", "coalesce("),
        ("iif(archived, 'a', 'b')", "CASE WHEN"),
        ("instr(category, 'x')", "strpos("),
        // Text and json columns are read as json (key order kept).
        (
            "json_extract(meta, '$.a.b')",
            "outpost._sqlite_json((SELECT CASE WHEN outpost._json(_t) IS NOT NULL THEN _t::json END FROM (SELECT (\"assets\".\"meta\")::text AS _t) _o) #> ARRAY['a', 'b']::text[])",
        ),
        ("meta ->> '$.a[0]'", "ARRAY['a', '0']::text[]"),
        (
            "doc -> 'a'",
            "outpost._json_min(((\"assets\".\"doc\")::json #> ARRAY['a']::text[])::text)",
        ),
        (
            "tags -> 'a'",
            "outpost._json_min((((\"assets\".\"tags\")::jsonb #> ARRAY['a']::text[]))::text)",
        ),
        ("json_array_length(tags)", "jsonb_array_length(_v)"),
        ("json_valid(meta)", "outpost._json("),
        ("json_keys(doc)", "json_object_keys(_t::json)"),
        (
            "unixepoch(created)",
            "extract(epoch FROM (\"assets\".\"created\"))",
        ),
        ("datetime(created)", "YYYY-MM-DD HH24:MI:SS"),
        ("CAST(meta AS integer)", "substring(ltrim("),
        ("meta::real", "::float8"),
        ("CAST(price AS text)", "(\"assets\".\"price\")::text"),
        ("CAST(meta AS blob)", "convert_to("),
        ("st_asgeojson(geo)", "ST_AsGeoJSON("),
        ("now()", "now()"),
    ];
    for (expr, want) in cases {
        let d = deploy(&global(&format!("SELECT id, {expr} AS x FROM assets")));
        // Compared without parentheses: sqlparser re-renders them freely.
        let bare = |s: &str| s.to_lowercase().replace(['(', ')'], "");
        let sql = bare(&data_sql(&d));
        let want = bare(want);
        if std::env::var_os("SHOW_SQL").is_some() {
            eprintln!("{expr}\n  {sql}");
        }
        assert!(sql.contains(&want), "{expr}: want `{want}` in\n{sql}");
    }
    let d = deploy(&global("SELECT id FROM assets WHERE tags && '[\\\"a\\\"]'"));
    assert!(data_sql(&d).contains("join outpost._elements("));
    let d = deploy(&global(
        "SELECT id FROM assets WHERE region_ids && region_ids",
    ));
    assert!(data_sql(&d).contains("&&"), "Postgres arrays keep &&");
}

#[test]
fn function_misuse_is_refused_by_name() {
    for (expr, want) in [
        (
            "st_astext(meta)",
            "function `st_astext` needs a geometry or geography column (PostGIS)",
        ),
        (
            "upper(meta, meta)",
            "function `upper` takes 1 argument(s), got 2",
        ),
        (
            "json_extract(meta, 'a')",
            "invalid JSON path `a`: a path starts with `$`",
        ),
        (
            "unixepoch(meta, 'localtime')",
            "supported modifiers are 'unixepoch' and 'subsec'",
        ),
        ("meta ->> '$.a['", "invalid JSON path"),
    ] {
        let e = refused(&global(&format!("SELECT id, {expr} AS x FROM assets")));
        assert!(e.contains(want), "{expr}: want `{want}`, got `{e}`");
    }
}

#[test]
fn legacy_and_fixed_json_extract() {
    let legacy = deploy(&global("SELECT id, meta ->> 'a.b' AS x FROM assets"));
    assert!(data_sql(&legacy).contains("array['a', 'b']::text[]"));
    let fixed = deploy(&format!(
        "config:\n  edition: 2\n{}",
        global("SELECT id, meta ->> 'a.b' AS x FROM assets")
    ));
    assert!(data_sql(&fixed).contains("array['a.b']::text[]"));
}

#[test]
fn config_options_are_honoured_or_refused_by_name() {
    let legacy = deploy(&global("SELECT * FROM assets WHERE false"));
    let iso = deploy(&format!(
        "config:\n  edition: 2\n  timestamp_max_precision: milliseconds\n{}",
        global("SELECT * FROM assets WHERE false")
    ));
    assert!(data_sql(&legacy).contains("'yyyy-mm-dd hh24:mi:ss'"));
    assert!(data_sql(&iso).contains("'yyyy-mm-dd\"t\"hh24:mi:ss'"));
    assert!(data_sql(&iso).contains("'.ms'"));
    for (config, want) in [
        ("edition: 7", "unknown edition 7"),
        ("edition: 3", "edition 3 compiles Sync Streams only"),
        (
            "versioned_bucket_ids: true",
            "versioned_bucket_ids is not supported",
        ),
        (
            "custom_postgres_types: true",
            "custom_postgres_types is not supported",
        ),
        (
            "timestamp_max_precision: minutes",
            "unknown timestamp_max_precision `minutes`",
        ),
        (
            "timestamp_max_precision: seconds",
            "timestamp_max_precision requires timestamps_iso8601",
        ),
        (
            "unstable_sqlite_expression_engine: true",
            "unstable_sqlite_expression_engine is not supported",
        ),
        ("no_such_option: 1", "no_such_option"),
    ] {
        let e = refused(&format!(
            "config:\n  {config}\n{}",
            global("SELECT id FROM assets")
        ));
        assert!(e.contains(want), "{config}: want `{want}`, got `{e}`");
    }
    deploy(&format!(
        "config:\n  edition: 2\n  versioned_bucket_ids: false\n  custom_postgres_types: false\n  timestamps_iso8601: false\n  fixed_json_extract: true\n{}",
        global("SELECT id FROM assets")
    ));
}

#[test]
fn streams_need_an_edition_and_events_are_warned() {
    let e = refused("streams:\n  s:\n    query: SELECT * FROM assets\n");
    assert!(
        e.contains("`streams:` (Sync Streams) need `config: {edition: 2}` or 3"),
        "{e}"
    );
    let v = validate(
        &format!(
            "event_definitions:\n  e:\n    payloads: [SELECT id FROM assets]\n{}",
            global("SELECT id FROM assets")
        ),
        &catalog(),
    );
    assert!(v.plan.is_some());
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert_eq!(v.problems[0].0, Level::Warning);
    assert!(v.problems[0]
        .1
        .message
        .contains("Outpost does not emit events"));
}

#[test]
fn client_chosen_parameters_warn_unless_accepted() {
    let dangerous = [
        "SELECT id AS asset_id FROM assets WHERE id = request.parameters() ->> 'asset'",
        "SELECT id AS asset_id FROM assets WHERE id = request.parameter('asset') AND request.jwt() ->> 'role' = 'admin'",
        "SELECT request.parameters() ->> 'asset' AS asset_id",
        "SELECT value AS asset_id FROM json_each(request.parameters() -> 'assets')",
    ];
    let safe = [
        "SELECT id AS asset_id FROM assets WHERE owner_id = request.user_id()",
        "SELECT id AS asset_id FROM assets WHERE owner_id = request.user_id() AND id = request.parameters() ->> 'asset'",
        "SELECT id AS asset_id FROM assets WHERE org_id = request.jwt() ->> 'org' AND id = request.parameter('asset')",
    ];
    let doc = |q: &str, accept: bool| {
        format!(
            "bucket_definitions:\n  b:\n{}    parameters: \"{q}\"\n    data: SELECT id FROM assets WHERE id = bucket.asset_id\n",
            if accept { "    accept_potentially_dangerous_queries: true\n" } else { "" }
        )
    };
    for q in dangerous {
        let v = validate(&doc(q, false), &catalog());
        assert!(v.plan.is_some(), "{q}: {:?}", v.problems);
        assert_eq!(v.problems.len(), 1, "{q}: {:?}", v.problems);
        let (level, e) = &v.problems[0];
        assert_eq!(*level, Level::Warning);
        assert!(e.message.contains("values the client chooses"), "{e}");
        assert_eq!(e.location(), "bucket \"b\", parameter query 1");
        assert!(
            validate(&doc(q, true), &catalog()).problems.is_empty(),
            "{q}"
        );
    }
    for q in safe {
        let v = validate(&doc(q, false), &catalog());
        assert!(v.problems.is_empty(), "{q}: {:?}", v.problems);
    }
}

#[test]
fn rules_yaml_keeps_config_and_acceptance() {
    let text = "config:\n  edition: 2\n  timestamp_max_precision: seconds\nbucket_definitions:\n  b:\n    accept_potentially_dangerous_queries: true\n    parameters: SELECT request.parameter('a') AS a\n    data: SELECT id FROM assets WHERE id = bucket.a\n";
    let first = parse_document(text).unwrap().sources;
    let yaml = outpost_rules::yaml::to_yaml(&first);
    let again = parse_document(&yaml).unwrap().sources;
    assert_eq!(first, again, "{yaml}");
}

#[test]
fn concat_joins_the_text_of_each_side() {
    // SQLite's text of each side: a boolean is 1/0 (Postgres would write
    // `true`), a timestamp PowerSync's UTC text, jsonb its text (never
    // jsonb's merge), and two integers concatenate (Postgres has no
    // `int || int`).
    let d = deploy(&global(
        "SELECT id, archived || 'x' AS a, created || '' AS c, tags || tags AS j, 1 || 2 AS n FROM assets",
    ));
    let sql = data_sql(&d);
    assert!(
        sql.contains("((\"assets\".\"archived\"))::int)::text || ('x')::text"),
        "{sql}"
    );
    assert!(
        sql.contains("at time zone 'utc'") && sql.contains("yyyy-mm-dd hh24:mi:ss"),
        "{sql}"
    );
    assert!(
        sql.contains(
            "((\"assets\".\"tags\"))::text)::text || (((\"assets\".\"tags\"))::text)::text"
        ),
        "{sql}"
    );
    assert!(sql.contains("(1)::text || (2)::text"), "{sql}");
    // A blob keeps Postgres' bytea `||`.
    let d = deploy(&global(
        "SELECT id, base64(uuid_blob(id) || uuid_blob(id)) AS b FROM assets",
    ));
    assert!(
        !data_sql(&d).contains("::bytea)::text ||"),
        "{}",
        data_sql(&d)
    );
}

#[test]
fn bucket_parameters_are_written_as_row_values() {
    // PowerSync writes a bucket parameter as the row's SQLite value:
    // booleans 1/0, timestamps its text, numeric and json their text; both
    // sides of the bucket (the data query's match and the parameter
    // query's output) convert alike.
    let d = deploy(
        "bucket_definitions:\n  b:\n    parameters: SELECT archived AS f, created AS t, price AS p, doc AS j FROM assets WHERE owner_id = request.user_id()\n    data: SELECT id FROM assets WHERE archived = bucket.f AND created = bucket.t AND price = bucket.p AND doc = bucket.j\n",
    );
    let data = data_sql(&d);
    let ParamQuery::Table { sql_full, .. } = &d.buckets[0].parameter_queries[0] else {
        panic!()
    };
    let param = sql_full.to_lowercase();
    for sql in [&data, &param] {
        // Compared without parentheses, which differ between the sides.
        let bare = sql.replace(['(', ')'], "");
        assert!(
            bare.contains("to_jsonb\"assets\".\"archived\"::int"),
            "{sql}"
        );
        assert!(
            bare.contains(
                "to_jsonbto_char\"assets\".\"created\" at time zone 'utc', 'yyyy-mm-dd hh24:mi:ss'"
            ),
            "{sql}"
        );
        assert!(bare.contains("to_jsonb\"assets\".\"price\"::text"), "{sql}");
        assert!(bare.contains("to_jsonb\"assets\".\"doc\"::text"), "{sql}");
    }
}

#[test]
fn request_booleans_are_bucket_parameters_as_1_and_0() {
    // SQLite has no booleans: a `true` claim or client parameter is 1 in
    // PowerSync's bucket id, as a boolean column is, so a request value
    // goes through the same boolean-to-integer step, in a query without
    // FROM, as a table query's request output, and in a stream.
    let bool_step = "when jsonb_typeof(_b) = 'boolean' then to_jsonb(_b::boolean::int)";
    let d = deploy(
        "bucket_definitions:\n  c:\n    parameters: SELECT request.jwt() ->> 'admin' AS f, request.parameter('flag') AS g\n    data: SELECT id FROM assets WHERE archived = bucket.f AND archived = bucket.g\n",
    );
    let ParamQuery::Static { sql, .. } = &d.buckets[0].parameter_queries[0] else {
        panic!()
    };
    let sql = sql.to_lowercase();
    assert_eq!(sql.matches(bool_step).count(), 2, "{sql}");
    let d = deploy(
        "bucket_definitions:\n  t:\n    parameters: SELECT org_id AS o, request.jwt() ->> 'admin' AS f FROM members WHERE user_id = request.user_id()\n    data: SELECT id FROM assets WHERE org_id = bucket.o AND archived = bucket.f\n",
    );
    let ParamQuery::Table { bucket_sql, .. } = &d.buckets[0].parameter_queries[0] else {
        panic!()
    };
    let bucket_sql = bucket_sql.as_deref().unwrap().to_lowercase();
    assert!(bucket_sql.contains(bool_step), "{bucket_sql}");
    let doc = parse_document(
        "config:\n  edition: 2\nstreams:\n  s:\n    query: SELECT * FROM assets WHERE archived = subscription.parameter('flag') AND archived = auth.parameter('admin')\n",
    )
    .unwrap();
    let p = plan(&doc.sources, &catalog()).unwrap();
    let ParamQuery::Static { sql, .. } = &p.buckets[0].parameter_queries[0] else {
        panic!("{:?}", p.buckets[0].parameter_queries)
    };
    let sql = sql.to_lowercase();
    assert_eq!(sql.matches(bool_step).count(), 2, "{sql}");
}
