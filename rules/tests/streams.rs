//! Sync Streams: stream queries lower to the bucket machinery (one
//! definition per query, a subquery or join as parameter lookups), the
//! stream functions compile to request values, and every refusal names the
//! stream, the query and the problem.

mod support;

use outpost_rules::yaml::{parse_document, to_yaml};
use outpost_rules::{plan, Catalog, ParamQuery};
use support::table;

fn catalog() -> Catalog {
    Catalog::from_tables([
        table(
            100,
            "lists",
            &[
                ("id", "text"),
                ("owner_id", "text"),
                ("org_id", "text"),
                ("name", "text"),
            ],
        ),
        table(
            200,
            "todos",
            &[
                ("id", "text"),
                ("list_id", "text"),
                ("description", "text"),
                ("done", "boolean"),
            ],
        ),
        table(
            300,
            "memberships",
            &[("id", "text"), ("org_id", "text"), ("user_id", "text")],
        ),
    ])
}

const TRANSCRIPT_RULES: &str = "config:\n  edition: 3\nstreams:\n  my_lists:\n    auto_subscribe: true\n    query: SELECT * FROM lists WHERE owner_id = auth.user_id()\n  list_todos:\n    query: SELECT * FROM todos WHERE list_id = subscription.parameter('list_id') AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())\n";

fn lowered(text: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    parse_document(text)
        .unwrap_or_else(|e| panic!("{e}"))
        .sources
        .into_iter()
        .map(|s| (s.name, s.parameters, s.data))
        .collect()
}

fn error(text: &str) -> String {
    match parse_document(text) {
        Err(e) => e.to_string(),
        Ok(d) => match plan(&d.sources, &catalog()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("compiled: {text}"),
        },
    }
}

#[test]
fn transcript_rules_lower_to_one_lookup_per_stream() {
    let l = lowered(TRANSCRIPT_RULES);
    assert_eq!(
        l,
        vec![
            (
                "list_todos|0".to_string(),
                vec!["SELECT id AS p0 FROM lists WHERE (owner_id = auth.user_id()) AND (id = subscription.parameter('list_id'))".to_string()],
                vec!["SELECT * FROM todos WHERE (list_id) IS NOT DISTINCT FROM bucket.p0".to_string()],
            ),
            (
                "my_lists|0".to_string(),
                vec!["SELECT auth.user_id() AS p0".to_string()],
                vec!["SELECT * FROM lists WHERE (owner_id) = bucket.p0".to_string()],
            ),
        ]
    );
    let doc = parse_document(TRANSCRIPT_RULES).unwrap();
    let meta = doc.sources[0].stream.as_ref().unwrap();
    assert_eq!(meta.name, "list_todos");
    assert!(!meta.auto_subscribe);
    assert_eq!(meta.subscription_keys, vec!["list_id".to_string()]);
    assert!(doc.sources[1].stream.as_ref().unwrap().auto_subscribe);

    let p = plan(&doc.sources, &catalog()).unwrap_or_else(|e| panic!("{e}"));
    let b = &p.buckets[0];
    let ParamQuery::Table {
        lookup_sql,
        relid,
        sql_full,
        ..
    } = &b.parameter_queries[0]
    else {
        panic!("a table lookup: {:?}", b.parameter_queries[0]);
    };
    assert_eq!(*relid, 100);
    assert!(lookup_sql.contains("$1 ->> 'sub'"), "{lookup_sql}");
    assert!(
        lookup_sql.contains("$3"),
        "subscription parameters: {lookup_sql}"
    );
    assert!(
        sql_full.contains("'list_todos|0['"),
        "bucket ids: {sql_full}"
    );
    // Both tables are captured: a write to lists moves todos in and out.
    let mut oids: Vec<u32> = p.tables.iter().map(|t| t.oid).collect();
    oids.sort();
    assert_eq!(oids, vec![100, 200]);
}

#[test]
fn joins_and_ctes_lower_like_subqueries() {
    let via_join = lowered("config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT todos.* FROM todos JOIN lists ON todos.list_id = lists.id WHERE lists.owner_id = auth.user_id()\n");
    let via_inner = lowered("config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT todos.* FROM todos INNER JOIN lists ON lists.id = todos.list_id WHERE lists.owner_id = auth.user_id()\n");
    let via_cte = lowered("config:\n  edition: 3\nwith:\n  mine: SELECT id FROM lists WHERE owner_id = auth.user_id()\nstreams:\n  s:\n    query: SELECT * FROM todos WHERE list_id IN mine\n");
    let via_cte_select = lowered("config:\n  edition: 3\nstreams:\n  s:\n    with:\n      mine: SELECT id, name FROM lists WHERE owner_id = auth.user_id()\n    query: SELECT * FROM todos WHERE list_id IN (SELECT id FROM mine)\n");
    assert_eq!(
        via_join[0].1,
        vec![
            "SELECT lists.id AS p0 FROM lists WHERE (lists.owner_id = auth.user_id())".to_string()
        ]
    );
    assert_eq!(
        via_join[0].2,
        vec!["SELECT * FROM todos WHERE (todos.list_id) = bucket.p0".to_string()]
    );
    assert_eq!(via_inner[0].1, via_join[0].1);
    assert_eq!(
        via_cte[0].1,
        vec!["SELECT id AS p0 FROM lists WHERE (owner_id = auth.user_id())".to_string()]
    );
    assert_eq!(via_cte_select[0].1, via_cte[0].1);
    for l in [via_join, via_inner, via_cte, via_cte_select] {
        let doc = parse_document(&format!(
            "config:\n  edition: 3\nstreams:\n  s:\n    query: \"{}\"\n",
            l[0].2[0]
        ));
        let _ = doc;
    }
}

#[test]
fn joined_columns_are_read_through_a_left_join_on_the_key() {
    let inner = "config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT todos.*, lists.name AS list_name FROM todos JOIN lists ON todos.list_id = lists.id WHERE lists.owner_id = auth.user_id()\n";
    let left = "config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT todos.id, todos.description, lists.name AS list_name FROM todos LEFT JOIN lists ON lists.id = todos.list_id WHERE todos.list_id = subscription.parameter('list')\n";
    let three = "config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT todos.*, lists.name AS list_name, upper(lists.owner_id) AS owner FROM todos JOIN lists ON todos.list_id = lists.id JOIN memberships ON memberships.org_id = lists.org_id WHERE memberships.user_id = auth.user_id()\n";
    let l = lowered(inner);
    assert_eq!(
        l[0].1,
        vec![
            "SELECT lists.id AS p0 FROM lists WHERE (lists.owner_id = auth.user_id())".to_string()
        ],
        "the join still decides the buckets"
    );
    assert_eq!(
        l[0].2,
        vec!["SELECT *, lists.name AS list_name FROM todos LEFT JOIN lists ON todos.list_id = lists.id WHERE (todos.list_id) = bucket.p0".to_string()]
    );
    let l = lowered(left);
    assert_eq!(
        l[0].1,
        vec!["SELECT subscription.parameter('list') AS p0".to_string()],
        "a LEFT JOIN filters nothing"
    );
    assert_eq!(
        l[0].2,
        vec!["SELECT todos.id, todos.description, lists.name AS list_name FROM todos LEFT JOIN lists ON todos.list_id = lists.id WHERE (todos.list_id) = bucket.p0".to_string()]
    );
    for text in [inner, left, three] {
        let doc = parse_document(text).unwrap_or_else(|e| panic!("{e}"));
        let p = plan(&doc.sources, &catalog()).unwrap_or_else(|e| panic!("{text}: {e}"));
        let q = &p.buckets[0].data_queries[0];
        assert_eq!(q.relid, 200);
        assert_eq!(q.joined.len(), 1, "{q:?}");
        assert_eq!(q.joined[0].relid, 100);
        assert!(
            q.sql_full
                .contains("LEFT JOIN \"public\".\"lists\" AS \"lists\" ON \"lists\".\"id\" = \"todos\".\"list_id\""),
            "{}",
            q.sql_full
        );
        assert!(
            q.columns.iter().any(|c| c.name == "list_name"),
            "{:?}",
            q.columns
        );
        assert!(
            p.tick_sql.contains(&q.joined[0].keys_sql),
            "the tick re-evaluates todos of changed lists"
        );
        assert!(p.tables.iter().any(|t| t.oid == 100), "lists captured");
    }
}

#[test]
fn a_joined_tables_keys_reach_only_the_stream_that_joins() {
    // `mine` reads todos but no column of lists: a renamed list must not
    // make it re-evaluate (or lose) the list's todos.
    let text = "config:\n  edition: 3\nstreams:\n  named:\n    query: SELECT todos.*, lists.name AS list_name FROM todos JOIN lists ON todos.list_id = lists.id WHERE lists.owner_id = auth.user_id()\n  mine:\n    query: SELECT * FROM todos WHERE list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())\n";
    let doc = parse_document(text).unwrap_or_else(|e| panic!("{e}"));
    let p = plan(&doc.sources, &catalog()).unwrap_or_else(|e| panic!("{e}"));
    let by_name = |n: &str| {
        p.buckets
            .iter()
            .find(|b| b.source.name == n)
            .unwrap_or_else(|| panic!("no stream {n}"))
    };
    let (named, mine) = (by_name("named|0"), by_name("mine|0"));
    let keys = &named.data_queries[0].joined[0].keys_sql;
    assert!(mine.data_queries[0].joined.is_empty());
    assert!(
        p.tick_sql.contains(&format!(
            "UNION ALL SELECT _j.relid, _j.pk, 'named|0' FROM ({keys}) _j"
        )),
        "the join's keys carry the joining stream: {}",
        p.tick_sql
    );
    assert_eq!(p.tick_sql.matches(keys.as_str()).count(), 1, "and only it");
    // A keyed query takes untagged keys and its own stream's, no others.
    let cond = |def: &str| format!("k.relid = 200 AND (k.def IS NULL OR k.def = '{def}')");
    let named_keyed = &named.data_queries[0].sql_keyed;
    let mine_keyed = &mine.data_queries[0].sql_keyed;
    assert!(named_keyed.contains(&cond("named|0")), "{named_keyed}");
    assert!(mine_keyed.contains(&cond("mine|0")), "{mine_keyed}");
    assert!(!mine_keyed.contains("'named|0'"), "{mine_keyed}");
    assert!(
        !p.tick_sql.contains("k.def IS NULL)"),
        "no keyed query takes every key: {}",
        p.tick_sql
    );
}

#[test]
fn nested_subqueries_chain_lookups() {
    let nested = "config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT * FROM todos WHERE list_id IN (SELECT id FROM lists WHERE org_id IN (SELECT org_id FROM memberships WHERE user_id = auth.user_id()))\n";
    let joined = "config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT todos.* FROM todos JOIN lists ON todos.list_id = lists.id JOIN memberships ON memberships.org_id = lists.org_id WHERE memberships.user_id = auth.user_id()\n";
    for text in [nested, joined] {
        let doc = parse_document(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc.sources[0].lookups.len(), 1, "{:?}", doc.sources[0]);
        assert!(
            doc.sources[0].parameters[0].contains("_outpost_lookup('l0')"),
            "{:?}",
            doc.sources[0]
        );
        let p = plan(&doc.sources, &catalog()).unwrap_or_else(|e| panic!("{e}"));
        let qs = &p.buckets[0].parameter_queries;
        assert_eq!(qs.len(), 2);
        let ParamQuery::Table {
            lookup_sql, relid, ..
        } = &qs[0]
        else {
            panic!()
        };
        assert_eq!(*relid, 100, "lists keyed by org");
        assert!(
            lookup_sql.contains("outpost.param_rows"),
            "reads the memberships lookup: {lookup_sql}"
        );
        let ParamQuery::Table {
            relid,
            lookup_only,
            sql_full,
            ..
        } = &qs[1]
        else {
            panic!()
        };
        assert_eq!(*relid, 300);
        assert!(*lookup_only);
        assert!(
            !sql_full.contains("'s|0["),
            "values, not bucket ids: {sql_full}"
        );
        let mut oids: Vec<u32> = p.tables.iter().map(|t| t.oid).collect();
        oids.sort();
        assert_eq!(oids, vec![100, 200, 300], "all three tables captured");
    }
}

#[test]
fn request_functions_compile_to_claims_connection_and_subscription() {
    let text = "config:\n  edition: 2\nstreams:\n  by_param:\n    query: SELECT * FROM lists WHERE org_id = auth.parameter('org') AND name = connection.parameter('n') AND id = subscription.parameter('id')\n  by_array:\n    query: SELECT * FROM todos WHERE list_id IN auth.parameter('lists')\n  gated:\n    query: SELECT * FROM lists WHERE auth.parameter('admin') = true\n  everyone:\n    auto_subscribe: true\n    query: SELECT * FROM lists\n  json_sub:\n    query: SELECT * FROM todos WHERE list_id IN (SELECT value FROM json_each(subscription.parameters() -> 'ids'))\n";
    let doc = parse_document(text).unwrap_or_else(|e| panic!("{e}"));
    let p = plan(&doc.sources, &catalog()).unwrap_or_else(|e| panic!("{e}"));
    let sql_of = |name: &str| -> String {
        let b = p.buckets.iter().find(|b| b.source.name == name).unwrap();
        match &b.parameter_queries[0] {
            ParamQuery::Static { sql, .. } => sql.clone(),
            other => panic!("{other:?}"),
        }
    };
    let s = sql_of("by_param|0");
    assert!(s.contains("$1 #>> '{org}'") || s.contains("$1 #>"), "{s}");
    assert!(s.contains("$2"), "{s}");
    assert!(s.contains("$3"), "{s}");
    assert!(
        sql_of("by_array|0").contains("$1"),
        "json_each over the claim"
    );
    let g = sql_of("gated|0");
    assert!(g.contains("'gated|0[]'"), "one bucket, gated: {g}");
    assert!(g.contains("WHERE"), "{g}");
    assert_eq!(sql_of("everyone|0"), "SELECT 'everyone|0[]' AS bucket");
    assert!(sql_of("json_sub|0").contains("$3"));
}

#[test]
fn several_queries_are_variants_of_one_stream() {
    let text = "config:\n  edition: 3\nstreams:\n  mine:\n    priority: 1\n    queries:\n      - SELECT * FROM lists WHERE owner_id = auth.user_id()\n      - SELECT * FROM todos WHERE list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())\n";
    let doc = parse_document(text).unwrap();
    let names: Vec<&str> = doc.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["mine|0", "mine|1"]);
    assert!(doc.sources.iter().all(|s| s.priority == 1));
    plan(&doc.sources, &catalog()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn rules_yaml_round_trips_streams_and_buckets() {
    for text in [
        TRANSCRIPT_RULES.to_string(),
        "config:\n  edition: 2\nbucket_definitions:\n  global:\n    data: SELECT * FROM lists\nstreams:\n  mine:\n    auto_subscribe: true\n    priority: 0\n    accept_potentially_dangerous_queries: true\n    queries:\n      - SELECT * FROM lists WHERE owner_id = auth.user_id()\n      - SELECT * FROM todos WHERE list_id = subscription.parameter('l')\n".to_string(),
        "config:\n  edition: 3\nwith:\n  mine: SELECT id FROM lists WHERE owner_id = auth.user_id()\nstreams:\n  s:\n    query: SELECT * FROM todos WHERE list_id IN mine\n".to_string(),
    ] {
        let first = parse_document(&text).unwrap().sources;
        let printed = to_yaml(&first);
        let again = parse_document(&printed)
            .unwrap_or_else(|e| panic!("{e}\n{printed}"))
            .sources;
        assert_eq!(first, again, "{printed}");
    }
}

#[test]
fn refusals_name_the_stream_query_and_problem() {
    let s = |q: &str| format!("config:\n  edition: 3\nstreams:\n  s:\n    query: \"{q}\"\n");
    let cases: Vec<(String, &str)> = vec![
        (
            "streams:\n  s:\n    query: SELECT * FROM lists\n".into(),
            "`streams:` (Sync Streams) need `config: {edition: 2}` or 3",
        ),
        (
            "config:\n  edition: 3\nbucket_definitions:\n  b:\n    data: SELECT * FROM lists\nstreams:\n  s:\n    query: SELECT * FROM lists\n".into(),
            "edition 3 compiles Sync Streams only",
        ),
        (
            "config:\n  edition: 2\nwith:\n  c: SELECT id FROM lists\nstreams:\n  s:\n    query: SELECT * FROM lists\n".into(),
            "needs `config: {edition: 3}`",
        ),
        (
            "config:\n  edition: 3\nstreams:\n  s:\n    auto_subscribe: true\n".into(),
            "stream \"s\": one of `query` or `queries` must be given",
        ),
        (
            "config:\n  edition: 3\nstreams:\n  s:\n    query: SELECT * FROM lists\n    querys: x\n".into(),
            "querys",
        ),
        (
            s("SELECT * FROM todos LEFT JOIN lists ON todos.list_id = lists.id"),
            "stream \"s\", query 1: `*` in a query with JOIN",
        ),
        (
            s("SELECT todos.* FROM todos RIGHT JOIN lists ON todos.list_id = lists.id"),
            "only [INNER] JOIN and LEFT JOIN are supported",
        ),
        (
            s("SELECT todos.*, lists.name AS n FROM todos LEFT JOIN lists ON todos.list_id = lists.id WHERE lists.owner_id = auth.user_id()"),
            "is LEFT JOINed, which adds columns and filters nothing",
        ),
        (
            s("SELECT todos.*, lists.name AS n FROM todos LEFT JOIN lists ON todos.list_id = lists.id AND lists.owner_id = 'x'"),
            "compare a column of the selected table with the joined table's key",
        ),
        (
            s("SELECT todos.*, lists.name AS n FROM todos LEFT JOIN lists ON todos.list_id = lists.owner_id"),
            "when the join is on its primary key (id), not on \"owner_id\"",
        ),
        (
            s("SELECT todos.*, lists.* FROM todos JOIN lists ON todos.list_id = lists.id"),
            "select a joined table's columns by name",
        ),
        (
            s("SELECT todos.*, lists.name || todos.description AS x FROM todos JOIN lists ON todos.list_id = lists.id"),
            "mixes columns of `todos` and `lists`",
        ),
        (
            s("SELECT todos.*, memberships.user_id AS u FROM todos JOIN lists ON todos.list_id = lists.id JOIN memberships ON memberships.org_id = lists.org_id"),
            "not joined to `todos` directly",
        ),
        (
            s("SELECT todos.* FROM todos WHERE list_id IN (SELECT lists.id FROM lists LEFT JOIN memberships ON memberships.org_id = lists.org_id)"),
            "belongs to the stream's own FROM",
        ),
        (
            s("SELECT * FROM todos WHERE list_id NOT IN (SELECT id FROM lists)"),
            "`NOT IN (SELECT ...)` is not supported",
        ),
        (
            s("SELECT * FROM todos WHERE list_id = request.user_id()"),
            "belongs to bucket_definitions",
        ),
        (
            s("SELECT * FROM todos WHERE list_id = auth.nope()"),
            "unknown function `auth.nope()`",
        ),
        (
            s("SELECT * FROM nope WHERE id = auth.user_id()"),
            "stream \"s\", query 1 (the rows it selects): unknown table \"nope\"",
        ),
        (
            s("SELECT * FROM todos WHERE list_id IN (SELECT id FROM lists WHERE nope = auth.user_id())"),
            "stream \"s\", query 1 (its subquery and request values): unknown column",
        ),
        (
            s("SELECT todos.* FROM todos JOIN lists ON todos.title = lists.name OR true"),
            "between two tables",
        ),
        (
            s("SELECT * FROM todos ORDER BY id"),
            "ORDER BY is not supported",
        ),
    ];
    for (text, want) in cases {
        let e = error(&text);
        assert!(e.contains(want), "{text}\n=> {e}\nwanted: {want}");
    }
    // Legacy buckets do not read stream functions.
    let e = error("bucket_definitions:\n  b:\n    parameters: SELECT auth.user_id() AS u\n    data: SELECT * FROM lists WHERE owner_id = bucket.u\n");
    assert!(e.contains("belongs to Sync Streams"), "{e}");
}
