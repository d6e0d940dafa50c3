-- Demo schema, write policies, sync rules and a little seed data.
-- Run by compose.yaml's one-shot `setup` service (psql -f) against the
-- database of the `postgres` service, and by scripts/test-package.sh (which
-- is why CI exercises this file). Idempotent: safe to run on every
-- `docker compose up`.
\set ON_ERROR_STOP on
SET client_min_messages = warning;

CREATE EXTENSION IF NOT EXISTS outpost;

CREATE TABLE IF NOT EXISTS lists (
    id       uuid PRIMARY KEY,
    owner_id text NOT NULL,
    name     text NOT NULL
);
CREATE TABLE IF NOT EXISTS todos (
    id          uuid PRIMARY KEY,
    list_id     uuid NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    owner_id    text NOT NULL,
    description text NOT NULL,
    completed   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS todos_list_id ON todos (list_id);

-- Client writes (the relay's POST /crud with OUTPOST_WRITE_ROLE=outpost_writer)
-- run as this role with the JWT's sub in request.jwt.claim.sub; RLS decides.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outpost_writer') THEN
        CREATE ROLE outpost_writer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO outpost_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON lists, todos TO outpost_writer;
SELECT outpost.grant_crud('outpost_writer');
-- Only when not yet enabled: an ALTER TABLE on a synced table recompiles the rules.
DO $$
BEGIN
    IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = 'lists'::regclass) THEN
        ALTER TABLE lists ENABLE ROW LEVEL SECURITY;
    END IF;
    IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = 'todos'::regclass) THEN
        ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
    END IF;
END
$$;
DROP POLICY IF EXISTS lists_own ON lists;
CREATE POLICY lists_own ON lists TO outpost_writer
    USING (owner_id = current_setting('request.jwt.claim.sub', true))
    WITH CHECK (owner_id = current_setting('request.jwt.claim.sub', true));
DROP POLICY IF EXISTS todos_own ON todos;
CREATE POLICY todos_own ON todos TO outpost_writer
    USING (owner_id = current_setting('request.jwt.claim.sub', true))
    WITH CHECK (owner_id = current_setting('request.jwt.claim.sub', true)
                AND list_id IN (SELECT id FROM lists));

-- One bucket per list a user owns. Redeploying unchanged rules re-evaluates nothing.
SELECT outpost.deploy_rules($rules$
bucket_definitions:
  user_lists:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT id, owner_id, name FROM lists WHERE id = bucket.list_id
      - SELECT * FROM todos WHERE list_id = bucket.list_id
$rules$) AS rules_version;

INSERT INTO lists (id, owner_id, name) VALUES
    ('00000000-0000-4000-8000-00000000a001', 'alice', 'Groceries'),
    ('00000000-0000-4000-8000-00000000a002', 'alice', 'Work'),
    ('00000000-0000-4000-8000-00000000b001', 'bob', 'Garden')
ON CONFLICT (id) DO NOTHING;
INSERT INTO todos (id, list_id, owner_id, description, completed) VALUES
    ('00000000-0000-4000-8000-0000000a0001', '00000000-0000-4000-8000-00000000a001', 'alice', 'milk', false),
    ('00000000-0000-4000-8000-0000000a0002', '00000000-0000-4000-8000-00000000a001', 'alice', 'bread', true),
    ('00000000-0000-4000-8000-0000000a0003', '00000000-0000-4000-8000-00000000a002', 'alice', 'write report', false),
    ('00000000-0000-4000-8000-0000000b0001', '00000000-0000-4000-8000-00000000b001', 'bob', 'plant tomatoes', false)
ON CONFLICT (id) DO NOTHING;

SELECT outpost.tick() AS checkpoint;
