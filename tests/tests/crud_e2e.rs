//! `POST /crud` end to end: an in-process relay with a write role, real
//! Postgres with row-level security, `outpost.apply_crud` and write handlers.

use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use postgres::Client;
use serde_json::{json, Value};

/// Roles are cluster-wide: one shared role, created idempotently; its grants
/// live in each (scratch) database.
const ROLE: &str = "outpost_test_app_user";

const SCHEMA: &str = "
CREATE TABLE todos (id text PRIMARY KEY, owner_id text NOT NULL, title text, done boolean NOT NULL DEFAULT false);
INSERT INTO todos VALUES ('b', 'u2', 'theirs', false);
ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON todos
    USING (owner_id = current_setting('request.jwt.claim.sub', true))
    WITH CHECK (owner_id = current_setting('request.jwt.claim.sub', true));
CREATE TABLE private_notes (id text PRIMARY KEY, body text);
";

const RULES: &str = "
bucket_definitions:
  global:
    data: SELECT * FROM todos
";

fn setup(label: &str) -> (TestDb, Client, Relay) {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {ROLE} NOLOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
    ))
    .unwrap();
    c.batch_execute(SCHEMA).unwrap();
    c.batch_execute(&format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON todos, private_notes TO {ROLE};
         SELECT outpost.grant_crud('{ROLE}');"
    ))
    .unwrap();
    c.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap();
    let relay = Relay::start_with(&db, |a| a.write_role = Some(ROLE.to_string()));
    (db, c, relay)
}

fn crud(relay: &Relay, sub: &str, batch: Value) -> (u16, Value) {
    let r = relay.request(
        "POST",
        "/crud",
        Some(&relay.token(sub, 300)),
        Some(&json!({ "batch": batch })),
    );
    (r.status, r.json())
}

fn todos(c: &mut Client) -> Vec<(String, String, Option<String>, bool)> {
    c.query(
        "SELECT id, owner_id, title, done FROM todos ORDER BY id",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn row(id: &str, owner: &str, title: &str, done: bool) -> (String, String, Option<String>, bool) {
    (id.into(), owner.into(), Some(title.into()), done)
}

#[test]
fn owner_writes_land_and_sync() {
    let (_db, mut c, relay) = setup("crud_owner");
    let mut stream = relay.stream(&relay.token("u1", 300), &json!({"raw_data": true}));
    stream.until("checkpoint_complete");

    let (status, body) = crud(
        &relay,
        "u1",
        json!([
            {"op": "PUT", "type": "todos", "id": "a", "data": {"owner_id": "u1", "title": "mine"}},
            {"op": "PUT", "type": "todos", "id": "c", "data": {"owner_id": "u1", "title": "gone soon"}},
            {"op": "PATCH", "type": "todos", "id": "a", "data": {"done": 1}},
            {"op": "DELETE", "type": "todos", "id": "c"},
        ]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"data": {"applied": 4}}));
    assert_eq!(
        todos(&mut c),
        vec![
            row("a", "u1", "mine", true),
            row("b", "u2", "theirs", false)
        ]
    );

    // The write reaches sync streams (the relay ticks on the capture NOTIFY).
    let lines = stream.until("checkpoint_complete");
    let ops: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l.get("data"))
        .flat_map(|d| d["data"].as_array().unwrap())
        .collect();
    assert!(
        ops.iter()
            .any(|o| o["object_id"] == "a" && o["op"] == "PUT"),
        "{lines:?}"
    );

    // Re-uploading the same batch (a lost response) is harmless.
    let (status, body) = crud(
        &relay,
        "u1",
        json!([{"op": "DELETE", "type": "todos", "id": "c"},
               {"op": "PATCH", "type": "todos", "id": "c", "data": {"title": "x"}}]),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn rls_hides_and_denies_other_users_rows_and_rolls_back() {
    let (_db, mut c, relay) = setup("crud_rls");
    let before = todos(&mut c);
    let mine =
        json!({"op": "PUT", "type": "todos", "id": "c", "data": {"owner_id": "u1", "title": "ok"}});
    // Hidden by USING: exactly like a missing row (delete wins), so the answer
    // tells nothing about rows the user may not see, and nothing changes.
    for hidden in [
        json!({"op": "PATCH", "type": "todos", "id": "b", "data": {"title": "hacked"}}),
        json!({"op": "DELETE", "type": "todos", "id": "b"}),
    ] {
        let (status, body) = crud(&relay, "u1", json!([hidden.clone()]));
        assert_eq!(status, 200, "{hidden}: {body}");
        assert_eq!(todos(&mut c), before, "{hidden}");
    }
    for (i, bad) in [
        // Fails WITH CHECK: writing a row as someone else.
        json!({"op": "PUT", "type": "todos", "id": "d", "data": {"owner_id": "u2", "title": "forged"}}),
        // Upsert over someone else's row.
        json!({"op": "PUT", "type": "todos", "id": "b", "data": {"owner_id": "u1", "title": "stolen"}}),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = crud(&relay, "u1", json!([mine.clone(), bad.clone()]));
        assert_eq!(status, 403, "case {i}: {body}");
        let e = &body["error"];
        assert_eq!(e["code"], "OUTPOST_CRUD_DENIED", "{body}");
        assert_eq!(e["entry"]["index"], 1, "{body}");
        assert_eq!(e["entry"]["id"], bad["id"], "{body}");
        let desc = e["description"].as_str().unwrap();
        assert!(
            desc.starts_with(&format!("entry 1 (todos id {})", bad["id"])),
            "{desc}"
        );
        // The whole batch rolled back: entry 0 did not land either.
        assert_eq!(todos(&mut c), before, "case {i}");
    }
    // The owner of b may change it.
    let (status, body) = crud(
        &relay,
        "u2",
        json!([{"op": "PATCH", "type": "todos", "id": "b", "data": {"title": "still mine"}}]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(todos(&mut c), vec![row("b", "u2", "still mine", false)]);
}

#[test]
fn write_handler_can_refuse_an_entry() {
    let (_db, mut c, relay) = setup("crud_handler");
    c.batch_execute(
        "CREATE FUNCTION todos_write(entry jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             IF coalesce(entry -> 'data' ->> 'title', '') = '' THEN
                 RAISE EXCEPTION 'title must not be empty';
             END IF;
             INSERT INTO todos (id, owner_id, title)
                  VALUES (entry ->> 'id', entry -> 'data' ->> 'owner_id', upper(entry -> 'data' ->> 'title'))
             ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title;
         END $$;
         SELECT outpost.set_write_handler('todos', 'todos_write');",
    )
    .unwrap();
    let good = json!({"op": "PUT", "type": "todos", "id": "h1", "data": {"owner_id": "u1", "title": "fine"}});
    let bad =
        json!({"op": "PUT", "type": "todos", "id": "h2", "data": {"owner_id": "u1", "title": ""}});
    let (status, body) = crud(&relay, "u1", json!([good.clone(), bad]));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "OUTPOST_CRUD_REFUSED");
    assert_eq!(body["error"]["entry"]["index"], 1);
    assert_eq!(body["error"]["entry"]["message"], "title must not be empty");
    assert_eq!(todos(&mut c), vec![row("b", "u2", "theirs", false)]);

    // The handler did the write (its own way), as the write role.
    let (status, body) = crud(&relay, "u1", json!([good]));
    assert_eq!(status, 200, "{body}");
    assert!(todos(&mut c).contains(&row("h1", "u1", "FINE", false)));

    // Removing the handler restores the default.
    c.batch_execute("SELECT outpost.set_write_handler('todos', NULL)")
        .unwrap();
    let (status, body) = crud(
        &relay,
        "u1",
        json!([{"op": "PUT", "type": "todos", "id": "h3", "data": {"owner_id": "u1", "title": ""}}]),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn bad_entries_are_400_naming_the_entry() {
    let (_db, mut c, relay) = setup("crud_bad");
    let before = todos(&mut c);
    let ok = json!({"op": "PUT", "type": "todos", "id": "z", "data": {"owner_id": "u1"}});
    for (bad, needle) in [
        // Exists but is not synced by the rules.
        (
            json!({"op": "PUT", "type": "private_notes", "id": "n", "data": {"body": "x"}}),
            "table \"private_notes\" is not synced",
        ),
        (
            json!({"op": "DELETE", "type": "nope", "id": "n"}),
            "table \"nope\" is not synced",
        ),
        (
            json!({"op": "PATCH", "type": "todos", "id": "z", "data": {"colour": "red"}}),
            "no writable column colour",
        ),
        (
            json!({"op": "PATCH", "type": "todos", "id": "z", "data": {"done": "maybe"}}),
            "invalid input syntax for type boolean",
        ),
    ] {
        let (status, body) = crud(&relay, "u1", json!([ok.clone(), bad.clone()]));
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "OUTPOST_CRUD_INVALID", "{body}");
        assert_eq!(body["error"]["entry"]["index"], 1, "{body}");
        let desc = body["error"]["description"].as_str().unwrap();
        assert!(
            desc.starts_with(&format!("entry 1 ({} id ", bad["type"].as_str().unwrap())),
            "{desc}"
        );
        assert!(desc.contains(needle), "{desc}");
        assert_eq!(todos(&mut c), before);
    }
    // Unknown op: refused by the relay before the database.
    let (status, body) = crud(
        &relay,
        "u1",
        json!([{"op": "UPSERT", "type": "todos", "id": "z"}]),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["description"]
        .as_str()
        .unwrap()
        .starts_with("entry 0 (todos id \"z\")"));
}

#[test]
fn limits_and_disabled_endpoint() {
    let (db, _c, relay) = setup("crud_limits");
    let entry = json!({"op": "DELETE", "type": "todos", "id": "x"});
    let (status, body) = crud(&relay, "u1", Value::Array(vec![entry; 1001]));
    assert_eq!(status, 413, "{body}");
    let r = relay.request("POST", "/crud", None, Some(&json!({"batch": []})));
    assert_eq!(r.status, 401, "{}", r.body);

    let plain = Relay::start(&db);
    let (status, body) = crud(&plain, "u1", json!([]));
    assert_eq!(status, 501, "{body}");
    assert!(body["error"]["description"]
        .as_str()
        .unwrap()
        .contains("OUTPOST_WRITE_ROLE"));
}
