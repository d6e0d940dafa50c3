//! Values as PowerSync sends them: one table with a column of each common
//! Postgres type, synced through `SELECT *` from a session whose time zone
//! is not UTC, compared value by value with PowerSync's type mapping
//! (booleans 1/0, numeric as text, timestamptz in UTC, json as text, arrays
//! as JSON text, …). Differences kept on purpose are listed in
//! docs/rules-dialect.md.

use outpost_tests::{fold_bucket, ops, TestDb};
use serde_json::{json, Value};

const TABLE: &str = r#"
SET TIME ZONE 'Asia/Kolkata';
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE golden (
  id uuid PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8,
  t text, vc varchar(10), d date, tm time, ts timestamp, tstz timestamptz, iv interval,
  js json, jb jsonb, ia int[], ta text[], m mood, nothing text, _hidden text);
INSERT INTO golden VALUES (
  '7C0E0000-0000-0000-0000-0000000000A1', true, 7, -8, 9007199254740993, 12.50, 1.5, 0.1,
  'héllo', 'v', '2024-01-02', '12:13:14.5', '2024-01-02 03:04:05.123',
  '2024-01-02 08:34:05.123+05:30', '1 day 02:03:04', '{"b": 1,  "a": [1]}',
  '{"b": 1, "a": [1]}', '{1,2}', '{a,NULL,"x y"}', 'happy', NULL, 'skipped');
"#;

fn synced(rules: &str) -> Value {
    let db = TestDb::new("golden");
    let mut c = db.connect();
    c.batch_execute(TABLE).unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&rules])
        .unwrap_or_else(|e| panic!("{e:?}"));
    let rows = fold_bucket(&ops(&mut c, "g[]"));
    assert_eq!(rows.len(), 1);
    rows.into_values().next().unwrap()
}

fn compare(got: &Value, want: &Value) {
    let (g, w) = (got.as_object().unwrap(), want.as_object().unwrap());
    let mut wrong = Vec::new();
    for (k, wv) in w {
        match g.get(k) {
            Some(gv) if gv == wv => {}
            other => wrong.push(format!("{k}: got {other:?}, want {wv}")),
        }
    }
    for k in g.keys().filter(|k| !w.contains_key(*k)) {
        wrong.push(format!("{k}: not expected"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn common() -> Value {
    json!({
        "id": "7c0e0000-0000-0000-0000-0000000000a1",
        "b": 1, "i2": 7, "i4": -8, "i8": 9007199254740993_u64,
        "num": "12.50", "f4": 1.5, "f8": 0.1,
        "t": "héllo", "vc": "v", "d": "2024-01-02",
        "iv": "1 day 02:03:04",
        "js": "{\"b\": 1,  \"a\": [1]}",
        "jb": "{\"a\": [1], \"b\": 1}",
        "ia": "[1,2]", "ta": "[\"a\",null,\"x y\"]",
        "m": "happy", "nothing": null,
    })
}

/// `SELECT *` under `rules`, with the time columns as that edition writes them.
fn star_matches(rules: &str, tm: &str, ts: &str, tstz: &str) {
    let got = synced(rules);
    let mut want = common();
    let w = want.as_object_mut().unwrap();
    for (k, v) in [("tm", tm), ("ts", ts), ("tstz", tstz)] {
        w.insert(k.into(), json!(v));
    }
    compare(&got, &want);
}

#[test]
fn select_star_values_match_powersync_legacy_edition() {
    star_matches(
        "bucket_definitions:\n  g:\n    data: SELECT * FROM golden\n",
        "12:13:14.5",
        "2024-01-02 03:04:05.123",
        "2024-01-02 03:04:05.123Z",
    );
}

#[test]
fn select_star_values_match_powersync_edition_2() {
    star_matches(
        "config:\n  edition: 2\nbucket_definitions:\n  g:\n    data: SELECT * FROM golden\n",
        "12:13:14.500000",
        "2024-01-02T03:04:05.123000",
        "2024-01-02T03:04:05.123000Z",
    );
}

#[test]
fn timestamp_max_precision_trims_fractions() {
    let got = synced(
        "config:\n  edition: 2\n  timestamp_max_precision: milliseconds\nbucket_definitions:\n  g:\n    data: SELECT id, ts, tstz, tm FROM golden\n",
    );
    assert_eq!(got["ts"], json!("2024-01-02T03:04:05.123"));
    assert_eq!(got["tstz"], json!("2024-01-02T03:04:05.123Z"));
    assert_eq!(got["tm"], json!("12:13:14.500"));
    let got = synced(
        "config:\n  edition: 2\n  timestamp_max_precision: seconds\nbucket_definitions:\n  g:\n    data: SELECT id, tstz FROM golden\n",
    );
    assert_eq!(got["tstz"], json!("2024-01-02T03:04:05Z"));
}

#[test]
fn bytea_is_refused_by_star_and_synced_through_base64() {
    let db = TestDb::new("golden_bytea");
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE bin (id int PRIMARY KEY, data bytea); INSERT INTO bin VALUES (1, '\\x00ff10');")
        .unwrap();
    let err = c
        .query_one(
            "SELECT outpost.deploy_rules($1)",
            &[&"bucket_definitions:\n  g:\n    data: SELECT * FROM bin\n"],
        )
        .unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("column \"data\" is bytea"), "{msg}");
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  g:\n    data: SELECT id, base64(data) AS data, hex(data) AS h FROM bin\n"],
    )
    .unwrap();
    let rows = fold_bucket(&ops(&mut c, "g[]"));
    assert_eq!(
        rows.into_values().next().unwrap(),
        json!({"id": 1, "data": "AP8Q", "h": "00FF10"})
    );
}
