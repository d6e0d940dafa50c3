#!/usr/bin/env bash
# Compatibility test (`make test-compat`): PowerSync's own JS SDK
# (@powersync/node, unmodified, versions pinned in compat/powersync-node/)
# syncs from outpost-relay.
#
#   1. `npm ci` in compat/powersync-node/ when node_modules is missing or stale
#      (better-sqlite3 compiles from source the first time, ~1 min);
#   2. builds outpost-relay (debug, with the workspace's test feature set);
#   3. drops and recreates database outpost_compat: lists/todos with owner_id,
#      RLS write policies for role outpost_compat_writer keyed on the JWT sub,
#      rows for users alice and bob, and rules with a per-user bucket
#      (static parameter query) and a per-list bucket (parameter query on lists);
#   4. starts `outpost-relay serve` on 127.0.0.1:<free port> with POST /crud
#      enabled (COMPAT_WRITES=0: disabled), mints a token for alice;
#   5. runs compat/powersync-node/compat-test.mjs: first sync, row-by-row
#      comparison with Postgres, Postgres insert/update/delete arriving live,
#      local writes uploaded through POST /crud, a write refused by RLS and
#      reverted, reconnect, and a token expiring mid-stream (short-lived
#      tokens from the connector's fetchCredentials) — each printed as PASS/FAIL;
#   6. deploys Sync Streams rules (an auto_subscribe stream of the user's lists,
#      a list_todos stream with a subscription parameter and an IN (SELECT …)
#      subquery on lists) and runs compat/powersync-node/compat-streams.mjs:
#      db.syncStream(name, params).subscribe() brings exactly that list's rows,
#      a second subscription brings its rows, and a list moved to another owner
#      in Postgres leaves the client;
#   7. stops the relay (by PID) and, on failure, prints the relay log's tail.
#
# Environment: COMPAT_PG (libpq keywords of the server; default: the server of
# OUTPOST_TEST_DATABASE_URL as the Makefile sets it for PG=15/16/18 and
# OUTPOST_PG_PORT, else "host=127.0.0.1 port=5432 user=postgres"),
# COMPAT_WRITES (1), COMPAT_TRACE=1
# (log every SDK request/response through a proxy), COMPAT_SDK_DEBUG=1 (SDK
# debug logs), COMPAT_KEEP=1 (keep the work directory), CARGO (cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# The server of OUTPOST_TEST_DATABASE_URL without its dbname (the script names its own).
DEFAULT_PG="host=127.0.0.1 port=5432 user=postgres"
if [ -n "${OUTPOST_TEST_DATABASE_URL:-}" ]; then
  DEFAULT_PG=$(printf '%s\n' "$OUTPOST_TEST_DATABASE_URL" | sed -E 's/(^| )dbname=[^ ]*//g; s/^ +//')
fi
PG=${COMPAT_PG:-$DEFAULT_PG}
WRITES=${COMPAT_WRITES:-1}
CARGO=${CARGO:-cargo}
DBNAME=outpost_compat
WRITE_ROLE=outpost_compat_writer
PKG=compat/powersync-node
SUB=alice

step() { printf '\n\033[1;34m[test-compat] %s\033[0m\n' "$*"; }
die() {
  printf '\033[1;31m[test-compat] %s\033[0m\n' "$*" >&2
  exit 1
}
. scripts/lib/db.sh

command -v node >/dev/null || die "node not found (Node 20+ needed)"
command -v npm >/dev/null || die "npm not found"
command -v psql >/dev/null || die "psql not found (run scripts/setup.sh)"
command -v curl >/dev/null || die "curl not found"
pg_isready -q -d "$PG dbname=postgres" 2>/dev/null || die "Postgres is not up at '$PG' (run scripts/setup.sh)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outpost-compat.XXXXXX")
RELAY_PID=
cleanup() {
  local rc=$?
  if [ -n "$RELAY_PID" ] && kill -0 "$RELAY_PID" 2>/dev/null; then
    kill -TERM "$RELAY_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$RELAY_PID" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ] && [ -f "$WORK/relay.log" ]; then
    echo "--- relay log (last 30 lines) ---" >&2
    tail -n 30 "$WORK/relay.log" >&2 || true
  fi
  if [ "${COMPAT_KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------- 1. the SDK --
step "SDK: npm ci in $PKG (if needed)"
sdk_versions=$(scripts/compat-deps.sh) || die "the SDK's packages could not be installed"
echo "    $sdk_versions"

# ------------------------------------------------------------ 2. the relay --
step "Building outpost-relay (debug)"
# All targets of the workspace: the feature set of `make test`, so nothing is
# rebuilt after it (`-p outpost-relay` alone would rebuild every dependency).
"$CARGO" build -q --workspace --exclude outpost --all-targets
RELAY=${CARGO_TARGET_DIR:-$ROOT/target}/debug/outpost-relay
[ -x "$RELAY" ] || die "$RELAY not found"

# ---------------------------------------------------------- 3. the database --
step "Database $DBNAME: schema, RLS, rows, rules"
recreate_db
psql_db <<SQL
CREATE EXTENSION outpost;
CREATE TABLE lists (id uuid PRIMARY KEY, owner_id text NOT NULL, name text NOT NULL);
CREATE TABLE todos (
  id uuid PRIMARY KEY,
  list_id uuid NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
  owner_id text NOT NULL,
  description text NOT NULL,
  completed boolean NOT NULL DEFAULT false,
  priority integer,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION compat_user_id() RETURNS text LANGUAGE sql STABLE AS \$\$
  SELECT nullif(current_setting('request.jwt.claim.sub', true), '')
\$\$;
GRANT USAGE ON SCHEMA public TO $WRITE_ROLE;
GRANT EXECUTE ON FUNCTION compat_user_id() TO $WRITE_ROLE;
GRANT SELECT, INSERT, UPDATE, DELETE ON lists, todos TO $WRITE_ROLE;
SELECT outpost.grant_crud('$WRITE_ROLE');
ALTER TABLE lists ENABLE ROW LEVEL SECURITY;
ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
CREATE POLICY lists_own ON lists FOR ALL TO $WRITE_ROLE
  USING (owner_id = compat_user_id()) WITH CHECK (owner_id = compat_user_id());
CREATE POLICY todos_own ON todos FOR ALL TO $WRITE_ROLE
  USING (owner_id = compat_user_id())
  WITH CHECK (owner_id = compat_user_id() AND list_id IN (SELECT id FROM lists));

INSERT INTO lists VALUES
  ('11111111-1111-4111-8111-000000000001', 'alice', 'Groceries'),
  ('11111111-1111-4111-8111-000000000002', 'alice', 'Work'),
  ('22222222-2222-4222-8222-000000000001', 'bob', 'Bob''s list');
INSERT INTO todos(id, list_id, owner_id, description, completed, priority)
SELECT gen_random_uuid(), l.id, l.owner_id, l.name || ' #' || g, g % 2 = 0, g
  FROM lists l, generate_series(1, 5) g;
SQL
RULES=$(cat <<'YAML'
bucket_definitions:
  # Per user: the lists they own (static parameter query on the JWT sub).
  user_lists:
    parameters: SELECT request.user_id() AS uid
    data:
      - SELECT id, owner_id, name FROM lists WHERE owner_id = bucket.uid
  # Per list the user owns: its todos (parameter query on lists).
  list_todos:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM todos WHERE list_id = bucket.list_id
YAML
)
version=$(psql_db -At -v rules="$RULES" <<'SQL'
SELECT outpost.deploy_rules(:'rules');
SQL
)
echo "    rules version $version; alice: $(psql_db -At -c "SELECT count(*) FROM lists WHERE owner_id='alice'") lists, $(psql_db -At -c "SELECT count(*) FROM todos WHERE owner_id='alice'") todos"

# --------------------------------------------------------------- 4. serve --
step "Starting outpost-relay on 127.0.0.1"
PORT=$(node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
ENDPOINT=http://127.0.0.1:$PORT
SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
relay_env=(OUTPOST_DATABASE_URL="$PG dbname=$DBNAME" OUTPOST_LISTEN="127.0.0.1:$PORT" OUTPOST_JWT_SECRET="$SECRET"
  RUST_LOG="${RUST_LOG:-info}")
if [ "$WRITES" = 1 ]; then relay_env+=(OUTPOST_WRITE_ROLE="$WRITE_ROLE"); fi
env -u OUTPOST_WRITE_ROLE "${relay_env[@]}" "$RELAY" serve >"$WORK/relay.log" 2>&1 </dev/null &
RELAY_PID=$!
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "$ENDPOINT/health" 2>/dev/null && break
  kill -0 "$RELAY_PID" 2>/dev/null || die "relay exited during startup"
  sleep 0.05
done
curl -fsS -o /dev/null "$ENDPOINT/health" || die "relay not healthy after 15 s"
echo "    relay pid $RELAY_PID at $ENDPOINT (writes: $([ "$WRITES" = 1 ] && echo "on, role $WRITE_ROLE" || echo off))"
TOKEN=$(OUTPOST_JWT_SECRET=$SECRET "$RELAY" token --sub "$SUB" --ttl 3600)

# ------------------------------------------------------------------ 5. test --
step "PowerSync Node SDK against the relay"
mkdir -p "$WORK/client"
set +e
(
  cd "$PKG"
  if [ "$WRITES" = 1 ]; then export OUTPOST_WRITE_ROLE=$WRITE_ROLE; else unset OUTPOST_WRITE_ROLE; fi
  OUTPOST_ENDPOINT=$ENDPOINT OUTPOST_TOKEN=$TOKEN COMPAT_USER=$SUB COMPAT_PG="$PG dbname=$DBNAME" \
    COMPAT_DIR="$WORK/client" COMPAT_RELAY_BIN="$RELAY" OUTPOST_JWT_SECRET="$SECRET" node compat-test.mjs
)
rc=$?
set -e

# ----------------------------------------------------------- 6. streams --
step "Sync Streams: PowerSync Node SDK subscribing to a parameterized stream"
STREAM_RULES=$(cat <<'YAML'
config:
  edition: 3
streams:
  my_lists:
    auto_subscribe: true
    query: SELECT id, owner_id, name FROM lists WHERE owner_id = auth.user_id()
  list_todos:
    query: SELECT * FROM todos WHERE list_id = subscription.parameter('list_id') AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
YAML
)
psql_db -At -v rules="$STREAM_RULES" >/dev/null <<'SQL'
SELECT outpost.deploy_rules(:'rules');
SQL
mkdir -p "$WORK/streams"
set +e
(
  cd "$PKG"
  OUTPOST_ENDPOINT=$ENDPOINT OUTPOST_TOKEN=$TOKEN COMPAT_USER=$SUB COMPAT_PG="$PG dbname=$DBNAME" \
    COMPAT_DIR="$WORK/streams" node compat-streams.mjs
)
src=$?
set -e
[ "$rc" = 0 ] && rc=$src
if grep -qiE ' (WARN|ERROR) ' "$WORK/relay.log"; then
  echo "    relay warnings/errors:"
  grep -iE ' (WARN|ERROR) ' "$WORK/relay.log" | tail -n 10 | sed 's/^/      /'
fi
exit "$rc"
