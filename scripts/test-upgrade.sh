#!/usr/bin/env bash
# Extension upgrade test: for every upgrade script sql/outpost--A--B.sql, a
# database created at version A and brought up with `ALTER EXTENSION outpost
# UPDATE` must have exactly the schema of a fresh `CREATE EXTENSION outpost`
# at the current version. Until the first version bump there is no upgrade
# script, and the script says so and exits 0.
#
#   scripts/test-upgrade.sh                     # the dev cluster (127.0.0.1:5432)
#   PGPORT=5433 scripts/test-upgrade.sh         # another cluster (test-package.sh does this)
#
# Needs, for each start version A, the install script that version A shipped,
# frozen in sql/released/outpost--A.sql (copied from A's release archive,
# extension/outpost--A.sql, when A was released; never edited). The current
# version's library and SQL must be installed in the server (scripts/setup.sh or
# the release archive's install.sh); this script copies the upgrade scripts and
# the frozen old install scripts into `pg_config --sharedir`/extension when they
# are missing there, and removes what it added when it exits.
#
# Comparison: `pg_dump --schema-only --binary-upgrade` of each database (the
# only pg_dump mode that writes an extension's member objects — a plain
# `pg_dump -n outpost` prints just `CREATE SCHEMA outpost`, since members are
# recreated by CREATE EXTENSION), minus lines that differ between any two
# databases (OIDs, relfrozenxid, \restrict keys). A column that an upgrade adds
# with ALTER TABLE lands last; the fresh install script must declare it last too.
#
# Environment: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres),
# PG_CONFIG (/usr/bin/pg_config), OUTPOST_SQL_DIR (sql/; for testing this script).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
SQL_DIR=${OUTPOST_SQL_DIR:-$ROOT/sql}

log() { printf '\033[1m[test-upgrade]\033[0m %s\n' "$*" >&2; }
die() {
  printf '\033[1;31m[test-upgrade] FAIL: %s\033[0m\n' "$*" >&2
  exit 1
}

shopt -s nullglob
upgrades=("$SQL_DIR"/outpost--*--*.sql)
shopt -u nullglob
if [ ${#upgrades[@]} -eq 0 ]; then
  log "no upgrade scripts yet ($SQL_DIR/outpost--A--B.sql), nothing to compare"
  exit 0
fi

command -v pg_dump >/dev/null || die "pg_dump not found"
pg_isready -q || die "Postgres is not up on $PGHOST:$PGPORT (scripts/setup.sh starts the dev cluster)"
psql_q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

# The version this tree builds (workspace version = the control file's default_version).
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
[ -n "$VERSION" ] || die "cannot read [workspace.package] version from Cargo.toml"
installed=$(psql_q -d postgres -c "SELECT default_version FROM pg_available_extensions WHERE name = 'outpost'")
[ -n "$installed" ] || die "extension outpost is not installed in the server on $PGHOST:$PGPORT"
[ "$installed" = "$VERSION" ] ||
  die "the server has outpost $installed installed, this tree is $VERSION; install the current build first (scripts/setup.sh, or make package + install.sh)"

extdir=$("$PG_CONFIG" --sharedir)/extension
added=()
dbs=()
cleanup() {
  for db in "${dbs[@]}"; do
    psql_q -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  for f in "${added[@]}"; do rm -f "$f"; done
}
trap cleanup EXIT

# Make a file available to the server; refuse to replace a different one.
provide() { # provide SRC
  local dest=$extdir/$(basename "$1")
  if [ -f "$dest" ]; then
    cmp -s "$1" "$dest" || die "$dest differs from $1; an install script or upgrade script must never change once released"
  else
    cp "$1" "$dest" || die "cannot copy $1 to $extdir (run as root or the owner of the Postgres installation)"
    added+=("$dest")
  fi
}

froms=()
for u in "${upgrades[@]}"; do
  name=$(basename "$u" .sql) # outpost--A--B
  rest=${name#outpost--}
  from=${rest%%--*}
  to=${rest#*--}
  [ -n "$from" ] && [ -n "$to" ] && [ "$from" != "$to" ] || die "$u is not named outpost--A--B.sql"
  provide "$u"
  froms+=("$from")
done

dump() { # dump DB → normalized schema on stdout
  pg_dump --schema-only --binary-upgrade --no-owner -d "$1" |
    awk '
      /^UPDATE pg_catalog\.pg_class$/ { skip = 1 }      # relfrozenxid of heap and toast, by OID
      skip { if ($0 ~ /;$/) skip = 0; next }
      /^\\(restrict|unrestrict) / { next }               # random key per dump
      /binary_upgrade_set_next_/ { next }                # OIDs and relfilenodes
      /^-- (Dumped|Started|Completed)/ { next }
      { print }' |
    sed -E "s/^(SELECT pg_catalog\.binary_upgrade_create_empty_extension\('outpost', 'outpost', (true|false), '[^']*').*/\1, …);/"
}

WORK=$(mktemp -d)
trap 'cleanup; rm -rf "$WORK"' EXIT
fresh=outpost_upgrade_fresh
dbs+=("$fresh")
psql_q -d postgres -c "DROP DATABASE IF EXISTS $fresh WITH (FORCE)" -c "CREATE DATABASE $fresh"
psql_q -d "$fresh" -c "CREATE EXTENSION outpost"
dump "$fresh" >"$WORK/fresh.sql"
[ -s "$WORK/fresh.sql" ] && grep -q 'CREATE FUNCTION outpost.tick()' "$WORK/fresh.sql" ||
  die "the dump of a fresh install does not contain the extension's objects (pg_dump --binary-upgrade changed?)"

failed=0
for from in $(printf '%s\n' "${froms[@]}" | sort -u); do
  old=$SQL_DIR/released/outpost--$from.sql
  [ -f "$old" ] || die "missing $old: the install script version $from shipped. Copy extension/outpost--$from.sql from the $from release archive (or build tag v$from with 'make package') into $SQL_DIR/released/ and commit it"
  provide "$old"
  db=outpost_upgrade_from_${from//[^0-9a-zA-Z]/_}
  dbs+=("$db")
  log "$from → $VERSION: CREATE EXTENSION outpost VERSION '$from'; ALTER EXTENSION outpost UPDATE"
  psql_q -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
  psql_q -d "$db" -c "CREATE EXTENSION outpost VERSION '$from'" ||
    die "CREATE EXTENSION outpost VERSION '$from' failed (the current library must still provide every C function version $from declares)"
  psql_q -d "$db" -c "ALTER EXTENSION outpost UPDATE" ||
    die "ALTER EXTENSION outpost UPDATE from $from failed"
  got=$(psql_q -d "$db" -c "SELECT extversion FROM pg_extension WHERE extname = 'outpost'")
  [ "$got" = "$VERSION" ] ||
    die "after ALTER EXTENSION outpost UPDATE from $from the version is $got, not $VERSION: no chain of upgrade scripts leads from $from to $VERSION"
  dump "$db" >"$WORK/from-$from.sql"
  if diff -u --label "fresh install $VERSION" --label "upgraded from $from" "$WORK/fresh.sql" "$WORK/from-$from.sql" >"$WORK/diff-$from"; then
    log "ok: upgraded from $from = fresh install of $VERSION"
  else
    cat "$WORK/diff-$from" >&2
    printf '\033[1;31m[test-upgrade] FAIL: the schema upgraded from %s differs from a fresh install of %s (diff above: - fresh, + upgraded)\033[0m\n' "$from" "$VERSION" >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
log "all upgrade paths match a fresh install"
