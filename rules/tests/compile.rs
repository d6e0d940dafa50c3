//! Rules compiler: valid documents compile, each invalid one fails with a
//! message that names the bucket, the query and the problem.

mod support;

use outpost_rules::{parse_yaml, plan, Catalog, Table};
use support::col;

fn catalog() -> Catalog {
    Catalog::from_tables([
        (
            true,
            Table {
                oid: 100,
                schema: "public".into(),
                name: "lists".into(),
                columns: vec![
                    col("id", "uuid"),
                    col("owner_id", "text"),
                    col("name", "text"),
                    col("members", "jsonb"),
                    col("_hidden", "text"),
                ],
                primary_key: vec!["id".into()],
            },
        ),
        (
            true,
            Table {
                oid: 200,
                schema: "public".into(),
                name: "todos".into(),
                columns: vec![
                    col("id", "uuid"),
                    col("list_id", "uuid"),
                    col("title", "text"),
                    col("done", "boolean"),
                    col("_secret", "text"),
                    col("photo", "bytea"),
                    col("tags", "jsonb"),
                ],
                primary_key: vec!["id".into()],
            },
        ),
        (
            true,
            Table {
                oid: 300,
                schema: "public".into(),
                name: "nopk".into(),
                columns: vec![col("id", "int4")],
                primary_key: vec![],
            },
        ),
    ])
}

fn compile_err(yaml: &str) -> String {
    let sources = match parse_yaml(yaml) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    match plan(&sources, &catalog()) {
        Ok(_) => panic!("compiled but should not:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn compile_ok(yaml: &str) -> outpost_rules::Deployment {
    let sources = parse_yaml(yaml).unwrap();
    plan(&sources, &catalog()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn typical_rules_compile() {
    let d = compile_ok(
        r#"
bucket_definitions:
  user_lists:
    priority: 1
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT id, list_id, title, done FROM todos WHERE list_id = bucket.list_id
      - SELECT *, upper(name) AS shout FROM lists WHERE id = bucket.list_id
  by_user:
    parameters: SELECT request.user_id() AS uid
    data: [ "SELECT id, title FROM todos t WHERE t.title = bucket.uid AND NOT done" ]
  global:
    data: [ "SELECT id::text AS id, title FROM todos WHERE done = true" ]
"#,
    );
    assert_eq!(d.buckets.len(), 3);
    assert_eq!(d.tables.len(), 2, "lists and todos captured once each");
    let sql = &d.tick_sql;
    assert!(sql.contains("DELETE FROM outpost.changes"), "{sql}");
    assert!(sql.contains("'user_lists#0'"), "{sql}");
    assert!(
        !sql.contains("_hidden"),
        "underscore columns are skipped by *: {sql}"
    );
    assert_eq!(d.checks.len(), 8, "checks: {:?}", d.checks);
}

#[test]
fn star_rejects_bytea_columns() {
    // todos has a bytea column, so `*` over it must be refused with a hint.
    let e = compile_err("bucket_definitions:\n  g:\n    data: SELECT * FROM todos\n");
    assert!(
        e.contains("bucket \"g\", data query 1: column \"photo\" is bytea"),
        "{e}"
    );
    assert!(e.contains("encode(photo, 'base64')"), "{e}");
    compile_ok("bucket_definitions:\n  g:\n    data: SELECT id, encode(photo, 'base64') AS photo FROM todos\n");
}

#[test]
fn errors_name_bucket_query_and_problem() {
    let cases: &[(&str, &str)] = &[
        ("bucket_definitions:\n  b:\n    data: SELECT * FROM nope\n", "bucket \"b\", data query 1: unknown table \"nope\""),
        ("bucket_definitions:\n  b:\n    data: SELECT id, nosuch FROM lists\n", "bucket \"b\", data query 1: unknown column \"nosuch\" in table \"lists\""),
        ("bucket_definitions:\n  b:\n    data: SELECT name FROM lists\n", "bucket \"b\", data query 1: the query must select an `id` column"),
        ("bucket_definitions:\n  b:\n    data: SELECT id FROM lists WHERE owner_id = bucket.owner\n", "unknown bucket parameter `bucket.owner`: this bucket has no parameter query"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS uid\n    data: SELECT id FROM lists WHERE owner_id = bucket.x\n", "unknown bucket parameter `bucket.x` (the parameter queries define: uid)"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS uid\n    data: SELECT id FROM lists\n", "bucket parameter `uid` is not matched"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS uid\n    data: SELECT id FROM lists WHERE owner_id = bucket.uid OR name = 'x'\n", "bucket \"b\", data query 1: bucket parameter `uid` is not matched in every OR branch"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS uid\n    data: SELECT id FROM lists WHERE owner_id > bucket.uid\n", "bucket \"b\", data query 1: unsupported condition"),
        ("bucket_definitions:\n  b:\n    data: SELECT id FROM lists l JOIN todos t ON t.list_id = l.id\n", "JOIN is not supported"),
        ("bucket_definitions:\n  b:\n    data: SELECT id FROM nopk\n", "table \"nopk\" has no primary key"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT request.userid() AS u\n    data: SELECT id FROM lists\n", "unknown request function `request.userid()`"),
        ("bucket_definitions:\n  b:\n    parameters: SELECT upper(request.user_id())\n    data: SELECT id FROM lists\n", "needs a name: add `AS name`"),
        ("bucket_definitions:\n  b:\n    parameters: [\"SELECT request.user_id() AS a\", \"SELECT request.user_id() AS b\"]\n    data: SELECT id FROM lists WHERE owner_id = bucket.a\n", "bucket \"b\", parameter query 2: every parameter query of a bucket must output the same parameters"),
        ("bucket_definitions:\n  b:\n    data: SELECT id, request.user_id() AS me FROM lists\n", "uses request values"),
        ("bucket_definitions:\n  b:\n    data: SELECT id FROM lists WHERE id IN (SELECT list_id FROM todos)\n", "subqueries are not supported"),
        ("bucket_definitions:\n  b:\n    data: SELECT id FROM lists; DROP TABLE lists\n", "exactly one SELECT"),
        ("bucket_definitions:\n  b:\n    data: SELECT id FROM outpost.ops\n", "cannot be synced"),
    ];
    for (yaml, want) in cases {
        let e = compile_err(yaml);
        assert!(e.contains(want), "for\n{yaml}\nwant `{want}`\ngot  `{e}`");
    }
}

#[test]
fn in_bindings_and_lookups() {
    let d = compile_ok(
        r#"
bucket_definitions:
  shared:
    parameters: SELECT id AS list_id FROM lists WHERE request.user_id() IN members
    data: SELECT id, title FROM todos WHERE bucket.list_id IN tags
  picked:
    parameters: SELECT id AS list_id FROM lists WHERE id IN request.parameters() -> 'lists'
    data: SELECT id, title FROM todos WHERE list_id = bucket.list_id
"#,
    );
    assert!(
        d.tick_sql
            .contains("outpost._elements(to_jsonb((\"todos\".\"tags\")))"),
        "{}",
        d.tick_sql
    );
    let shared = &d
        .buckets
        .iter()
        .find(|b| b.source.name == "shared")
        .unwrap();
    let outpost_rules::ParamQuery::Table {
        lookup_sql,
        sql_full,
        ..
    } = &shared.parameter_queries[0]
    else {
        panic!()
    };
    assert!(
        sql_full.contains("_elements(to_jsonb((\"lists\".\"members\")))"),
        "{sql_full}"
    );
    assert!(lookup_sql.contains("$1 ->> 'sub'"), "{lookup_sql}");
}

#[test]
fn identifiers_are_quoted_in_generated_sql() {
    let cat = Catalog::from_tables([(
        true,
        Table {
            oid: 9,
            schema: "public".into(),
            name: "we\"ird".into(),
            columns: vec![col("id", "int4")],
            primary_key: vec!["id".into()],
        },
    )]);
    let d = plan(
        &parse_yaml("bucket_definitions:\n  g:\n    data: SELECT id FROM \"we\"\"ird\"\n").unwrap(),
        &cat,
    )
    .unwrap();
    assert!(
        d.tick_sql.contains("\"public\".\"we\"\"ird\""),
        "{}",
        d.tick_sql
    );
}
