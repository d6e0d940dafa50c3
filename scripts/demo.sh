#!/usr/bin/env bash
# Outpost demo: Postgres + extension → relay → two SQLite clients.
#
#   make demo                    # (runs scripts/setup.sh first) build, seed, serve, sync
#   scripts/demo.sh              # the same, without setup
#   scripts/demo.sh --stop       # the same, then stop the relay at the end
#   DEMO_STOP=1 make demo        # the same as --stop, through make
#   scripts/demo.sh --stop-only  # just stop a relay an earlier run left running
#
# What it does:
#   1. builds `outpost-relay` and `outpost` (release);
#   2. drops and recreates database `outpost_demo` (CREATE EXTENSION outpost) with
#      `lists` and `todos`, RLS write policies for role `outpost_demo_writer`
#      (keyed on the JWT `sub`), and seed data: users alice and bob, a few lists
#      each, one shared list, DEMO_TODOS todos (default 100000, set-based);
#   3. deploys sync rules: a per-user bucket (lists the user owns, found by a
#      parameter query) and a `shared` bucket every user gets;
#   4. starts `outpost-relay serve` in the background on 127.0.0.1:$OUTPOST_DEMO_PORT
#      (default 8080; `/crud` enabled with OUTPOST_WRITE_ROLE=outpost_demo_writer);
#   5. mints tokens for alice and bob and runs `outpost sync --once` for each into
#      .outpost/demo/{alice,bob}.db, printing what each received;
#   6. makes a write and shows it arriving on the other client: through alice's
#      client (`outpost exec` + `outpost sync --once` uploads via POST /crud) when the
#      relay accepts writes, otherwise in Postgres with psql;
#   7. leaves the relay running (PID in .outpost/demo/relay.pid, log in relay.log)
#      and prints how to use and stop it.
#
# Rerunning is safe: a relay started by an earlier run (PID file) is stopped
# first, the database and client files are recreated.
#
# Environment: OUTPOST_DEMO_PORT (8080), DEMO_TODOS (100000), DEMO_STOP (0),
# OUTPOST_DEMO_PG (libpq keywords of the server; default
# "host=127.0.0.1 port=5432 user=postgres"), CARGO (cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PORT=${OUTPOST_DEMO_PORT:-8080}
TODOS=${DEMO_TODOS:-100000}
STOP=${DEMO_STOP:-0}
STOP_ONLY=0
PG=${OUTPOST_DEMO_PG:-host=127.0.0.1 port=5432 user=postgres}
CARGO=${CARGO:-cargo}
DBNAME=outpost_demo
WRITE_ROLE=outpost_demo_writer
DIR=.outpost/demo
PIDFILE=$DIR/relay.pid
ENDPOINT=http://127.0.0.1:$PORT
SHARED_LIST=00000000-0000-4000-8000-000000000001

for arg in "$@"; do
  case "$arg" in
    --stop) STOP=1 ;;
    --stop-only) STOP_ONLY=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "demo.sh: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf '\033[1;31mdemo: %s\033[0m\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
since() { # since START_MS → "1.234s"
  local d=$(($(now_ms) - $1))
  printf '%d.%03ds' $((d / 1000)) $((d % 1000))
}
. scripts/lib/db.sh

# A relay we started earlier: PID from the file, and only if it still is outpost-relay.
our_relay_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'outpost-relay' || return 1
  echo "$pid"
}

stop_relay() {
  local pid
  if pid=$(our_relay_pid); then
    info "stopping relay (pid $pid)"
    kill -TERM "$pid"
    # Graceful shutdown gives open streams up to 10 s; wait a little longer.
    local deadline=$(($(now_ms) + 15000))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$(now_ms)" -gt "$deadline" ]; then
        info "relay did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  fi
  rm -f "$PIDFILE"
}

mkdir -p "$DIR"
if [ "$STOP_ONLY" = 1 ]; then
  stop_relay
  exit 0
fi

command -v psql >/dev/null || die "psql not found (run scripts/setup.sh)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"
pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || die "Postgres is not up on 127.0.0.1:5432 (run scripts/setup.sh)"
T_ALL=$(now_ms)

# ---------------------------------------------------------------- 1. build --
step "Building outpost-relay and outpost (release)"
t=$(now_ms)
"$CARGO" build --release -q -p outpost-relay -p outpost-cli
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RELAY=$TARGET_DIR/release/outpost-relay
CLIENT=$TARGET_DIR/release/outpost
case "$CLIENT" in "$ROOT"/*) CLIENT=${CLIENT#"$ROOT"/} RELAY=${RELAY#"$ROOT"/} ;; esac
[ -x "$RELAY" ] && [ -x "$CLIENT" ] || die "binaries not found in $TARGET_DIR/release"
info "built in $(since "$t"): $RELAY, $CLIENT"

# ------------------------------------------------ 2. previous run, database --
step "Resetting: previous relay, database $DBNAME, client files"
stop_relay
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "port $PORT is in use by another process; set OUTPOST_DEMO_PORT"
fi
rm -f "$DIR"/alice.db* "$DIR"/bob.db* "$DIR"/relay.log
recreate_db
info "database $DBNAME created"

step "Schema, write policies and seed data ($TODOS todos)"
t=$(now_ms)
psql_db <<SQL
CREATE EXTENSION outpost;

CREATE TABLE lists (
  id uuid PRIMARY KEY,
  owner_id text,           -- NULL: the shared list
  name text NOT NULL
);
CREATE TABLE todos (
  id uuid PRIMARY KEY,
  list_id uuid NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
  owner_id text NOT NULL,
  description text NOT NULL,
  completed boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX todos_list_id ON todos(list_id);

-- Writes through the relay's POST /crud run as $WRITE_ROLE with the caller's JWT
-- claims in settings; RLS decides. The user id is the JWT sub.
CREATE FUNCTION demo_user_id() RETURNS text LANGUAGE sql STABLE AS \$\$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
\$\$;
GRANT USAGE ON SCHEMA public TO $WRITE_ROLE;
GRANT EXECUTE ON FUNCTION demo_user_id() TO $WRITE_ROLE;
GRANT SELECT, INSERT, UPDATE, DELETE ON lists, todos TO $WRITE_ROLE;
SELECT outpost.grant_crud('$WRITE_ROLE');
ALTER TABLE lists ENABLE ROW LEVEL SECURITY;
ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
-- lists: everyone sees their own and the shared list; only owners change theirs.
CREATE POLICY lists_read ON lists FOR SELECT TO $WRITE_ROLE
  USING (owner_id = demo_user_id() OR owner_id IS NULL);
CREATE POLICY lists_insert ON lists FOR INSERT TO $WRITE_ROLE
  WITH CHECK (owner_id = demo_user_id());
CREATE POLICY lists_update ON lists FOR UPDATE TO $WRITE_ROLE
  USING (owner_id = demo_user_id()) WITH CHECK (owner_id = demo_user_id());
CREATE POLICY lists_delete ON lists FOR DELETE TO $WRITE_ROLE
  USING (owner_id = demo_user_id());
-- todos: visible in lists you can see; you write your own todos into such lists.
CREATE POLICY todos_read ON todos FOR SELECT TO $WRITE_ROLE
  USING (list_id IN (SELECT id FROM lists));
CREATE POLICY todos_insert ON todos FOR INSERT TO $WRITE_ROLE
  WITH CHECK (owner_id = demo_user_id() AND list_id IN (SELECT id FROM lists));
CREATE POLICY todos_update ON todos FOR UPDATE TO $WRITE_ROLE
  USING (owner_id = demo_user_id())
  WITH CHECK (owner_id = demo_user_id() AND list_id IN (SELECT id FROM lists));
CREATE POLICY todos_delete ON todos FOR DELETE TO $WRITE_ROLE
  USING (owner_id = demo_user_id());

INSERT INTO lists(id, owner_id, name) VALUES
  ('$SHARED_LIST', NULL, 'Shared: team errands');
INSERT INTO lists(id, owner_id, name)
SELECT gen_random_uuid(), u, initcap(u) || '''s ' || l
  FROM unnest(ARRAY['alice', 'bob']) u,
       unnest(ARRAY['groceries', 'work', 'garden']) l;

-- Todos spread round-robin over all seven lists, set-based.
WITH l AS (SELECT id, owner_id, row_number() OVER (ORDER BY owner_id NULLS FIRST, name) - 1 AS n FROM lists),
     k AS (SELECT count(*) AS c FROM lists)
INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
SELECT gen_random_uuid(), l.id, coalesce(l.owner_id, CASE WHEN g % 2 = 0 THEN 'alice' ELSE 'bob' END),
       'todo #' || g, g % 3 = 0, now() - g * interval '1 minute'
  FROM generate_series(1, $TODOS) g, k, l
 WHERE l.n = g % k.c;
ANALYZE lists;
ANALYZE todos;
SQL
info "seeded in $(since "$t"):"
psql_db -c "SELECT coalesce(l.owner_id, '(shared)') AS owner, count(DISTINCT l.id) AS lists, count(t.id) AS todos
              FROM lists l LEFT JOIN todos t ON t.list_id = l.id GROUP BY 1 ORDER BY 1" | sed 's/^/    /'

# ------------------------------------------------------------ 3. sync rules --
step "Deploying sync rules"
RULES=$(cat <<YAML
bucket_definitions:
  # One bucket per list a user owns (parameter query on lists by owner).
  user_lists:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT id, owner_id, name FROM lists WHERE id = bucket.list_id
      - SELECT * FROM todos WHERE list_id = bucket.list_id
  # Everyone gets the shared list and its todos.
  shared:
    data:
      - SELECT id, owner_id, name FROM lists WHERE owner_id IS NULL
      - SELECT * FROM todos WHERE list_id = '$SHARED_LIST'
YAML
)
printf '%s\n' "$RULES" | sed 's/^/    | /'
t=$(now_ms)
version=$(psql_db -At -v rules="$RULES" <<'SQL'
SELECT outpost.deploy_rules(:'rules');
SQL
)
info "deployed rules version $version in $(since "$t") (existing rows snapshotted into bucket ops)"
psql_db -c "SELECT * FROM outpost.stats" | sed 's/^/    /'

# ------------------------------------------------------------------ 4. relay --
step "Starting outpost-relay on $ENDPOINT"
SECRET=$(openssl rand -hex 32 2>/dev/null || od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$SECRET" >"$DIR/jwt_secret"
chmod 600 "$DIR/jwt_secret"
t=$(now_ms)
OUTPOST_DATABASE_URL="$PG dbname=$DBNAME" \
  OUTPOST_LISTEN=127.0.0.1:$PORT \
  OUTPOST_JWT_SECRET=$SECRET \
  OUTPOST_WRITE_ROLE=$WRITE_ROLE \
  RUST_LOG=${RUST_LOG:-info} \
  nohup "$RELAY" serve >"$DIR/relay.log" 2>&1 </dev/null &
RELAY_PID=$!
echo "$RELAY_PID" >"$PIDFILE"
deadline=$(($(now_ms) + 30000))
until curl -fsS -o /dev/null "$ENDPOINT/health" 2>/dev/null; do
  if ! kill -0 "$RELAY_PID" 2>/dev/null; then
    rm -f "$PIDFILE"
    tail -n 20 "$DIR/relay.log" >&2 || true
    die "relay exited during startup (log above, $DIR/relay.log)"
  fi
  [ "$(now_ms)" -lt "$deadline" ] || die "relay not healthy after 30 s (see $DIR/relay.log)"
  sleep 0.05
done
info "relay pid $RELAY_PID healthy after $(since "$t") (log: $DIR/relay.log)"

step "Minting tokens (HS256, 24 h)"
for u in alice bob; do
  OUTPOST_JWT_SECRET=$SECRET "$RELAY" token --sub "$u" --ttl 86400 >"$DIR/$u.token"
  info "$u: $DIR/$u.token"
done
TOKEN_ALICE=$(cat "$DIR/alice.token")
TOKEN_BOB=$(cat "$DIR/bob.token")
schema=$(curl -fsS -H "Authorization: Bearer $TOKEN_ALICE" "$ENDPOINT/schema" 2>/dev/null || true)
if [ -n "$schema" ]; then
  info "clients take their views from GET /schema (derived from the rules):"
  info "  $schema"
fi

# ---------------------------------------------------------- 5. first syncs --
sync_once() { # sync_once USER → prints the JSON summary; sets SYNC_TIME
  local u=$1 out t0
  t0=$(now_ms)
  out=$("$CLIENT" sync --db "$DIR/$u.db" --endpoint "$ENDPOINT" --token "$(cat "$DIR/$u.token")" --once) ||
    die "outpost sync for $u failed (relay log: $DIR/relay.log)"
  SYNC_TIME=$(since "$t0")
  SYNC_OUT=$out
}
query() { # query USER SQL
  "$CLIENT" query --db "$DIR/$1.db" "$2"
}
pretty() { if command -v jq >/dev/null; then jq -c .; else cat; fi; }
checkpoint_of() { sed -n 's/.*"checkpoint":"\{0,1\}\([0-9]*\).*/\1/p'; }

step "Initial sync: each client downloads its buckets into SQLite"
for u in alice bob; do
  sync_once "$u"
  bold "    $u: $(printf '%s' "$SYNC_OUT" | pretty) in $SYNC_TIME"
  info "  lists:  $(query "$u" "SELECT coalesce(owner_id, '(shared)') AS owner, count(*) AS n FROM lists GROUP BY 1 ORDER BY 1" | pretty)"
  info "  todos:  $(query "$u" "SELECT count(*) AS total, sum(completed) AS completed FROM todos" | pretty)"
  info "  file:   $DIR/$u.db ($(du -h "$DIR/$u.db" | cut -f1))"
done

# ------------------------------------------------------- 6. a write travels --
TODO_ID=$(psql_db -At -c "SELECT gen_random_uuid()")
NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
crud_status=$(curl -s -o /dev/null -w '%{http_code}' -X POST \
  -H "Authorization: Bearer $TOKEN_ALICE" -H 'content-type: application/json' \
  --data '{"batch":[]}' "$ENDPOINT/crud" || true)
if [ "${crud_status:0:1}" = 2 ]; then
  step "A write by alice's client reaches bob (POST /crud enabled)"
  t=$(now_ms)
  info "alice: outpost exec INSERT INTO todos ... (local write, queued for upload)"
  info "  -> $("$CLIENT" exec --db "$DIR/alice.db" "INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
      VALUES ('$TODO_ID', '$SHARED_LIST', 'alice', 'Buy milk (written by alice on her device)', 0, '$NOW')")"
  info "alice sees it locally at once: $(query alice "SELECT description FROM todos WHERE id = '$TODO_ID'" | pretty)"
  sync_once alice
  info "alice: sync --once uploaded it and waited for the server's checkpoint: $(printf '%s' "$SYNC_OUT" | checkpoint_of) in $SYNC_TIME"
  info "alice's upload queue is empty again: $("$CLIENT" status --db "$DIR/alice.db" | sed -n 's/.*\("upload_queue":[0-9]*\).*/\1/p')"
  info "in Postgres: $(psql_db -At -c "SELECT owner_id || ': ' || description FROM todos WHERE id = '$TODO_ID'")"
  sync_once bob
  bold "    bob: sync --once (checkpoint $(printf '%s' "$SYNC_OUT" | checkpoint_of), $SYNC_TIME) sees: $(query bob "SELECT owner_id, description FROM todos WHERE id = '$TODO_ID'" | pretty)"
  info "write → bob's database: $(since "$t") (two CLI round trips)"
else
  step "A write in Postgres reaches both clients (POST /crud answered $crud_status; writing with psql)"
  t=$(now_ms)
  psql_db -c "INSERT INTO todos(id, list_id, owner_id, description, completed)
              VALUES ('$TODO_ID', '$SHARED_LIST', 'alice', 'Buy milk (written in Postgres)', false)"
  for u in alice bob; do
    sync_once "$u"
    bold "    $u: sync --once (checkpoint $(printf '%s' "$SYNC_OUT" | checkpoint_of), $SYNC_TIME) sees: $(query "$u" "SELECT owner_id, description FROM todos WHERE id = '$TODO_ID'" | pretty)"
  done
  info "write → both databases: $(since "$t")"
fi

# ---------------------------------------------------------------- 7. usage --
step "Done in $(since "$T_ALL")"
if [ "$STOP" = 1 ]; then
  stop_relay
  info "relay stopped (--stop)."
  exit 0
fi
cat <<EOF

  The relay is still running: $ENDPOINT  (pid $RELAY_PID, $PIDFILE, log $DIR/relay.log)
  Database: psql "$PG dbname=$DBNAME"

  Tokens (valid 24 h):
    export ALICE=\$(cat $DIR/alice.token) BOB=\$(cat $DIR/bob.token)

  Try:
    $CLIENT sync  --db $DIR/bob.db --endpoint $ENDPOINT --token "\$BOB"      # live; Ctrl-C to stop
    psql "$PG dbname=$DBNAME" -c "UPDATE todos SET completed = true WHERE id = '$TODO_ID'"
    $CLIENT query --db $DIR/bob.db "SELECT * FROM todos WHERE id = '$TODO_ID'"
    $CLIENT exec  --db $DIR/alice.db "UPDATE todos SET description = 'Buy oat milk' WHERE id = '$TODO_ID'"
    $CLIENT sync  --db $DIR/alice.db --endpoint $ENDPOINT --token "\$ALICE" --once
    $CLIENT status --db $DIR/alice.db
    curl -s $ENDPOINT/metrics | head

  Stop the relay:
    scripts/demo.sh --stop-only        # or: kill \$(cat $PIDFILE)
EOF
