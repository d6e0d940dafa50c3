//! PowerSync's dialect in real Postgres, continued: table parameter queries
//! whose bucket parameters are request values (kept current by the tick),
//! `json_each`'s `key` (a NULL key is a `null` parameter), `define_bucket`
//! under the deployed `config:`, and JSON text written as SQLite writes it.

use outpost_tests::dialect::{bucket_rows as rows, deploy, request_buckets_both_ways as buckets};
use outpost_tests::{tick, TestDb};
use postgres::Client;
use serde_json::{json, Value};

const ADMIN_RULES: &str = r#"
bucket_definitions:
  admin:
    parameters: SELECT request.user_id() AS user_id FROM users WHERE users.id = request.user_id() AND users.is_admin
    data: SELECT id, title FROM notes WHERE owner_id = bucket.user_id
  org_region:
    parameters:
      - SELECT token_parameters.region AS region, org_id AS org FROM users WHERE id = request.user_id()
    data: SELECT id, title FROM notes WHERE region = bucket.region AND org_id = bucket.org
"#;

#[test]
fn table_parameter_queries_output_request_values() {
    let db = TestDb::new("dparams_req");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE users (id text PRIMARY KEY, is_admin bool, org_id int);
         CREATE TABLE notes (id text PRIMARY KEY, owner_id text, org_id int, region text, title text);
         INSERT INTO users VALUES ('alice', true, 7), ('bob', false, 8);
         INSERT INTO notes VALUES ('n1', 'alice', 7, 'eu', 'a'), ('n2', 'bob', 7, 'eu', 'b'),
                                  ('n3', 'bob', 8, 'us', 'c');",
    )
    .unwrap();
    deploy(&mut c, ADMIN_RULES);
    let alice = json!({"sub": "alice", "parameters": {"region": "eu"}});
    assert_eq!(
        buckets(&mut c, alice.clone(), json!({})),
        vec!["admin[\"alice\"]", "org_region[\"eu\",7]"]
    );
    assert_eq!(
        rows(&mut c, "org_region[\"eu\",7]"),
        vec![
            json!({"id": "n1", "title": "a"}),
            json!({"id": "n2", "title": "b"})
        ]
    );
    // bob is no admin; a missing (NULL) token value is `null` in the
    // bucket id, as PowerSync writes it.
    assert_eq!(
        buckets(&mut c, json!({"sub": "bob"}), json!({})),
        vec!["org_region[null,8]"]
    );
    assert_eq!(
        buckets(
            &mut c,
            json!({"sub": "bob", "parameters": {"region": "us"}}),
            json!({})
        ),
        vec!["org_region[\"us\",8]"]
    );

    // The tick keeps the lookups current: bob becomes an admin, alice
    // stops being one and moves to org 8.
    c.batch_execute(
        "UPDATE users SET is_admin = true WHERE id = 'bob';
         UPDATE users SET is_admin = false, org_id = 8 WHERE id = 'alice';",
    )
    .unwrap();
    tick(&mut c);
    assert_eq!(
        buckets(&mut c, alice, json!({})),
        vec!["org_region[\"eu\",8]"]
    );
    assert_eq!(
        buckets(&mut c, json!({"sub": "bob"}), json!({})),
        vec!["admin[\"bob\"]", "org_region[null,8]"]
    );
    let mut bobs: Vec<String> = rows(&mut c, "admin[\"bob\"]")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    bobs.sort();
    assert_eq!(bobs, vec!["n2", "n3"]);
    c.batch_execute("DELETE FROM users WHERE id = 'bob'")
        .unwrap();
    tick(&mut c);
    assert_eq!(
        buckets(&mut c, json!({"sub": "bob"}), json!({})),
        Vec::<String>::new()
    );
}

#[test]
fn json_each_key_is_an_index_or_a_member_name() {
    let db = TestDb::new("dparams_key");
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE docs (id text PRIMARY KEY, slot text, tag text)")
        .unwrap();
    deploy(
        &mut c,
        "bucket_definitions:\n  by_slot:\n    parameters: SELECT key AS slot, e.value AS tag FROM json_each(request.jwt() -> 'tags') AS e WHERE e.key <> 'skip'\n    data: SELECT id FROM docs WHERE slot = bucket.slot AND tag = bucket.tag\n",
    );
    for (tags, want) in [
        (
            json!(["a", "b"]),
            vec!["by_slot[0,\"a\"]", "by_slot[1,\"b\"]"],
        ),
        (json!({"x": "a", "skip": "b"}), vec!["by_slot[\"x\",\"a\"]"]),
        // A scalar's key is NULL, which `<> 'skip'` filters out; `->` of a
        // string claim is one JSON string (a scalar), as in PowerSync.
        (json!("[\"a\"]"), vec![]),
        (json!(5), vec![]),
    ] {
        let got = buckets(&mut c, json!({"sub": "u", "tags": tags}), json!({}));
        assert_eq!(got, want, "tags {tags}");
    }
    // Without the filter the NULL key is a parameter value: `null`.
    deploy(
        &mut c,
        "bucket_definitions:\n  by_slot:\n    parameters: SELECT key AS slot, e.value AS tag FROM json_each(request.jwt() -> 'tags') AS e\n    data: SELECT id FROM docs WHERE slot = bucket.slot AND tag = bucket.tag\n",
    );
    assert_eq!(
        buckets(&mut c, json!({"sub": "u", "tags": 5}), json!({})),
        vec!["by_slot[null,5]"]
    );
}

fn rules_yaml(c: &mut Client) -> String {
    c.query_one("SELECT outpost.rules_yaml()", &[])
        .unwrap()
        .get(0)
}

fn compiled(c: &mut Client) -> Vec<Value> {
    c.query(
        "SELECT compiled FROM outpost.bucket_defs ORDER BY name",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn define_bucket_uses_the_deployed_edition() {
    let db = TestDb::new("dparams_edition");
    let mut c = db.connect();
    c.batch_execute(
        "SET TIME ZONE 'Europe/Berlin';
         CREATE TABLE ev (id text PRIMARY KEY, at timestamptz, j jsonb);
         INSERT INTO ev VALUES ('e1', '2024-01-02 03:04:05.5+00', '{\"a.b\": 1, \"a\": {\"b\": 2}}');",
    )
    .unwrap();
    deploy(
        &mut c,
        "config:\n  edition: 2\nbucket_definitions:\n  a:\n    data: SELECT id, at FROM ev\n",
    );
    c.query_one(
        "SELECT outpost.define_bucket('b', '{}', ARRAY['SELECT id, at, j ->> ''a.b'' AS k FROM ev'])",
        &[],
    )
    .unwrap();
    // Edition 2's defaults: ISO timestamps, `a.b` is one key.
    assert_eq!(
        rows(&mut c, "b[]"),
        vec![json!({"id": "e1", "at": "2024-01-02T03:04:05.500000Z", "k": 1})]
    );
    let yaml = rules_yaml(&mut c);
    assert!(yaml.contains("edition: 2"), "{yaml}");
    // Deploying rules_yaml() gives the same definitions back.
    let before = compiled(&mut c);
    deploy(&mut c, &yaml);
    assert_eq!(compiled(&mut c), before, "{yaml}");
    assert_eq!(
        rows(&mut c, "b[]"),
        vec![json!({"id": "e1", "at": "2024-01-02T03:04:05.500000Z", "k": 1})]
    );
}

#[test]
fn json_text_comes_out_as_sqlite_writes_it() {
    let db = TestDb::new("dparams_json");
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE v (id int PRIMARY KEY, j jsonb, js json, t text);
           INSERT INTO v VALUES
            (1, '{"a": {"z": [1, {"y": "p q"}], "b": null}, "s": "x, y: z", "n": null}',
                '{ "a" : { "z" : [1, {"y": "p q"}], "b": null }, "s": "x" }',
                '{"a": {"z": 1, "b": [true, "a\"b"]}}'),
            (2, '[{"k": [1, 2]}, [3, [4]]]', '[ {"k": [1, 2]} ]', 'not json');"#,
    )
    .unwrap();
    deploy(
        &mut c,
        r#"bucket_definitions:
  g:
    data: SELECT id, j -> 'a' AS ja, j -> '$.a.z' AS jz, j ->> 'a' AS jt, j -> 0 AS j0, j -> 's' AS js_, j -> 'n' AS jn, js -> 'a' AS sa, js ->> 'a' AS st, js -> 0 AS s0, t -> 'a' AS ta, t ->> '$.a.b' AS tb, length(j -> 'a') AS len, CAST(j -> 'a' AS text) AS txt FROM v
"#,
    );
    // As a bucket parameter, `->` is JSON text too (`->>` the value).
    c.query_one(
        "SELECT outpost.define_bucket('p', ARRAY['SELECT request.jwt() -> ''org'' AS o, request.jwt() ->> ''org'' AS v'], ARRAY['SELECT id FROM v WHERE t = bucket.o AND t = bucket.v'])",
        &[],
    )
    .unwrap();
    assert_eq!(
        buckets(&mut c, json!({"sub": "u", "org": "o1"}), json!({})),
        vec!["g[]", "p[\"\\\"o1\\\"\",\"o1\"]"]
    );
    let mut got = rows(&mut c, "g[]");
    got.sort_by_key(|r| r["id"].as_i64());
    // jsonb sorts keys (as the text PowerSync replicates); json and text
    // keep their order; no whitespace outside strings.
    assert_eq!(
        got[0],
        json!({
            "id": 1,
            "ja": "{\"b\":null,\"z\":[1,{\"y\":\"p q\"}]}",
            "jz": "[1,{\"y\":\"p q\"}]",
            "jt": "{\"b\":null,\"z\":[1,{\"y\":\"p q\"}]}",
            "j0": null,
            "js_": "\"x, y: z\"",
            "jn": null,
            "sa": "{\"z\":[1,{\"y\":\"p q\"}],\"b\":null}",
            "st": "{\"z\":[1,{\"y\":\"p q\"}],\"b\":null}",
            "s0": null,
            "ta": "{\"z\":1,\"b\":[true,\"a\\\"b\"]}",
            "tb": "[true,\"a\\\"b\"]",
            "len": 30,
            "txt": "{\"b\":null,\"z\":[1,{\"y\":\"p q\"}]}",
        })
    );
    assert_eq!(
        got[1],
        json!({
            "id": 2, "ja": null, "jz": null, "jt": null,
            "j0": "{\"k\":[1,2]}", "js_": null, "jn": null,
            "sa": null, "st": null, "s0": "{\"k\":[1,2]}",
            "ta": null, "tb": null, "len": null, "txt": null,
        })
    );
}

#[test]
fn a_table_query_without_a_request_match_reaches_every_request() {
    let db = TestDb::new("dparams_all");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE cats (id text PRIMARY KEY, public bool);
         CREATE TABLE items (id text PRIMARY KEY, cat text);
         INSERT INTO cats VALUES ('c1', true), ('c2', false);
         INSERT INTO items VALUES ('i1', 'c1'), ('i2', 'c2');",
    )
    .unwrap();
    deploy(
        &mut c,
        "bucket_definitions:\n  cat:\n    parameters: SELECT id AS cat FROM cats WHERE public AND request.jwt() ->> 'role' = 'reader'\n    data: SELECT id FROM items WHERE cat = bucket.cat\n",
    );
    let reader = json!({"sub": "u", "role": "reader"});
    assert_eq!(
        buckets(&mut c, reader.clone(), json!({})),
        vec!["cat[\"c1\"]"]
    );
    assert_eq!(
        buckets(&mut c, json!({"sub": "u"}), json!({})),
        Vec::<String>::new()
    );
    c.batch_execute("UPDATE cats SET public = true WHERE id = 'c2'")
        .unwrap();
    tick(&mut c);
    assert_eq!(
        buckets(&mut c, reader, json!({})),
        vec!["cat[\"c1\"]", "cat[\"c2\"]"]
    );
}
