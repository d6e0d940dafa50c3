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

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

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
