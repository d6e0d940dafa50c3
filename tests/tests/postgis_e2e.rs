//! PowerSync's geometry functions (`st_asgeojson`, `st_astext`, `st_x`,
//! `st_y`) on real PostGIS columns, geometry and geography: deployed,
//! ticked, and the bucket's values compared with what PowerSync returns.
//!
//! `scripts/setup.sh` installs PostGIS for Postgres 15 (Debian's package);
//! the wheels of 16 and 18 have none, so there the test says so and stops.
//! On 15 a missing PostGIS is a failure, not a skip.

use outpost_tests::{fold_bucket, ops, TestDb};
use serde_json::{json, Value};

#[test]
fn geometry_functions_return_what_powersync_returns() {
    let db = TestDb::new("postgis_fns");
    let mut c = db.connect();
    let available: bool = c
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'postgis')",
            &[],
        )
        .unwrap()
        .get(0);
    if !available {
        let major: i32 = c
            .query_one(
                "SELECT current_setting('server_version_num')::int / 10000",
                &[],
            )
            .unwrap()
            .get(0);
        assert_ne!(
            major, 15,
            "PostGIS is not installed for Postgres 15: run scripts/setup.sh"
        );
        eprintln!("postgis_e2e: Postgres {major} has no PostGIS here; nothing to check");
        return;
    }
    c.batch_execute(
        "CREATE EXTENSION postgis;
         CREATE TABLE places (id int PRIMARY KEY, g geometry, gg geography);
         INSERT INTO places VALUES
           (1, 'POINT(1.5 -2)', 'POINT(13.4 52.5)'),
           (2, NULL, NULL),
           (3, 'LINESTRING(0 0, 1 1)', 'POINT(0 0)');",
    )
    .unwrap();
    let rules = "bucket_definitions:\n  g:\n    data:\n      - SELECT id, st_astext(g) AS wkt, st_asgeojson(g) AS gj, st_x(g) AS x, st_y(g) AS y, st_astext(gg) AS gwkt, st_x(gg) AS gx FROM places WHERE id <> 3\n      - SELECT id, st_astext(g) AS wkt FROM places WHERE id = 3\n";
    c.query_one("SELECT outpost.deploy_rules($1)", &[&rules])
        .unwrap_or_else(|e| panic!("deploy failed: {e:?}"));
    let rows = fold_bucket(&ops(&mut c, "g[]"));
    let row = |id: i64| -> &Value {
        rows.values()
            .find(|v| v["id"] == json!(id))
            .unwrap_or_else(|| panic!("row {id} missing: {rows:?}"))
    };
    let one = row(1);
    assert_eq!(one["wkt"], json!("POINT(1.5 -2)"));
    let gj: Value = serde_json::from_str(one["gj"].as_str().expect("GeoJSON as text")).unwrap();
    assert_eq!(gj, json!({"type": "Point", "coordinates": [1.5, -2]}));
    assert_eq!(one["x"].as_f64(), Some(1.5));
    assert_eq!(one["y"].as_f64(), Some(-2.0));
    assert_eq!(one["gwkt"], json!("POINT(13.4 52.5)"));
    assert_eq!(one["gx"].as_f64(), Some(13.4));
    let two = row(2);
    for k in ["wkt", "gj", "x", "y", "gwkt", "gx"] {
        assert_eq!(two[k], Value::Null, "{k} of a NULL geometry");
    }
    assert_eq!(row(3)["wkt"], json!("LINESTRING(0 0,1 1)"));

    // Not a geometry: refused at deploy with the function named.
    let err = c
        .query_one(
            "SELECT outpost.deploy_rules($1)",
            &[&"bucket_definitions:\n  g:\n    data:\n      - SELECT id, st_x(id) AS x FROM places\n"],
        )
        .expect_err("st_x of an integer column");
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("st_x"), "{msg}");
}
