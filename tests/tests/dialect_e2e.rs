//! PowerSync's expression dialect evaluated by real Postgres: each function
//! and operator is compiled into a data query, deployed, and the values the
//! bucket holds are compared with what PowerSync (SQLite semantics) returns,
//! over rows with NULLs, numbers, text and JSON edge cases.
//!
//! Also: rules files written the way PowerSync's documentation writes them,
//! deployed and ticked, with the buckets each user gets and what they hold.

use outpost_tests::dialect::{deploy, request_buckets};
use outpost_tests::{fold_bucket, ops, tick, TestDb};
use postgres::Client;
use serde_json::{json, Value};

const TABLE: &str = r#"
CREATE TABLE v (id int PRIMARY KEY, t text, j jsonb, js json, n int, r float8, b bool,
                bin bytea, ts timestamptz, tags jsonb, price numeric);
INSERT INTO v VALUES
 (1, 'Hello', '{"a": {"b": 5}, "s": "x", "t": true, "arr": [1, 2, 3]}', '{"z": 1, "a": 2}',
     42, 2.5, true, '\x0102', '2024-01-02 03:04:05.5+00', '["x", "y"]', 12.50),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, '{"k": [1, 2]}', '[]', '[1]', -7, -0.5, false, '\x', '1970-01-01 00:00:00+00', '{"a": 1}', 0),
 (4, '12abc', '"str"', 'null', 0, 3.7, true, '\xff', '2024-06-30 23:59:59.999+02', '[]', -1.5),
 (5, 'ünï', '{"a.b": 1, "a": {"b": 2}}', '{}', 3, NULL, false, NULL, NULL, '[1, "x"]', 7);
"#;

/// (expression, value per row 1..=5; `None` = not compared for that row).
fn cases() -> Vec<(&'static str, [Option<Value>; 5])> {
    let n = || Some(Value::Null);
    let s = |v: &str| Some(json!(v));
    let i = |v: i64| Some(json!(v));
    let f = |v: f64| Some(json!(v));
    vec![
        (
            "upper(t)",
            [s("HELLO"), n(), s("{\"K\": [1, 2]}"), s("12ABC"), None],
        ),
        (
            "lower(t)",
            [s("hello"), n(), s("{\"k\": [1, 2]}"), s("12abc"), None],
        ),
        ("length(t)", [i(5), n(), i(13), i(5), i(3)]),
        ("length(n)", [i(2), n(), i(2), i(1), i(1)]),
        ("length(bin)", [i(2), n(), i(0), i(1), n()]),
        (
            "substring(t, 2, 3)",
            [s("ell"), n(), s("\"k\""), s("2ab"), s("nï")],
        ),
        (
            "substring(t, -2)",
            [s("lo"), n(), s("]}"), s("bc"), s("nï")],
        ),
        ("substring(t, 0, 2)", [s("H"), n(), s("{"), s("1"), s("ü")]),
        (
            "substring(t, 3, -2)",
            [s("He"), n(), s("{\""), s("12"), s("ün")],
        ),
        (
            "hex(t)",
            [
                s("48656C6C6F"),
                s(""),
                s("7B226B223A205B312C20325D7D"),
                s("3132616263"),
                s("C3BC6EC3AF"),
            ],
        ),
        ("hex(bin)", [s("0102"), s(""), s(""), s("FF"), s("")]),
        (
            "base64(t)",
            [
                s("SGVsbG8="),
                s(""),
                s("eyJrIjogWzEsIDJdfQ=="),
                s("MTJhYmM="),
                s("w7xuw68="),
            ],
        ),
        (
            "hex(uuid_blob('7c0e0000-0000-0000-0000-0000000000a1'))",
            [
                s("7C0E00000000000000000000000000A1"),
                None,
                None,
                None,
                None,
            ],
        ),
        ("hex(uuid_blob(t))", [s(""), s(""), s(""), s(""), s("")]),
        (
            "typeof(n)",
            [
                s("integer"),
                s("null"),
                s("integer"),
                s("integer"),
                s("integer"),
            ],
        ),
        (
            "typeof(r)",
            [s("real"), s("null"), s("real"), s("real"), s("null")],
        ),
        (
            "typeof(t)",
            [s("text"), s("null"), s("text"), s("text"), s("text")],
        ),
        (
            "typeof(b)",
            [
                s("integer"),
                s("null"),
                s("integer"),
                s("integer"),
                s("integer"),
            ],
        ),
        (
            "typeof(bin)",
            [s("blob"), s("null"), s("blob"), s("blob"), s("null")],
        ),
        (
            "ifnull(t, 'none')",
            [s("Hello"), s("none"), None, s("12abc"), s("ünï")],
        ),
        (
            "iif(b, 'yes', 'no')",
            [s("yes"), s("no"), s("no"), s("yes"), s("no")],
        ),
        ("instr(t, 'l')", [i(3), n(), i(0), i(0), i(0)]),
        ("json_extract(j, '$.a.b')", [i(5), n(), n(), n(), i(2)]),
        ("json_extract(j, '$.arr[1]')", [i(2), n(), n(), n(), n()]),
        ("j ->> '$.s'", [s("x"), n(), n(), n(), n()]),
        ("j ->> 't'", [i(1), n(), n(), n(), n()]),
        ("j ->> 'a.b'", [i(5), n(), n(), n(), i(2)]),
        ("j -> 'a'", [s("{\"b\":5}"), n(), n(), n(), s("{\"b\":2}")]),
        ("j -> 'a' ->> 'b'", [i(5), n(), n(), n(), i(2)]),
        ("js ->> 'z'", [i(1), n(), n(), n(), n()]),
        ("t ->> 'k'", [n(), n(), s("[1,2]"), n(), n()]),
        ("json_array_length(tags)", [i(2), n(), i(0), i(0), i(2)]),
        ("json_array_length(j, '$.arr')", [i(3), n(), n(), n(), n()]),
        ("json_valid(t)", [i(0), i(0), i(1), i(0), i(0)]),
        ("json_valid(j)", [i(1), i(0), i(1), i(1), i(1)]),
        (
            "json_keys(js)",
            [s("[\"z\",\"a\"]"), n(), n(), n(), s("[]")],
        ),
        (
            "unixepoch(ts)",
            [i(1704164645), n(), i(0), i(1719784799), n()],
        ),
        (
            "unixepoch(ts, 'subsec')",
            [f(1704164645.5), n(), f(0.0), f(1719784799.999), n()],
        ),
        (
            "datetime(ts)",
            [
                s("2024-01-02 03:04:05"),
                n(),
                s("1970-01-01 00:00:00"),
                s("2024-06-30 21:59:59"),
                n(),
            ],
        ),
        (
            "datetime(n, 'unixepoch')",
            [
                s("1970-01-01 00:00:42"),
                n(),
                s("1969-12-31 23:59:53"),
                s("1970-01-01 00:00:00"),
                s("1970-01-01 00:00:03"),
            ],
        ),
        (
            "unixepoch('2024-01-02 03:04:05')",
            [i(1704164645), None, None, None, None],
        ),
        (
            "unixepoch('2024-01-02T05:04:05+02:00')",
            [i(1704164645), None, None, None, None],
        ),
        ("datetime('not a date')", [n(), None, None, None, None]),
        ("CAST(t AS integer)", [i(0), n(), i(0), i(12), i(0)]),
        ("CAST(r AS integer)", [i(2), n(), i(0), i(3), n()]),
        ("CAST(n AS text)", [s("42"), n(), s("-7"), s("0"), s("3")]),
        ("CAST(b AS text)", [s("1"), n(), s("0"), s("1"), s("0")]),
        ("t::real", [f(0.0), n(), f(0.0), f(12.0), f(0.0)]),
        ("CAST(t AS numeric)", [f(0.0), n(), f(0.0), f(12.0), f(0.0)]),
        (
            "hex(CAST(t AS blob))",
            [s("48656C6C6F"), s(""), None, s("3132616263"), None],
        ),
        ("j IS NULL", [i(0), i(1), i(0), i(0), i(0)]),
        ("t IN '[\"Hello\", \"x\"]'", [i(1), n(), i(0), i(0), i(0)]),
        ("n NOT IN '[42, 3]'", [i(0), n(), i(1), i(1), i(0)]),
        ("n IN (42, 3)", [i(1), n(), i(0), i(0), i(1)]),
        ("tags && '[\"y\", \"z\"]'", [i(1), None, i(0), i(0), i(0)]),
        ("'x' IN tags", [i(1), None, i(0), i(0), i(1)]),
    ]
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

fn rows(c: &mut Client, bucket: &str) -> Vec<Value> {
    let mut by_id: Vec<(i64, Value)> = fold_bucket(&ops(c, bucket))
        .into_values()
        .map(|v| (v["id"].as_i64().unwrap(), v))
        .collect();
    by_id.sort_by_key(|(id, _)| *id);
    by_id.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn functions_return_what_powersync_returns() {
    let db = TestDb::new("dialect_fns");
    let mut c = db.connect();
    c.batch_execute(TABLE).unwrap();
    let cases = cases();
    let cols: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(k, (e, _))| format!("{e} AS c{k}"))
        .collect();
    let rules = format!(
        "bucket_definitions:\n  g:\n    data:\n      - {}\n",
        serde_json::to_string(&format!("SELECT id, {} FROM v", cols.join(", "))).unwrap()
    );
    deploy(&mut c, &rules);
    let got = rows(&mut c, "g[]");
    assert_eq!(got.len(), 5, "{got:?}");
    let mut wrong = Vec::new();
    for (k, (expr, want)) in cases.iter().enumerate() {
        for (row, w) in want.iter().enumerate() {
            let Some(w) = w else { continue };
            let g = &got[row][format!("c{k}")];
            if !same(g, w) {
                wrong.push(format!("{expr} on row {}: got {g}, want {w}", row + 1));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn fixed_json_extract_reads_dotted_keys() {
    let db = TestDb::new("dialect_fixed");
    let mut c = db.connect();
    c.batch_execute(TABLE).unwrap();
    deploy(
        &mut c,
        "config:\n  edition: 2\nbucket_definitions:\n  g:\n    data: SELECT id, j ->> 'a.b' AS k, j ->> '$.a.b' AS p FROM v\n",
    );
    let got = rows(&mut c, "g[]");
    assert_eq!(got[4]["k"], json!(1), "the key `a.b`: {}", got[4]);
    assert_eq!(got[4]["p"], json!(2), "the path a → b: {}", got[4]);
}

#[test]
fn bad_values_do_not_stop_a_tick() {
    // Malformed JSON and dates in a text column give NULL, as PowerSync
    // gives no value, instead of failing every tick.
    let db = TestDb::new("dialect_bad");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE d (id int PRIMARY KEY, t text); INSERT INTO d VALUES (1, '{\"a\": 1}');",
    )
    .unwrap();
    deploy(
        &mut c,
        "bucket_definitions:\n  g:\n    data: SELECT id, t ->> 'a' AS a, unixepoch(t) AS e, json_keys(t) AS k FROM d WHERE json_valid(t) OR t IS NOT NULL\n",
    );
    c.query_one(
        "SELECT outpost.define_bucket('tagged', ARRAY['SELECT request.user_id() AS u'], ARRAY['SELECT id FROM d WHERE bucket.u IN t'])",
        &[],
    )
    .unwrap();
    c.batch_execute(
        "INSERT INTO d VALUES (2, '{oops'), (3, '2024-13-45 99:99'), (4, '[oops'), (5, '[\"u1\"]')",
    )
    .unwrap();
    tick(&mut c);
    let got = rows(&mut c, "g[]");
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0]["a"], json!(1));
    assert_eq!(got[1], json!({"id": 2, "a": null, "e": null, "k": null}));
    assert_eq!(got[2], json!({"id": 3, "a": null, "e": null, "k": null}));
    // Array text that is not JSON is an empty array for `bucket.u IN t`.
    assert_eq!(rows(&mut c, "tagged[\"u1\"]"), vec![json!({"id": 5})]);
}

/// A rules file in the style of PowerSync's documentation: OR in a
/// parameter query, json_each over a JWT claim, IN over an array column,
/// request.parameter, _priority, and a global bucket filtered with NOT IN.
const DOCS_RULES: &str = r#"
config:
  edition: 2
bucket_definitions:
  user_lists:
    # Lists a user owns or that are shared with them
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id() OR shared_with = request.user_id()
    data:
      - SELECT * FROM lists WHERE id = bucket.list_id
      - SELECT * FROM todos WHERE list_id = bucket.list_id
  by_tag:
    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags')
    data:
      - SELECT id, title FROM todos WHERE bucket.tag IN tags
  pinned:
    accept_potentially_dangerous_queries: true
    parameters: SELECT request.parameter('list') AS list_id, 0 AS _priority
    data:
      - SELECT id, title AS name FROM todos t WHERE t.list_id = bucket.list_id
  public_lists:
    data:
      - SELECT id, name FROM lists WHERE (category NOT IN '["draft","hidden"]') AND shared_with IS NULL
event_definitions:
  write_hooks:
    payloads:
      - SELECT id FROM todos
"#;

#[test]
fn rules_written_like_powersync_docs_deploy_and_sync() {
    let db = TestDb::new("dialect_docs");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE lists (id text PRIMARY KEY, name text, owner_id text, shared_with text, category text);
         CREATE TABLE todos (id text PRIMARY KEY, list_id text, title text, tags jsonb, created_at timestamptz);
         INSERT INTO lists VALUES ('l1', 'Groceries', 'alice', NULL, 'home'),
                                  ('l2', 'Work', 'bob', 'alice', 'work'),
                                  ('l3', 'Draft', 'bob', NULL, 'draft');
         INSERT INTO todos VALUES ('t1', 'l1', 'milk', '[\"urgent\"]', '2024-01-02 03:04:05.25+01'),
                                  ('t2', 'l2', 'report', '[\"later\", \"urgent\"]', NULL),
                                  ('t3', 'l3', 'sketch', '[]', NULL);",
    )
    .unwrap();
    let problems: Vec<(String, String)> = c
        .query(
            "SELECT level, message FROM outpost.validate_rules($1)",
            &[&DOCS_RULES],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "warning");
    assert!(
        problems[0].1.contains("does not emit events"),
        "{problems:?}"
    );
    deploy(&mut c, DOCS_RULES);

    let alice = request_buckets(
        &mut c,
        &json!({"sub": "alice", "tags": ["urgent"]}),
        &json!({"list": "l3"}),
    );
    assert_eq!(
        alice,
        vec![
            "by_tag[\"urgent\"]",
            "pinned[\"l3\"]",
            "public_lists[]",
            "user_lists[\"l1\"]",
            "user_lists[\"l2\"]",
        ]
    );
    // Without a `list` parameter, bob's `pinned` parameter is NULL: a
    // `null` bucket, as PowerSync gives (empty: `= bucket.list_id`).
    let bob = request_buckets(&mut c, &json!({"sub": "bob"}), &json!({}));
    assert_eq!(
        bob,
        vec![
            "pinned[null]",
            "public_lists[]",
            "user_lists[\"l2\"]",
            "user_lists[\"l3\"]"
        ]
    );
    assert!(rows_by_key(&mut c, "pinned[null]").is_empty());

    let urgent = rows_by_key(&mut c, "by_tag[\"urgent\"]");
    assert_eq!(urgent, vec!["todos/t1", "todos/t2"]);
    let public = rows_by_key(&mut c, "public_lists[]");
    assert_eq!(
        public,
        vec!["lists/l1"],
        "shared and draft lists are filtered out"
    );
    let pinned = fold_bucket(&ops(&mut c, "pinned[\"l3\"]"));
    assert_eq!(
        pinned.values().next().unwrap(),
        &json!({"id": "t3", "name": "sketch"})
    );
    let l1 = fold_bucket(&ops(&mut c, "user_lists[\"l1\"]"));
    let t1 = &l1[&("todos".to_string(), "t1".to_string())];
    assert_eq!(
        t1["created_at"],
        json!("2024-01-02T02:04:05.250000Z"),
        "edition 2 timestamps"
    );

    // The priority set by `_priority` reaches the checkpoint.
    let cp: Value = c
        .query_one(
            "SELECT outpost.sync_checkpoint($1, $2, 'dev')",
            &[&json!({"sub": "alice"}), &json!({"list": "l3"})],
        )
        .unwrap()
        .get(0);
    let pinned = cp["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bucket"] == "pinned[\"l3\"]")
        .unwrap();
    assert_eq!(pinned["priority"], json!(0));

    // Sharing a list with alice later reaches her through the OR branch.
    c.batch_execute("UPDATE lists SET shared_with = 'alice' WHERE id = 'l3'")
        .unwrap();
    tick(&mut c);
    let alice = request_buckets(&mut c, &json!({"sub": "alice"}), &json!({}));
    assert!(
        alice.contains(&"user_lists[\"l3\"]".to_string()),
        "{alice:?}"
    );
}

#[test]
fn json_each_reads_arrays_objects_and_json_text() {
    let db = TestDb::new("dialect_each");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE docs (id text PRIMARY KEY, tag text); INSERT INTO docs VALUES ('d1', 'a');",
    )
    .unwrap();
    deploy(
        &mut c,
        "bucket_definitions:\n  by_tag:\n    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags') WHERE value <> 'skip'\n    data: SELECT id FROM docs WHERE tag = bucket.tag\n",
    );
    for (tags, want) in [
        (json!(["a", "skip", 5]), vec!["by_tag[\"a\"]", "by_tag[5]"]),
        (
            json!({"x": "a", "y": "b"}),
            vec!["by_tag[\"a\"]", "by_tag[\"b\"]"],
        ),
        // `->` gives JSON text, so a string claim is one JSON string: its
        // text is not parsed a second time (PowerSync's json_each(j -> k)).
        (json!("[\"a\"]"), vec!["by_tag[\"[\\\"a\\\"]\"]"]),
        (json!("a"), vec!["by_tag[\"a\"]"]),
        (json!(null), vec![]),
    ] {
        let got = request_buckets(&mut c, &json!({"sub": "u", "tags": tags}), &json!({}));
        assert_eq!(got, want, "tags {tags}");
    }
}

fn rows_by_key(c: &mut Client, bucket: &str) -> Vec<String> {
    fold_bucket(&ops(c, bucket))
        .into_keys()
        .map(|(t, id)| format!("{t}/{id}"))
        .collect()
}

#[test]
fn or_in_data_queries_puts_a_row_in_each_matching_bucket() {
    let db = TestDb::new("dialect_or");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE assets (id text PRIMARY KEY, owner_id text, shared_with text);
         INSERT INTO assets VALUES ('a1', 'u1', 'u2'), ('a2', 'u2', NULL), ('a3', 'u1', 'u1');",
    )
    .unwrap();
    deploy(
        &mut c,
        "bucket_definitions:\n  mine:\n    parameters: SELECT request.user_id() AS user_id\n    data: SELECT id FROM assets WHERE (owner_id = bucket.user_id OR shared_with = bucket.user_id)\n",
    );
    assert_eq!(
        rows_by_key(&mut c, "mine[\"u1\"]"),
        vec!["assets/a1", "assets/a3"]
    );
    assert_eq!(
        rows_by_key(&mut c, "mine[\"u2\"]"),
        vec!["assets/a1", "assets/a2"]
    );
    // a3 matches both branches for u1 and is still one row.
    assert_eq!(ops(&mut c, "mine[\"u1\"]").len(), 2);
    c.batch_execute("UPDATE assets SET shared_with = NULL WHERE id = 'a1'")
        .unwrap();
    tick(&mut c);
    assert_eq!(rows_by_key(&mut c, "mine[\"u2\"]"), vec!["assets/a2"]);
}
