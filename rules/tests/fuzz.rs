//! Property tests: the rules pipeline never panics on arbitrary input, and
//! hostile names or expressions fail validation instead of reaching SQL.

use outpost_rules::{parse_yaml, plan, Catalog, Column, Table};
use proptest::prelude::*;

fn catalog() -> Catalog {
    Catalog::from_tables([(
        true,
        Table {
            oid: 1,
            schema: "public".into(),
            name: "todos".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: "integer".into(),
                },
                Column {
                    name: "owner".into(),
                    type_name: "text".into(),
                },
            ],
            primary_key: vec!["id".into()],
        },
    )])
}

fn pipeline(yaml: &str) {
    if let Ok(sources) = parse_yaml(yaml) {
        let _ = plan(&sources, &catalog());
    }
}

/// Expressions built from PowerSync's functions and operators over the
/// catalog's columns and literals, nested a few levels.
fn dialect_expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("owner".to_string()),
        Just("id".to_string()),
        Just("'x'".to_string()),
        Just("'$.a[0]'".to_string()),
        Just("'[1,\"a\"]'".to_string()),
        Just("-3".to_string()),
        Just("NULL".to_string()),
    ];
    leaf.prop_recursive(3, 24, 3, |inner| {
        let f = prop_oneof![
            Just("upper"),
            Just("lower"),
            Just("length"),
            Just("substring"),
            Just("hex"),
            Just("base64"),
            Just("uuid_blob"),
            Just("typeof"),
            Just("ifnull"),
            Just("iif"),
            Just("instr"),
            Just("json_extract"),
            Just("json_array_length"),
            Just("json_valid"),
            Just("json_keys"),
            Just("unixepoch"),
            Just("datetime"),
            Just("st_x"),
            Just("coalesce"),
        ];
        prop_oneof![
            (f, prop::collection::vec(inner.clone(), 1..4))
                .prop_map(|(f, a)| format!("{f}({})", a.join(", "))),
            (
                inner.clone(),
                prop_oneof![
                    Just("->"),
                    Just("->>"),
                    Just("&&"),
                    Just("IN"),
                    Just("NOT IN"),
                    Just("OR"),
                    Just("=")
                ],
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (
                inner.clone(),
                prop_oneof![
                    Just("text"),
                    Just("integer"),
                    Just("real"),
                    Just("numeric"),
                    Just("blob")
                ]
            )
                .prop_map(|(a, t)| format!("CAST({a} AS {t})")),
            inner.prop_map(|a| format!("NOT ({a})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Any mix of dialect functions either compiles or is refused with an
    /// error: never a panic, never more than one statement in the tick.
    #[test]
    fn dialect_expressions_compile_or_are_refused(out in dialect_expr(), cond in dialect_expr()) {
        let yaml = format!(
            "bucket_definitions:\n  b:\n    data: {}\n",
            serde_json::to_string(&format!("SELECT id, {out} AS x FROM todos WHERE {cond}")).unwrap()
        );
        if let Ok(sources) = parse_yaml(&yaml) {
            if let Ok(d) = plan(&sources, &catalog()) {
                prop_assert_eq!(d.tick_sql.matches(';').count(), 0, "{}", d.tick_sql);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,400}") {
        pipeline(&s);
    }

    #[test]
    fn arbitrary_queries_never_panic(q in ".{0,200}", p in ".{0,120}") {
        let yaml = format!(
            "bucket_definitions:\n  b:\n    parameters: {}\n    data: {}\n",
            serde_json::to_string(&p).unwrap(),
            serde_json::to_string(&q).unwrap()
        );
        pipeline(&yaml);
    }

    /// A bucket name with anything but identifier characters is refused
    /// before any SQL is generated.
    #[test]
    fn hostile_bucket_names_are_refused(name in "[a-z]{0,5}[^A-Za-z0-9_]{1,5}[a-z']{0,5}") {
        let yaml = format!(
            "bucket_definitions:\n  {}:\n    data: SELECT id FROM todos\n",
            serde_json::to_string(&name).unwrap()
        );
        if let Ok(sources) = parse_yaml(&yaml) {
            prop_assert!(plan(&sources, &catalog()).is_err());
        }
    }

    /// Generated SQL only ever contains table and column names the catalog
    /// has, quoted; user text reaches it only through parsed expressions.
    #[test]
    fn injection_in_expressions_fails_or_stays_an_expression(tail in "(;|--|/\\*|'\\)|\\$\\$)[ a-zA-Z;]{0,30}") {
        let yaml = format!(
            "bucket_definitions:\n  b:\n    data: {}\n",
            serde_json::to_string(&format!("SELECT id FROM todos WHERE owner = 'x'{tail}")).unwrap()
        );
        if let Ok(sources) = parse_yaml(&yaml) {
            if let Ok(d) = plan(&sources, &catalog()) {
                prop_assert!(!d.tick_sql.to_lowercase().contains("drop "), "{}", d.tick_sql);
                prop_assert_eq!(d.tick_sql.matches(';').count(), 0, "{}", d.tick_sql);
            }
        }
    }
}
