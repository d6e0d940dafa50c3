#!/usr/bin/env bash
# Fault tests that restart Postgres (tests/tests/faults_postgres.rs), on a
# DEDICATED cluster 15/faults on 127.0.0.1:5434 (FAULTS_PORT) so that
# restarting it never disturbs other tests. Creates the cluster if needed
# (trust auth on loopback, idempotent), runs the #[ignore]d tests against it,
# and stops it at the end. The extension must be installed (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=15
CLUSTER=faults
PORT=${FAULTS_PORT:-5434}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { printf '\033[1m[test-faults]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[test-faults] FAIL: %s\033[0m\n' "$*" >&2; exit 1; }
for tool in pg_createcluster pg_ctlcluster pg_lsclusters pg_isready; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/setup.sh installs Postgres)"
done
T0=$(date +%s)

stop_cluster() {
  local rc=$?
  if pg_lsclusters -h | awk -v v="$PG_MAJOR" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
    $SUDO pg_ctlcluster "$PG_MAJOR" "$CLUSTER" stop -m fast >/dev/null 2>&1 || true
    log "cluster $PG_MAJOR/$CLUSTER stopped"
  fi
  [ "$rc" -eq 0 ] && log "PASS in $(($(date +%s) - T0)) s"
}
trap stop_cluster EXIT

status=$(pg_lsclusters -h | awk -v v="$PG_MAJOR" -v c="$CLUSTER" '$1==v && $2==c {print $3" "$4}')
if [ -z "$status" ]; then
  if pg_isready -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
    die "port $PORT is taken by another server; set FAULTS_PORT"
  fi
  log "creating cluster $PG_MAJOR/$CLUSTER on port $PORT"
  $SUDO pg_createcluster "$PG_MAJOR" "$CLUSTER" -p "$PORT" -- --auth=trust >/dev/null
  status=$(pg_lsclusters -h | awk -v v="$PG_MAJOR" -v c="$CLUSTER" '$1==v && $2==c {print $3" "$4}')
fi
read -r cport cstate <<<"$status"
[ "$cport" = "$PORT" ] ||
  die "cluster $PG_MAJOR/$CLUSTER exists on port $cport, not $PORT; set FAULTS_PORT=$cport or drop it (pg_dropcluster --stop $PG_MAJOR $CLUSTER)"
confdir=/etc/postgresql/$PG_MAJOR/$CLUSTER
hba=$confdir/pg_hba.conf
if grep -Eq '^(local|host)\s.*(peer|scram-sha-256|md5)\s*$' "$hba"; then
  $SUDO sed -i -E 's/^((local|host)\s.*)(peer|scram-sha-256|md5)\s*$/\1trust/' "$hba"
fi
conf=$confdir/conf.d/outpost-faults.conf
if [ ! -f "$conf" ]; then
  $SUDO mkdir -p "$confdir/conf.d"
  printf "listen_addresses = '127.0.0.1'\nmax_connections = 100\n" | $SUDO tee "$conf" >/dev/null
fi
if [ "$cstate" = online ]; then
  $SUDO pg_ctlcluster "$PG_MAJOR" "$CLUSTER" restart
else
  $SUDO pg_ctlcluster "$PG_MAJOR" "$CLUSTER" start
fi
for _ in $(seq 1 100); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.1
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "cluster $PG_MAJOR/$CLUSTER is not accepting connections on 127.0.0.1:$PORT"

export OUTPOST_TEST_DATABASE_URL="host=127.0.0.1 port=$PORT user=postgres dbname=postgres"
export OUTPOST_FAULTS_CLUSTER="$PG_MAJOR/$CLUSTER"
log "running tests/tests/faults_postgres.rs against $OUTPOST_TEST_DATABASE_URL"
# The workspace selection keeps the feature set of `make test` (no rebuild).
${CARGO:-cargo} test --workspace --exclude outpost --test faults_postgres -- --ignored --nocapture --test-threads=1
