//! The schema, data and Sync Streams rules of the recorded PowerSync exchange
//! (`../shared/reference/streams-transcript.md`), shared by the streams tests
//! so that each checks against the same answer.

/// Lists l1…l4 (u1 owns l1 and l3), three todos in each.
pub const SCHEMA: &str = "
CREATE TABLE lists (id text PRIMARY KEY, name text, owner_id text NOT NULL);
CREATE TABLE todos (id text PRIMARY KEY, list_id text NOT NULL, description text);
INSERT INTO lists VALUES ('l1', 'one', 'u1'), ('l2', 'two', 'u2'), ('l3', 'three', 'u1'), ('l4', 'four', 'u2');
INSERT INTO todos SELECT 't' || l || '-' || n, 'l' || l, 'todo ' || n
  FROM generate_series(1, 4) l, generate_series(1, 3) n;
";

/// The rules of the recorded exchange.
pub const RULES: &str = "
config:
  edition: 3
streams:
  my_lists:
    auto_subscribe: true
    query: SELECT * FROM lists WHERE owner_id = auth.user_id()
  list_todos:
    query: SELECT * FROM todos WHERE list_id = subscription.parameter('list_id') AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
";
