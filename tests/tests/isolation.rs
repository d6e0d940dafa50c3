//! Isolation: with randomized users, parameter rows and writes, every row a
//! request can read is allowed by the rules for its token — and client
//! parameters cannot widen what a token may read.

use outpost_tests::{tick, TestDb};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const RULES: &str = "
bucket_definitions:
  owned:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT id, list_id, title FROM todos WHERE list_id = bucket.list_id
  shared:
    parameters: SELECT id AS list_id FROM lists WHERE request.user_id() IN members
    data:
      - SELECT id, list_id, title FROM todos WHERE list_id = bucket.list_id
  picked:
    parameters: SELECT id AS list_id FROM lists WHERE id = (request.parameters() ->> 'list')::int AND owner_id = request.user_id()
    data:
      - SELECT id, list_id, title FROM todos WHERE list_id = bucket.list_id
  org:
    parameters: SELECT request.jwt() ->> 'org' AS org
    data:
      - SELECT id, org FROM notes WHERE org = bucket.org
";

/// Rows a request reads: (object_type, object_id) over every bucket it gets.
fn readable(
    c: &mut postgres::Client,
    claims: &Value,
    params: &Value,
) -> BTreeSet<(String, String)> {
    let cp: Value = c
        .query_one(
            "SELECT outpost.sync_checkpoint($1, $2, 'c')",
            &[claims, params],
        )
        .unwrap()
        .get(0);
    let buckets: Vec<String> = cp["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucket"].as_str().unwrap().to_string())
        .collect();
    let afters = vec![0i64; buckets.len()];
    let checkpoint = cp["checkpoint"].as_i64().unwrap();
    let mut rows = std::collections::BTreeMap::new();
    for r in c
        .query(
            "SELECT bucket, op, object_type, object_id FROM outpost.bucket_ops($1, $2, $3, 100000000)",
            &[&buckets, &afters, &checkpoint],
        )
        .unwrap()
    {
        let key: (String, String, String) = (r.get(0), r.get(2), r.get(3));
        match r.get::<_, String>(1).as_str() {
            "PUT" => rows.insert(key, ()),
            _ => rows.remove(&key),
        };
    }
    rows.into_keys().map(|(_, t, id)| (t, id)).collect()
}

/// The oracle: what the rules allow, straight from the tables.
fn allowed(
    c: &mut postgres::Client,
    user: &str,
    org: &str,
    picked: Option<i64>,
) -> BTreeSet<(String, String)> {
    let mut out: BTreeSet<(String, String)> = c
        .query(
            "SELECT t.id::text FROM todos t JOIN lists l ON l.id = t.list_id
              WHERE l.owner_id = $1 OR l.members ? $1",
            &[&user],
        )
        .unwrap()
        .into_iter()
        .map(|r| ("todos".to_string(), r.get(0)))
        .collect();
    let _ = picked; // `picked` only re-grants owned lists; the owner rule already covers them.
    out.extend(
        c.query("SELECT id::text FROM notes WHERE org = $1", &[&org])
            .unwrap()
            .into_iter()
            .map(|r| ("notes".to_string(), r.get(0))),
    );
    out
}

#[test]
fn no_request_reads_beyond_its_token() {
    let seed: u64 = std::env::var("OUTPOST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (OUTPOST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new("isolation");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE lists (id int PRIMARY KEY, owner_id text NOT NULL, members jsonb NOT NULL DEFAULT '[]');
         CREATE TABLE todos (id int PRIMARY KEY, list_id int NOT NULL, title text);
         CREATE TABLE notes (id int PRIMARY KEY, org text NOT NULL);",
    )
    .unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap();
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let orgs = ["acme", "globex", "initech"];
    let mut checks = 0usize;
    let mut leaks = 0usize;
    for _round in 0..25 {
        // Random writes to parameter rows and data rows.
        for _ in 0..rng.random_range(5..30) {
            let list: i32 = rng.random_range(1..20);
            let owner = &users[rng.random_range(0..users.len())];
            let members: Vec<&String> = users.iter().filter(|_| rng.random_bool(0.2)).collect();
            match rng.random_range(0..6) {
                0 | 1 => {
                    c.execute(
                        "INSERT INTO lists VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET owner_id = $2, members = $3",
                        &[&list, owner, &json!(members)],
                    )
                    .unwrap();
                }
                2 => {
                    c.execute("DELETE FROM lists WHERE id = $1", &[&list])
                        .unwrap();
                }
                3 | 4 => {
                    let id: i32 = rng.random_range(1..300);
                    c.execute(
                        "INSERT INTO todos VALUES ($1, $2, 't') ON CONFLICT (id) DO UPDATE SET list_id = $2",
                        &[&id, &list],
                    )
                    .unwrap();
                }
                _ => {
                    let id: i32 = rng.random_range(1..100);
                    let org = orgs[rng.random_range(0..orgs.len())];
                    c.execute(
                        "INSERT INTO notes VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET org = $2",
                        &[&id, &org],
                    )
                    .unwrap();
                }
            }
        }
        tick(&mut c);
        for user in &users {
            let org = orgs[rng.random_range(0..orgs.len())];
            let claims = json!({"sub": user, "org": org});
            // Honest and forged client parameters: another user's list, a
            // bucket id, SQL in a parameter.
            let forged = [
                json!({}),
                json!({"list": rng.random_range(1..20)}),
                json!({"list": "1 OR true"}),
                json!({"list": "owned[1]", "org": "acme"}),
                json!({"sub": "u0", "user_id": "u0"}),
            ];
            let allowed = allowed(&mut c, user, org, None);
            for params in &forged {
                let got = readable(&mut c, &claims, params);
                for row in &got {
                    checks += 1;
                    if !allowed.contains(row) {
                        leaks += 1;
                        eprintln!("LEAK: {user} (org {org}, params {params}) read {row:?}");
                    }
                }
                // And nothing allowed is missing from the honest request.
                if params == &json!({}) {
                    assert_eq!(
                        got, allowed,
                        "{user} should read exactly what the rules allow (seed {seed})"
                    );
                }
            }
        }
    }
    eprintln!("isolation: {checks} row checks, {leaks} leaks");
    assert!(checks >= 10_000, "only {checks} checks");
    assert_eq!(leaks, 0, "rows readable beyond the token (seed {seed})");
}
