#!/usr/bin/env bash
# Release-archive test (`make test-package`): builds dist/ with
# scripts/package.sh, then, for each Postgres major's archive (15, 16, 18),
# installs the extension the way a user would — the archive and its
# install.sh, never cargo — into a second cluster of that major and syncs demo
# data there: 15/pkgtest on 127.0.0.1:5433 (Debian), and for 16 and 18 the
# wheel's installation (scripts/pg-wheel.sh; install.sh pointed at its
# pg_config) with a cluster .pg/<N>/pkgtest on 127.0.0.1:5437 / :5439.
#
# The pkgtest and dev clusters of a major run the same binaries, so they share
# one pkglibdir and sharedir (for 15: /usr/lib/postgresql/15/lib,
# /usr/share/postgresql/15/extension): installing the archive replaces the dev
# install's files (same code; the
# archive's library is stripped). That the archive's own files are what the
# server runs is proven, not assumed:
#   1. install.sh with DESTDIR into a staging root: exactly the archive's files,
#      at the paths pg_config names, with the archive's checksums;
#   2. install.sh for real (clean PATH: no cargo, no rustc): the files in the
#      server's directories have the archive's checksums (the dev install's
#      unstripped library does not, so a no-op install fails here);
#   3. in the pkgtest cluster, the backend that ran CREATE EXTENSION maps
#      outpost.so with the inode of that installed file (/proc/self/maps), and
#      the extension's version is the archive's.
# Then docker/demo.sql (schema, RLS, rules — the same file compose.yaml runs),
# writes for users u1/u2, outpost.tick() and outpost.sync_checkpoint() with
# exact bucket/count/checksum assertions, and scripts/test-upgrade.sh on the
# pkgtest cluster. install.sh's error paths (no pg_config, wrong major) are
# checked too (another major's real pg_config is refused). The pkgtest cluster
# is stopped at the end (kept on disk; created again only when missing). Safe
# to rerun.
#
# Environment: PKGTEST_MAJORS ("15 16 18"), PKGTEST_PORT (one major only;
# 5433 / 5437 / 5439), PKGTEST_SKIP_BUILD=1 (reuse dist/),
# PKGTEST_DROP_CLUSTER=1 (drop the pkgtest cluster at the end instead of stopping).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Without PKGTEST_PG: build once, then this script once per major.
if [ -z "${PKGTEST_PG:-}" ]; then
  majors=${PKGTEST_MAJORS:-15 16 18}
  if [ "${PKGTEST_SKIP_BUILD:-0}" != 1 ]; then
    printf '\n\033[1;34m[test-package] Building the release archives (scripts/package.sh)\033[0m\n' >&2
    PACKAGE_MAJORS=$majors scripts/package.sh >/dev/null || {
      printf '\033[1;31m[test-package] FAIL: scripts/package.sh failed\033[0m\n' >&2
      exit 1
    }
  fi
  for m in $majors; do
    PKGTEST_PG=$m PKGTEST_SKIP_BUILD=1 "$0" || exit 1
  done
  exit 0
fi

PG_MAJOR=$PKGTEST_PG
CLUSTER=pkgtest
DB=outpost_pkgtest
# shellcheck source=scripts/pg-wheel.sh
. scripts/pg-wheel.sh
case "$PG_MAJOR" in
  15)
    WHEEL=0
    PORT=${PKGTEST_PORT:-5433}
    SYS_PG_CONFIG=/usr/bin/pg_config
    ;;
  16 | 18)
    WHEEL=1
    PORT=${PKGTEST_PORT:-$((PG_MAJOR == 16 ? 5437 : 5439))}
    pgw_install "$PG_MAJOR"
    SYS_PG_CONFIG=$PGW_PG_CONFIG
    ;;
  *)
    printf '[test-package] PKGTEST_PG=%s: no archive for that major (15, 16, 18)\n' "$PG_MAJOR" >&2
    exit 2
    ;;
esac

step() { printf '\n\033[1;34m[test-package] %s\033[0m\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() {
  printf '\033[1;31m[test-package] FAIL: %s\033[0m\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
T0=$(now_ms)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
for tool in pg_createcluster pg_ctlcluster pg_lsclusters psql sha256sum tar; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: postgresql-common / postgresql-client; scripts/setup.sh installs them)"
done

# ------------------------------------------------------------------ build --
if [ "${PKGTEST_SKIP_BUILD:-0}" = 1 ]; then
  step "Reusing dist/ (PKGTEST_SKIP_BUILD=1)"
else
  step "Building the release archive (scripts/package.sh)"
  t=$(now_ms)
  PACKAGE_MAJORS=$PG_MAJOR scripts/package.sh >/dev/null || die "scripts/package.sh failed"
  info "built in $(($(now_ms) - t)) ms"
fi
shopt -s nullglob
archives=(dist/outpost-*-pg$PG_MAJOR-debian12-x86_64.tar.gz)
shopt -u nullglob
[ ${#archives[@]} -eq 1 ] || die "expected exactly one dist/outpost-*-pg$PG_MAJOR-debian12-x86_64.tar.gz, found ${#archives[@]} (run make package)"
ARCHIVE=$ROOT/${archives[0]}
info "archive: ${archives[0]} ($(stat -c %s "$ARCHIVE") bytes)"

WORK=$(mktemp -d)
STARTED=0
cleanup() {
  local rc=$?
  if [ "$WHEEL" = 1 ]; then
    pgw_stop "$PG_MAJOR" "$CLUSTER"
    if [ "${PKGTEST_DROP_CLUSTER:-0}" = 1 ]; then rm -rf "${PGW_DIR:?}/$CLUSTER"; fi
    info "cluster $PGW_DIR/$CLUSTER stopped"
  elif pg_lsclusters -h 2>/dev/null | awk -v v="$PG_MAJOR" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
    if [ "${PKGTEST_DROP_CLUSTER:-0}" = 1 ]; then
      $SUDO pg_dropcluster --stop "$PG_MAJOR" "$CLUSTER" >/dev/null 2>&1 || true
      info "cluster $PG_MAJOR/$CLUSTER dropped"
    else
      $SUDO pg_ctlcluster "$PG_MAJOR" "$CLUSTER" stop >/dev/null 2>&1 || true
      info "cluster $PG_MAJOR/$CLUSTER stopped"
    fi
  fi
  rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then
    printf '\033[1;32m[test-package] Postgres %s: PASS in %d ms\033[0m\n' "$PG_MAJOR" "$(($(now_ms) - T0))" >&2
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- unpack --
step "Unpacking and checking the archive"
tar -xzf "$ARCHIVE" -C "$WORK" || die "cannot unpack $ARCHIVE"
name=$(basename "$ARCHIVE" .tar.gz)
PKG=$WORK/$name
[ -d "$PKG" ] || die "the archive does not unpack into $name/"
[ -x "$PKG/install.sh" ] || die "$name/install.sh missing or not executable"
(cd "$PKG" && sha256sum --quiet -c SHA256SUMS) || die "the archive's SHA256SUMS do not match its files"
VERSION=$(sed -n 's/^version=//p' "$PKG/BUILD_INFO")
[ -n "$VERSION" ] || die "BUILD_INFO has no version"
case "$name" in "outpost-$VERSION-"*) ;; *) die "archive name $name does not carry version $VERSION" ;; esac
for f in lib/outpost.so extension/outpost.control "extension/outpost--$VERSION.sql"; do
  [ -f "$PKG/$f" ] || die "$name/$f missing"
done
grep -q "^default_version = '$VERSION'" "$PKG/extension/outpost.control" || die "control file does not say default_version = '$VERSION'"
if ldd "$PKG/lib/outpost.so" | grep -q 'not found'; then
  die "outpost.so needs libraries this machine lacks: $(ldd "$PKG/lib/outpost.so" | grep 'not found')"
fi
info "outpost $VERSION: $(cd "$PKG" && find lib extension -type f | sort | tr '\n' ' ')"
sha() { sha256sum "$1" | cut -d' ' -f1; }

# ------------------------------------------------------ install.sh errors --
step "install.sh refuses clearly: missing pg_config, wrong Postgres major"
expect_fail() { # expect_fail "WHAT" "EXPECTED MESSAGE PART" ENV...
  local what=$1 want=$2 out
  shift 2
  if out=$(env -i PATH="$CLEAN_PATH" "$@" "$PKG/install.sh" 2>&1); then
    die "install.sh succeeded $what; it must fail. Output: $out"
  fi
  grep -qF "$want" <<<"$out" || die "install.sh $what failed without saying '$want'. Output: $out"
  info "$what → $(grep -F "$want" <<<"$out" | head -1)"
}
expect_fail "with PG_CONFIG=/nonexistent" "not an executable pg_config" PG_CONFIG=/nonexistent/pg_config
# Another major's real pg_config (Debian's 15 for the wheel majors; the 18
# wheel's for 15 when it is unpacked, else a stand-in that says 16).
if [ "$WHEEL" = 1 ]; then
  other=/usr/bin/pg_config
elif (pgw_env 18 && [ -x "$PGW_PG_CONFIG" ]); then
  other=$(pgw_env 18 && echo "$PGW_PG_CONFIG")
else
  other=$WORK/pg_config16
  cat >"$other" <<'EOF'
#!/bin/sh
case "$1" in --version) echo "PostgreSQL 16.4" ;; *) echo /nonexistent ;; esac
EOF
  chmod +x "$other"
fi
expect_fail "against $("$other" --version)'s pg_config" "built for Postgres $PG_MAJOR" PG_CONFIG="$other"

# ------------------------------------------------------- staged install --
step "install.sh with DESTDIR: the archive's files at the paths pg_config names"
pkglibdir=$("$SYS_PG_CONFIG" --pkglibdir)
extdir=$("$SYS_PG_CONFIG" --sharedir)/extension
STAGE=$WORK/stage
env -i PATH="$CLEAN_PATH" PG_CONFIG="$SYS_PG_CONFIG" DESTDIR="$STAGE" "$PKG/install.sh" >"$WORK/stage.log" 2>&1 ||
  die "install.sh with DESTDIR=$STAGE failed: $(cat "$WORK/stage.log")"
expected=$( (cd "$PKG/lib" && find . -type f | sed "s|^\.|$pkglibdir|")
  (cd "$PKG/extension" && find . -type f | sed "s|^\.|$extdir|")) 
got=$(cd "$STAGE" && find . -type f | sed 's|^\.||')
[ "$(sort <<<"$expected")" = "$(sort <<<"$got")" ] ||
  die "staged files differ from the archive's. Expected: $(sort <<<"$expected" | tr '\n' ' ') Got: $(sort <<<"$got" | tr '\n' ' ')"
check_same() { # check_same ARCHIVE_FILE INSTALLED_FILE
  [ -f "$2" ] || die "$2 was not installed"
  [ "$(sha "$1")" = "$(sha "$2")" ] || die "$2 is not the archive's ${1#"$PKG"/} (sha256 $(sha "$2") vs $(sha "$1"))"
}
for f in "$PKG"/lib/*; do check_same "$f" "$STAGE$pkglibdir/$(basename "$f")"; done
for f in "$PKG"/extension/*; do check_same "$f" "$STAGE$extdir/$(basename "$f")"; done
[ "$(stat -c %a "$STAGE$pkglibdir/outpost.so")" = 755 ] || die "staged outpost.so is not mode 755"
info "$(wc -l <<<"$got") files staged under $STAGE with the archive's checksums"

# ------------------------------------------------------------ real install --
step "install.sh into the server's directories (clean PATH: no cargo)"
inode_before=$(stat -c %i "$pkglibdir/outpost.so" 2>/dev/null || echo none)
# Debian's 15: the pg_config on PATH, as a user would run it; a wheel's: named.
pg_config_env=()
if [ "$WHEEL" = 1 ]; then pg_config_env=(PG_CONFIG="$SYS_PG_CONFIG"); fi
env -i PATH="$CLEAN_PATH" "${pg_config_env[@]}" $SUDO "$PKG/install.sh" >"$WORK/install.log" 2>&1 ||
  die "install.sh failed: $(cat "$WORK/install.log")"
sed 's/^/      /' "$WORK/install.log" >&2
for f in "$PKG"/lib/*; do check_same "$f" "$pkglibdir/$(basename "$f")"; done
for f in "$PKG"/extension/*; do check_same "$f" "$extdir/$(basename "$f")"; done
SO_INODE=$(stat -c %i "$pkglibdir/outpost.so")
# install.sh renames a fresh copy into place: a new inode on every run, so the
# checks below cannot be passed by files an earlier install left behind.
[ "$SO_INODE" != "$inode_before" ] || die "install.sh did not write a new $pkglibdir/outpost.so (inode unchanged: $SO_INODE)"
info "installed files match the archive (outpost.so inode $SO_INODE)"

# --------------------------------------------------------- pkgtest cluster --
step "Cluster $PG_MAJOR/$CLUSTER on 127.0.0.1:$PORT"
if [ "$WHEEL" = 1 ]; then
  # Restarted when it runs, so no backend keeps an older library mapped.
  pgw_stop "$PG_MAJOR" "$CLUSTER"
  pgw_cluster "$PG_MAJOR" "$CLUSTER" "$PORT" >/dev/null
else
  status=$(pg_lsclusters -h | awk -v v="$PG_MAJOR" -v c="$CLUSTER" '$1==v && $2==c {print $3" "$4}')
  if [ -z "$status" ]; then
    if pg_isready -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
      die "port $PORT is taken by another server; set PKGTEST_PORT"
    fi
    info "creating it: pg_createcluster $PG_MAJOR $CLUSTER -p $PORT -- --auth=trust"
    $SUDO pg_createcluster "$PG_MAJOR" "$CLUSTER" -p "$PORT" -- --auth=trust >/dev/null ||
      die "pg_createcluster $PG_MAJOR $CLUSTER failed"
    status=$(pg_lsclusters -h | awk -v v="$PG_MAJOR" -v c="$CLUSTER" '$1==v && $2==c {print $3" "$4}')
  fi
  read -r cport cstate <<<"$status"
  [ "$cport" = "$PORT" ] ||
    die "cluster $PG_MAJOR/$CLUSTER exists on port $cport, not $PORT; remove it (pg_dropcluster --stop $PG_MAJOR $CLUSTER) or set PKGTEST_PORT=$cport"
  confdir=/etc/postgresql/$PG_MAJOR/$CLUSTER
  hba=$confdir/pg_hba.conf
  # Trust on loopback only (pg_createcluster may write peer/scram lines).
  if grep -Eq '^(local|host)\s.*(peer|scram-sha-256|md5)\s*$' "$hba"; then
    $SUDO sed -i -E 's/^((local|host)\s.*)(peer|scram-sha-256|md5)\s*$/\1trust/' "$hba"
  fi
  conf=$confdir/conf.d/outpost-pkgtest.conf
  if [ ! -f "$conf" ]; then
    $SUDO mkdir -p "$confdir/conf.d"
    printf "listen_addresses = '127.0.0.1'\n" | $SUDO tee "$conf" >/dev/null
  fi
  if [ "$cstate" = online ]; then
    # Restart: picks up the settings above, and no backend keeps an older library mapped.
    $SUDO pg_ctlcluster "$PG_MAJOR" "$CLUSTER" restart || die "cannot restart $PG_MAJOR/$CLUSTER"
  else
    $SUDO pg_ctlcluster "$PG_MAJOR" "$CLUSTER" start ||
      die "cannot start $PG_MAJOR/$CLUSTER (log: /var/log/postgresql/postgresql-$PG_MAJOR-$CLUSTER.log)"
  fi
fi
for _ in $(seq 1 100); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.1
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "cluster $PG_MAJOR/$CLUSTER is not accepting connections on 127.0.0.1:$PORT"
listen=$(psql -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "SHOW listen_addresses")
[ "$listen" = 127.0.0.1 ] || die "cluster $PG_MAJOR/$CLUSTER listens on '$listen', expected 127.0.0.1 only"
info "online (listen_addresses = $listen)"

export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
psql_q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"

# ---------------------------------------------------- the archive is loaded --
step "CREATE EXTENSION outpost loads the archive's library"
# One session: create, call a Rust function, then read this backend's mappings.
maps=$(psql_q -d "$DB" <<'SQL'
CREATE EXTENSION outpost;
SELECT 'version=' || extversion FROM pg_extension WHERE extname = 'outpost';
SELECT 'checksum=' || outpost._op_checksum('PUT', 't', '1', 's', '{}');
SELECT 'map=' || l FROM regexp_split_to_table(pg_read_file('/proc/self/maps'), E'\n') l
 WHERE l LIKE '%/outpost.so%';
SQL
) || die "CREATE EXTENSION outpost failed in $DB"
got_version=$(sed -n 's/^version=//p' <<<"$maps")
[ "$got_version" = "$VERSION" ] || die "extension version is '$got_version', the archive's is $VERSION"
grep -q '^checksum=[0-9-]' <<<"$maps" || die "outpost._op_checksum (Rust) returned nothing: $maps"
map_lines=$(grep '^map=' <<<"$maps" || true)
[ -n "$map_lines" ] || die "the backend has no outpost.so mapped after calling a Rust function: $maps"
if grep -q '(deleted)' <<<"$map_lines"; then die "the backend maps a deleted outpost.so: $map_lines"; fi
# maps columns: range perms offset dev inode path
read -r map_inode map_path <<<"$(head -1 <<<"$map_lines" | awk '{print $5, $6}')"
[ "$map_path" = "$pkglibdir/outpost.so" ] || die "the backend loaded $map_path, not $pkglibdir/outpost.so"
[ "$map_inode" = "$SO_INODE" ] ||
  die "the backend maps outpost.so inode $map_inode, but the file install.sh wrote is inode $SO_INODE"
info "extension $got_version; backend maps $map_path inode $map_inode = the installed archive file"

# ------------------------------------------------------------- demo sync --
step "docker/demo.sql: schema, write policies, rules, seed"
psql_q -d "$DB" -f docker/demo.sql >"$WORK/demo.log" 2>&1 || die "docker/demo.sql failed: $(cat "$WORK/demo.log")"
psql_q -d "$DB" -f docker/demo.sql >>"$WORK/demo.log" 2>&1 || die "docker/demo.sql is not idempotent (second run failed): $(cat "$WORK/demo.log")"
info "applied twice; rules: $(psql_q -d "$DB" -c "SELECT string_agg(name, ',') FROM outpost.buckets")"

L1=11111111-0000-4000-8000-000000000001
L2=11111111-0000-4000-8000-000000000002
L3=22222222-0000-4000-8000-000000000003
# buckets_of USER → "bucket=count,…" of sync_checkpoint, plus checkpoint.
buckets_of() {
  psql_q -d "$DB" -c "
    WITH c AS (SELECT outpost.sync_checkpoint(jsonb_build_object('sub', '$1'), '{}', 'c') AS j)
    SELECT coalesce((SELECT string_agg((b ->> 'bucket') || '=' || (b ->> 'count'), ',' ORDER BY b ->> 'bucket')
                       FROM c, jsonb_array_elements(c.j -> 'buckets') b), '')"
}
expect_buckets() { # expect_buckets USER EXPECTED WHEN
  local got
  got=$(buckets_of "$1")
  [ "$got" = "$2" ] || die "$3: sync_checkpoint for $1 has buckets [$got], expected [$2]"
  info "$3: $1 → ${2:-no buckets}"
}
check_consistent() { # every bucket's checksum = wrapping sum of its ops; checkpoint = last op
  local bad
  bad=$(psql_q -d "$DB" -c "
    SELECT string_agg(s.bucket, ', ') FROM outpost.bucket_state s
     WHERE s.checksum <> (SELECT coalesce(sum(o.checksum), 0) % 4294967296 FROM outpost.ops o WHERE o.bucket = s.bucket)
        OR s.op_count - coalesce((SELECT removed FROM outpost.compacted x WHERE x.bucket = s.bucket), 0)
           <> (SELECT count(*) FROM outpost.ops o WHERE o.bucket = s.bucket)")
  [ -z "$bad" ] || die "bucket checksums/counts do not match their ops: $bad"
  local cp last
  cp=$(psql_q -d "$DB" -c "SELECT (outpost.sync_checkpoint('{\"sub\":\"u1\"}', '{}', 'c') ->> 'checkpoint')")
  last=$(psql_q -d "$DB" -c "SELECT coalesce(max(op_id), 0) FROM outpost.ops")
  [ "$cp" = "$last" ] || die "checkpoint $cp is not the last op id $last"
}

step "Writes, outpost.tick(), outpost.sync_checkpoint()"
expect_buckets u1 "" "before any write"
psql_q -d "$DB" <<SQL || die "inserting test rows failed"
INSERT INTO lists (id, owner_id, name) VALUES
  ('$L1', 'u1', 'u1 groceries'), ('$L2', 'u1', 'u1 work'), ('$L3', 'u2', 'u2 garden');
INSERT INTO todos (id, list_id, owner_id, description)
SELECT gen_random_uuid(), l, o, 'todo ' || g
  FROM (VALUES ('$L1'::uuid, 'u1', 3), ('$L2'::uuid, 'u1', 1), ('$L3'::uuid, 'u2', 2)) v(l, o, n),
       generate_series(1, v.n) g;
SQL
pending=$(psql_q -d "$DB" -c "SELECT pending_changes FROM outpost.stats")
[ "$pending" -gt 0 ] || die "writes to synced tables queued no changes (capture triggers missing?)"
cp1=$(psql_q -d "$DB" -c "SELECT outpost.tick()")
info "tick → checkpoint $cp1 ($pending pending changes materialized)"
# A bucket per list: the list row + its todos.
expect_buckets u1 "user_lists[\"$L1\"]=4,user_lists[\"$L2\"]=2" "after the first tick"
expect_buckets u2 "user_lists[\"$L3\"]=3" "after the first tick"
expect_buckets nobody "" "a user without lists"
check_consistent

psql_q -d "$DB" <<SQL || die "updating test rows failed"
UPDATE todos SET completed = true WHERE list_id = '$L1' AND description = 'todo 1';
DELETE FROM todos WHERE list_id = '$L2';
UPDATE lists SET owner_id = 'u1' WHERE id = '$L3';
SQL
cp2=$(psql_q -d "$DB" -c "SELECT outpost.tick()")
[ "$cp2" -gt "$cp1" ] || die "the second tick did not advance the checkpoint ($cp1 → $cp2)"
info "tick → checkpoint $cp2"
# L1: +1 PUT (update); L2: +1 REMOVE; L3 moves to u1 with its lists row re-PUT (owner changed).
expect_buckets u1 "user_lists[\"$L1\"]=5,user_lists[\"$L2\"]=3,user_lists[\"$L3\"]=4" "after update/delete/re-own"
expect_buckets u2 "" "after u2's list moved to u1"
check_consistent
cp3=$(psql_q -d "$DB" -c "SELECT outpost.tick()")
[ "$cp3" = "$cp2" ] || die "a tick without writes moved the checkpoint ($cp2 → $cp3)"

# ------------------------------------------------------- upgrade scripts --
step "Extension upgrade test on the pkgtest cluster (scripts/test-upgrade.sh)"
PATH="$("$SYS_PG_CONFIG" --bindir):$PATH" PG_CONFIG=$SYS_PG_CONFIG scripts/test-upgrade.sh || die "scripts/test-upgrade.sh failed"

psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
