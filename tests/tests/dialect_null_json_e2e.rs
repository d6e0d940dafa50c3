//! PowerSync's dialect in real Postgres, continued: `->` is JSON text
//! wherever it is used (comparisons, `IN`, functions, lookups and bucket
//! parameters compare the text, as SQLite does), and a NULL bucket parameter
//! is `null` in the bucket id (PowerSync's bucket_definitions and edition-2
//! streams; edition-3 streams give no bucket). Each case here differs from
//! what comparing jsonb or dropping NULL parameters gave.

use outpost_tests::dialect::{bucket_rows as rows, deploy, request_buckets_both_ways as buckets};
use outpost_tests::{ops, tick, TestDb};
use serde_json::json;

const ARROW_TABLE: &str = r#"
CREATE TABLE a (id int PRIMARY KEY, j jsonb, js json, t text);
INSERT INTO a VALUES
 (1, '{"o": {"c": 1, "b": 5}, "n": 1.0, "s": "x", "q": "say \"hi\""}',
     '{"o": {"z": {"y": 1, "x": 2}}, "n": 2.0, "s": "x"}',
     '{"z": 1, "a": [1, 2]}'),
 (2, NULL, NULL, 'plain');
"#;

#[test]
fn arrow_compares_its_json_text() {
    // `->` is SQLite's JSON text wherever it is used: each of these is
    // true or false as in SQLite (the comment gives what comparing jsonb
    // would say, the behaviour these replace).
    let db = TestDb::new("dparams_arrow");
    let mut c = db.connect();
    c.batch_execute(ARROW_TABLE).unwrap();
    let cases: &[(&str, [Option<i64>; 2])] = &[
        // jsonb's text sorts keys (shorter first, then bytewise).
        (r#"j -> 'o' = '{"b":5,"c":1}'"#, [Some(1), None]),
        // key order: jsonb would say equal
        (r#"j -> 'o' = '{"c":1,"b":5}'"#, [Some(0), None]),
        // whitespace: jsonb would say equal
        (r#"j -> 'o' = '{"b": 5, "c": 1}'"#, [Some(0), None]),
        // numbers: 1.0 is not 1 as text
        ("j -> 'n' = '1.0'", [Some(1), None]),
        ("j -> 'n' = '1'", [Some(0), None]),
        ("js -> 'n' = '2'", [Some(0), None]),
        // strings keep their quotes; `'x'` is no JSON, jsonb would raise
        (r#"j -> 's' = '"x"'"#, [Some(1), None]),
        ("j -> 's' = 'x'", [Some(0), None]),
        (r#"j -> 'q' = '"say \"hi\""'"#, [Some(1), None]),
        (r#"js -> 's' IN ('"x"', 'y')"#, [Some(1), None]),
        (r#"js -> 's' NOT IN ('x')"#, [Some(1), None]),
        ("j -> 'n' IN ('1')", [Some(0), None]),
        // a json column and text keep their key order, through a chain
        (r#"js -> 'o' -> 'z' = '{"y":1,"x":2}'"#, [Some(1), None]),
        (r#"t -> '$' = '{"z":1,"a":[1,2]}'"#, [Some(1), None]),
        ("t -> 'a' = '[1,2]'", [Some(1), None]),
        ("length(js -> 'o')", [Some(19), None]),
        (r#"upper(j -> 's') = '"X"'"#, [Some(1), None]),
        (r#"instr(j -> 'o', '"c":1')"#, [Some(8), None]),
        ("j -> 'missing' IS NULL", [Some(1), Some(1)]),
        // `->>` of an object or array is that JSON text too; a string its value
        (r#"j ->> 'o' = '{"b":5,"c":1}'"#, [Some(1), None]),
        (r#"js ->> 'o' = '{"z":{"y":1,"x":2}}'"#, [Some(1), None]),
        ("t ->> 'a' = '[1,2]'", [Some(1), None]),
        ("j ->> 's' = 'x'", [Some(1), None]),
    ];
    let cols: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(k, (e, _))| format!("{e} AS c{k}"))
        .collect();
    let rules = format!(
        "bucket_definitions:\n  g:\n    data:\n      - {}\n  quoted:\n    data:\n      - {}\n  bare:\n    data:\n      - {}\n",
        serde_json::to_string(&format!("SELECT id, {} FROM a", cols.join(", "))).unwrap(),
        serde_json::to_string(r#"SELECT id FROM a WHERE j -> 's' = '"x"'"#).unwrap(),
        serde_json::to_string("SELECT id FROM a WHERE j -> 's' = 'x' OR t -> 'a' = '[1, 2]'").unwrap(),
    );
    deploy(&mut c, &rules);
    let mut got = rows(&mut c, "g[]");
    got.sort_by_key(|r| r["id"].as_i64());
    let mut wrong = Vec::new();
    for (k, (e, want)) in cases.iter().enumerate() {
        for (row, w) in want.iter().enumerate() {
            let Some(w) = w else { continue };
            let g = &got[row][format!("c{k}")];
            if g != &json!(w) {
                wrong.push(format!("{e} on row {}: got {g}, want {w}", row + 1));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // In a data query's WHERE: only the text match selects the row.
    assert_eq!(rows(&mut c, "quoted[]"), vec![json!({"id": 1})]);
    assert!(rows(&mut c, "bare[]").is_empty());
}

#[test]
fn arrow_bucket_parameters_and_lookups_are_json_text() {
    let db = TestDb::new("dparams_arrow_p");
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE docs (id text PRIMARY KEY, meta jsonb);
           CREATE TABLE orgs (id text PRIMARY KEY, info json);
           INSERT INTO docs VALUES ('d1', '{"org": "o1"}'), ('d2', '{"org": "o2"}');
           INSERT INTO orgs VALUES ('o1', '{"admin": "alice"}'), ('o2', '{"admin": "bob"}');"#,
    )
    .unwrap();
    deploy(
        &mut c,
        r#"bucket_definitions:
  by_org:
    parameters: SELECT request.jwt() -> 'org' AS org
    data: SELECT id FROM docs WHERE meta -> 'org' = bucket.org
  admin_of:
    parameters: SELECT id AS org FROM orgs WHERE info -> 'admin' = request.jwt() -> 'name'
    data: SELECT id FROM docs WHERE meta ->> 'org' = bucket.org
  role:
    parameters: SELECT request.user_id() AS u WHERE request.jwt() -> 'role' = '"admin"'
    data: SELECT id FROM docs WHERE id = bucket.u
"#,
    );
    // The bucket parameter is the text `"o1"` (quotes included), in the
    // request's bucket id and in the data rows' alike.
    let alice = json!({"sub": "d1", "org": "o1", "name": "alice", "role": "admin"});
    assert_eq!(
        buckets(&mut c, alice, json!({})),
        vec!["admin_of[\"o1\"]", "by_org[\"\\\"o1\\\"\"]", "role[\"d1\"]"]
    );
    assert_eq!(
        rows(&mut c, "by_org[\"\\\"o1\\\"\"]"),
        vec![json!({"id": "d1"})]
    );
    assert_eq!(rows(&mut c, "admin_of[\"o1\"]"), vec![json!({"id": "d1"})]);
    // `"admin"` written with a space is other text.
    let spaced = json!({"sub": "d1", "org": "o2", "name": "bob", "role": " \"admin\""});
    assert_eq!(
        buckets(&mut c, spaced, json!({})),
        vec!["admin_of[\"o2\"]", "by_org[\"\\\"o2\\\"\"]"]
    );
}

#[test]
fn a_null_bucket_parameter_is_null_in_the_bucket_id() {
    // PowerSync's rule (sync-rules' parameter queries and bucket id
    // serialization): a NULL parameter value is `null` in the bucket id; a
    // data query's `= bucket.p` never matches a NULL column, so that bucket
    // holds only rows an `IN` puts there (an array element that is null).
    let db = TestDb::new("dparams_null");
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE users (id text PRIMARY KEY, org_id text, email text);
           CREATE TABLE docs (id text PRIMARY KEY, org_id text, owner text, tags jsonb);
           INSERT INTO users VALUES ('alice', 'o1', 'a@x'), ('bob', NULL, NULL);
           INSERT INTO docs VALUES ('d1', 'o1', 'alice', '["a"]'), ('d2', NULL, 'bob', '[null, "a"]'),
                                   ('d3', NULL, NULL, NULL);"#,
    )
    .unwrap();
    deploy(
        &mut c,
        r#"config:
  edition: 2
bucket_definitions:
  by_claim:
    parameters: SELECT request.jwt() ->> 'org' AS org, request.user_id() AS u
    data: SELECT id FROM docs WHERE org_id = bucket.org AND owner = bucket.u
  user_org:
    parameters: SELECT org_id AS org FROM users WHERE id = request.user_id()
    data: SELECT id FROM docs WHERE org_id = bucket.org
  by_email:
    parameters: SELECT id AS u FROM users WHERE email = request.jwt() ->> 'email'
    data: SELECT id FROM docs WHERE owner = bucket.u
  by_tag:
    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags')
    data: SELECT id FROM docs WHERE bucket.tag IN tags
"#,
    );
    // bob: no org claim, a NULL org_id, no email; a null tag.
    let bob = json!({"sub": "bob", "tags": [null]});
    assert_eq!(
        buckets(&mut c, bob, json!({})),
        vec!["by_claim[null,\"bob\"]", "by_tag[null]", "user_org[null]"]
    );
    // `= bucket.p` does not match NULL columns: d2 and d3 stay out.
    assert!(ops(&mut c, "by_claim[null,\"bob\"]").is_empty());
    assert!(ops(&mut c, "user_org[null]").is_empty());
    // The null element of d2's tags is a bucket value like any other.
    assert_eq!(rows(&mut c, "by_tag[null]"), vec![json!({"id": "d2"})]);
    // A NULL request value finds no row through `=` (bob's NULL email
    // does not match it); a token without `sub` is a `null` user id.
    assert_eq!(
        buckets(&mut c, json!({"email": null}), json!({})),
        vec!["by_claim[null,null]"]
    );
    assert_eq!(
        buckets(
            &mut c,
            json!({"sub": "alice", "org": "o1", "email": "a@x"}),
            json!({})
        ),
        vec![
            "by_claim[\"o1\",\"alice\"]",
            "by_email[\"alice\"]",
            "user_org[\"o1\"]"
        ]
    );
    // The tick keeps it current: alice's org becomes NULL.
    c.batch_execute("UPDATE users SET org_id = NULL WHERE id = 'alice'")
        .unwrap();
    tick(&mut c);
    assert!(
        buckets(&mut c, json!({"sub": "alice"}), json!({})).contains(&"user_org[null]".to_string())
    );

    // Legacy rules: json_each gives a JSON null as the text `null`.
    deploy(
        &mut c,
        "bucket_definitions:\n  by_tag:\n    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags')\n    data: SELECT id FROM docs WHERE bucket.tag IN tags\n",
    );
    assert_eq!(
        buckets(
            &mut c,
            json!({"sub": "bob", "tags": [null, true]}),
            json!({})
        ),
        vec!["by_tag[\"null\"]", "by_tag[1]"]
    );
}

#[test]
fn a_null_stream_parameter_follows_the_edition() {
    // Edition 2 streams are PowerSync's legacy stream evaluator: NULL is a
    // bucket value, and `col IN (SELECT …)` puts NULL columns in that
    // bucket (a JOIN, Outpost's, matches with `=`). Edition 3's compiler
    // skips NULL parameters: no bucket.
    let db = TestDb::new("dparams_null_streams");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE users (id text PRIMARY KEY, org_id text);
         CREATE TABLE docs (id text PRIMARY KEY, org_id text);
         INSERT INTO users VALUES ('alice', 'o1'), ('bob', NULL);
         INSERT INTO docs VALUES ('d1', 'o1'), ('d2', NULL);",
    )
    .unwrap();
    let streams = |edition: i64| {
        format!(
            "config:\n  edition: {edition}\nstreams:\n  by_claim:\n    auto_subscribe: true\n    query: SELECT * FROM docs WHERE org_id = auth.parameter('org')\n  in_sub:\n    auto_subscribe: true\n    query: SELECT * FROM docs WHERE org_id IN (SELECT org_id FROM users WHERE id = auth.user_id())\n  joined:\n    auto_subscribe: true\n    query: SELECT docs.* FROM docs JOIN users ON docs.org_id = users.org_id WHERE users.id = auth.user_id()\n"
        )
    };
    deploy(&mut c, &streams(2));
    let bob = json!({"sub": "bob"});
    assert_eq!(
        buckets(&mut c, bob.clone(), json!({})),
        vec!["by_claim|0[null]", "in_sub|0[null]", "joined|0[null]"]
    );
    assert!(ops(&mut c, "by_claim|0[null]").is_empty());
    assert_eq!(
        rows(&mut c, "in_sub|0[null]"),
        vec![json!({"id": "d2", "org_id": null})]
    );
    assert!(ops(&mut c, "joined|0[null]").is_empty());
    assert_eq!(
        buckets(&mut c, json!({"sub": "alice", "org": "o1"}), json!({})),
        vec!["by_claim|0[\"o1\"]", "in_sub|0[\"o1\"]", "joined|0[\"o1\"]"]
    );

    deploy(&mut c, &streams(3));
    assert_eq!(buckets(&mut c, bob, json!({})), Vec::<String>::new());
    assert!(rows(&mut c, "in_sub|0[null]").is_empty());
}
