//! PowerSync's values inside expressions and bucket ids, in real Postgres:
//! `||` joins SQLite's text of each side (booleans `1`/`0`, timestamps in
//! PowerSync's format, json its text), and a bucket parameter taken from a
//! boolean, timestamp, numeric or json column is the value row data has
//! (`[1]`, `["2024-01-02 03:04:05.5Z"]`), on the data side and the
//! request side alike. Each case differs from what Postgres' `||` and
//! `to_jsonb` gave.

use outpost_tests::dialect::{bucket_rows as rows, deploy, request_buckets};
use outpost_tests::{tick, TestDb};
use serde_json::json;

#[test]
fn concat_joins_sqlite_text() {
    let db = TestDb::new("dvalues_concat");
    let mut c = db.connect();
    // A non-UTC session: timestamptz text must still be PowerSync's UTC.
    c.batch_execute(
        r#"SET TimeZone = 'America/New_York';
           CREATE TABLE v (id int PRIMARY KEY, b bool, n int, r float8, p numeric,
                           ts timestamptz, t text, j jsonb, arr int[]);
           INSERT INTO v VALUES
            (1, true, 42, 2.5, 12.50, '2024-01-02 03:04:05.5+00', 'a', '{"a": 1}', '{1,2}'),
            (2, false, 7, 1.0, 0, '2024-06-30 23:59:59+02', NULL, '[1]', '{}'),
            (3, NULL, NULL, NULL, NULL, NULL, 'c', NULL, NULL);"#,
    )
    .unwrap();
    deploy(
        &mut c,
        r#"bucket_definitions:
  g:
    data:
      - SELECT id, b || 'x' AS bx, 'x' || b AS xb, n || 7 AS n7, r || '' AS rt, 2.5 || 'x' AS lit,
               p || '' AS pt, ts || '' AS tt, t || b AS tb, j || j AS jj, arr || '' AS at,
               b || n || t AS chain, upper(b || 'y') AS up FROM v
"#,
    );
    tick(&mut c);
    let got = rows(&mut c, "g[]");
    let want = vec![
        json!({"id": 1, "bx": "1x", "xb": "x1", "n7": "427", "rt": "2.5", "lit": "2.5x",
               "pt": "12.50", "tt": "2024-01-02 03:04:05.5Z", "tb": "a1",
               "jj": "{\"a\": 1}{\"a\": 1}", "at": "[1,2]", "chain": "142a", "up": "1Y"}),
        json!({"id": 2, "bx": "0x", "xb": "x0", "n7": "77", "rt": "1", "lit": "2.5x",
               "pt": "0", "tt": "2024-06-30 21:59:59Z", "tb": null,
               "jj": "[1][1]", "at": "[]", "chain": null, "up": "0Y"}),
        json!({"id": 3, "bx": null, "xb": null, "n7": null, "rt": null, "lit": "2.5x",
               "pt": null, "tt": null, "tb": null, "jj": null, "at": null, "chain": null,
               "up": null}),
    ];
    assert_eq!(got, want);
}

const PARAM_TABLES: &str = r#"
SET TimeZone = 'Asia/Tokyo';
CREATE TABLE users (id text PRIMARY KEY, admin bool, since timestamptz, tier numeric, prefs jsonb);
CREATE TABLE docs (id text PRIMARY KEY, flag bool, at timestamptz, tier numeric, prefs jsonb);
INSERT INTO users VALUES ('alice', true, '2024-01-02 03:04:05.5+00', 12.50, '{"a": 1}');
INSERT INTO docs VALUES ('d1', true, '2024-01-02 03:04:05.5+00', 12.50, '{"a": 1}'),
                        ('d2', false, '2024-01-02 03:04:05+00', 3, '[]');
"#;

const PARAM_RULES: &str = r#"bucket_definitions:
  by_flag:
    parameters: SELECT admin AS f FROM users WHERE id = request.user_id()
    data: SELECT id FROM docs WHERE flag = bucket.f
  by_claim:
    parameters: SELECT request.jwt() ->> 'admin' AS f
    data: SELECT id FROM docs WHERE flag = bucket.f
  by_time:
    parameters: SELECT since AS t FROM users WHERE id = request.user_id()
    data: SELECT id FROM docs WHERE at = bucket.t
  by_tier:
    parameters: SELECT tier AS t, prefs AS p FROM users WHERE id = request.user_id()
    data: SELECT id FROM docs WHERE tier = bucket.t AND prefs = bucket.p
  with_request:
    parameters: SELECT admin AS f, request.user_id() AS u FROM users WHERE users.since IS NOT NULL
    data: SELECT id FROM docs WHERE flag = bucket.f AND id = bucket.u
"#;

#[test]
fn bucket_parameters_are_the_row_values() {
    let db = TestDb::new("dvalues_params");
    let mut c = db.connect();
    c.batch_execute(PARAM_TABLES).unwrap();
    deploy(&mut c, PARAM_RULES);
    tick(&mut c);
    let alice = json!({"sub": "alice", "admin": true});
    assert_eq!(
        request_buckets(&mut c, &alice, &json!({})),
        vec![
            "by_claim[1]",
            "by_flag[1]",
            "by_tier[\"12.50\",\"{\\\"a\\\": 1}\"]",
            "by_time[\"2024-01-02 03:04:05.5Z\"]",
            "with_request[1,\"alice\"]",
        ]
    );
    // The data side writes the same ids: each bucket holds its rows.
    for b in [
        "by_claim[1]",
        "by_flag[1]",
        "by_time[\"2024-01-02 03:04:05.5Z\"]",
    ] {
        assert_eq!(rows(&mut c, b), vec![json!({"id": "d1"})], "{b}");
    }
    assert_eq!(
        rows(&mut c, "by_tier[\"12.50\",\"{\\\"a\\\": 1}\"]"),
        vec![json!({"id": "d1"})]
    );
    assert_eq!(rows(&mut c, "by_flag[0]"), vec![json!({"id": "d2"})]);
    assert_eq!(
        rows(&mut c, "by_time[\"2024-01-02 03:04:05Z\"]"),
        vec![json!({"id": "d2"})]
    );
    // timestamps_iso8601 (edition 2) writes the ISO text, as row values do.
    deploy(&mut c, &format!("config:\n  edition: 2\n{PARAM_RULES}"));
    tick(&mut c);
    let got = request_buckets(&mut c, &alice, &json!({}));
    assert!(
        got.contains(&"by_time[\"2024-01-02T03:04:05.500000Z\"]".to_string()),
        "{got:?}"
    );
    assert_eq!(
        rows(&mut c, "by_time[\"2024-01-02T03:04:05.500000Z\"]"),
        vec![json!({"id": "d1"})]
    );
}
