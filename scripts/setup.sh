#!/usr/bin/env bash
# Idempotent fresh-machine setup for Outpost development, tests and the demo
# (Debian 12, Postgres 15 from Debian packages). Safe to run again: each step
# checks before it acts.
#
#   scripts/setup.sh            # packages, cargo-pgrx, Postgres cluster, extension
#   SKIP_EXTENSION=1 scripts/setup.sh   # everything but building/installing the extension
#   PG=16 scripts/setup.sh      # also Postgres 16 (or PG=18): see below
#
# PG=16 / PG=18: Debian 12 has no such server, so that major comes from its
# pinned Python wheel (scripts/pg-wheel.sh: version and sha256 pinned, unpacked
# under .pg/<N>/), gets a cluster of its own on 127.0.0.1:5436 (16) or :5438
# (18), trust auth, and the extension built with `--features pg<N>` and
# installed into that wheel's Postgres. The Postgres 15 packages and pgrx's
# pg15 entry are set up as well (the workspace builds and lints against 15),
# but the 5432 cluster is neither created nor touched.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=15
TARGET_PG=${PG:-15}
case "$TARGET_PG" in
  15 | 16 | 18) ;;
  *)
    printf 'setup: PG=%s is not supported (15, 16 or 18; README: "Postgres versions")\n' "$TARGET_PG" >&2
    exit 2
    ;;
esac
PGRX_VERSION=0.18.1
PG_CONFIG=/usr/bin/pg_config
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# 1. Debian packages. postgresql-server-dev must match the installed server
#    exactly; unpinned, apt would upgrade the server under a running cluster.
need_pkgs=()
dpkg -s libclang-dev >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
pg_version=$(dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR" 2>/dev/null || true)
if [ -z "$pg_version" ]; then
  need_pkgs+=("postgresql-$PG_MAJOR")
elif ! dpkg -s "postgresql-server-dev-$PG_MAJOR" >/dev/null 2>&1; then
  need_pkgs+=("postgresql-server-dev-$PG_MAJOR=$pg_version")
fi
# PostGIS for 15 (PowerSync's st_* functions are tested on it: postgis_e2e.rs).
dpkg -s "postgresql-$PG_MAJOR-postgis-3" >/dev/null 2>&1 || need_pkgs+=("postgresql-$PG_MAJOR-postgis-3")
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# 2. cargo-pgrx, pinned.
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION (takes a few minutes)"
  cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
fi
# pgrx runs every pg_config its config.toml names whenever it builds, for any
# major: an entry left by another checkout (or an older path) whose pg_config
# is gone breaks every build, so such entries are dropped first.
prune_pgrx_config() {
  local cfg=${PGRX_HOME:-$HOME/.pgrx}/config.toml tmp line dropped=()
  [ -f "$cfg" ] || return 0
  tmp=$(mktemp)
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line =~ ^pg[0-9]+[[:space:]]*=[[:space:]]*\"([^\"]*)\" ]] && [ ! -x "${BASH_REMATCH[1]}" ]; then
      dropped+=("${line%%[ =]*}")
      continue
    fi
    printf '%s\n' "$line" >>"$tmp"
  done <"$cfg"
  if [ ${#dropped[@]} -gt 0 ]; then
    log "pgrx config: dropping ${dropped[*]} (their pg_config no longer exists)"
    cat "$tmp" >"$cfg"
  fi
  rm -f "$tmp"
}
prune_pgrx_config
if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
  cargo pgrx init "--pg$PG_MAJOR" "$PG_CONFIG" >/dev/null
fi

# 2b. Another major: its wheel, pgrx's entry for it, its cluster, the extension.
if [ "$TARGET_PG" != "$PG_MAJOR" ]; then
  # shellcheck source=scripts/pg-wheel.sh
  . scripts/pg-wheel.sh
  pgw_pgrx_init "$TARGET_PG"
  pgw_cluster "$TARGET_PG" main "$PGW_PORT"
  if [ "${SKIP_EXTENSION:-0}" != 1 ]; then
    log "building and installing extension outpost for Postgres $TARGET_PG"
    (cd pg_ext && cargo pgrx install --release --pg-config "$PGW_PG_CONFIG" \
      --no-default-features --features "pg$TARGET_PG" >/dev/null)
  fi
  log "ready: postgres://postgres@127.0.0.1:$PGW_PORT/postgres (Postgres $TARGET_PG)"
  exit 0
fi

# 3. A Postgres cluster on loopback with trust auth (dev/test only).
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$PG_MAJOR main$"; then
  log "creating cluster $PG_MAJOR/main"
  $SUDO pg_createcluster "$PG_MAJOR" main >/dev/null
fi
hba=/etc/postgresql/$PG_MAJOR/main/pg_hba.conf
if grep -Eq '^(local|host)\s.*(peer|scram-sha-256|md5)\s*$' "$hba"; then
  log "trust auth on loopback in $hba"
  $SUDO sed -i -E 's/^((local|host)\s.*)(peer|scram-sha-256|md5)\s*$/\1trust/' "$hba"
  restart=1
fi
conf=/etc/postgresql/$PG_MAJOR/main/conf.d/outpost.conf
if [ ! -f "$conf" ]; then
  # Loopback only; enough connections for the concurrency tests and benches.
  printf "listen_addresses = '127.0.0.1'\nmax_connections = 300\nfsync = on\n" | $SUDO tee "$conf" >/dev/null
  restart=1
fi
if pg_lsclusters -h | awk -v v="$PG_MAJOR" '$1==v && $2=="main" {print $4}' | grep -q online; then
  if [ "${restart:-0}" = 1 ]; then $SUDO pg_ctlcluster "$PG_MAJOR" main restart; fi
else
  log "starting cluster $PG_MAJOR/main"
  $SUDO pg_ctlcluster "$PG_MAJOR" main start
fi
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.2
done
pg_isready -h 127.0.0.1 -p 5432 >/dev/null || { log "Postgres did not come up on 127.0.0.1:5432"; exit 1; }

# 4. The extension, built and installed into the system Postgres.
if [ "${SKIP_EXTENSION:-0}" != 1 ]; then
  log "building and installing extension outpost"
  (cd pg_ext && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
fi
log "ready: postgres://postgres@127.0.0.1:5432/postgres"
