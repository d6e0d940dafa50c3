#!/usr/bin/env bash
# Installs the Postgres extension `outpost` from this release archive into the
# Postgres that `pg_config` describes. Shipped as install.sh at the top of
# outpost-<version>-pg<major>-<os>-<arch>.tar.gz (built by scripts/package.sh);
# needs bash, coreutils and pg_config — no Rust, no compiler.
#
#   sudo ./install.sh                               # pg_config from PATH
#   sudo PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config ./install.sh
#   DESTDIR=/tmp/stage ./install.sh                 # stage under a root (packaging, tests)
#   ./install.sh --dry-run                          # print what would be copied, copy nothing
#
# Files go to `pg_config --pkglibdir` (outpost.so) and
# `pg_config --sharedir`/extension (control file, install and upgrade SQL).
# Each file is written next to its destination and renamed over it, so a
# backend that has the old library mapped keeps running. Then, in each
# database: CREATE EXTENSION outpost;  (or ALTER EXTENSION outpost UPDATE;)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run | -n) DRY_RUN=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "install.sh: unknown argument '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

die() {
  printf 'install.sh: error: %s\n' "$*" >&2
  exit 1
}
say() { printf 'install.sh: %s\n' "$*"; }

# What this archive was built for (written by scripts/package.sh).
[ -f "$HERE/BUILD_INFO" ] || die "BUILD_INFO missing next to install.sh; run install.sh from the unpacked archive"
build_info() { sed -n "s/^$1=//p" "$HERE/BUILD_INFO"; }
EXT_VERSION=$(build_info version)
PG_MAJOR=$(build_info pg_major)
[ -n "$EXT_VERSION" ] && [ -n "$PG_MAJOR" ] || die "BUILD_INFO lacks version or pg_major"

[ -f "$HERE/lib/outpost.so" ] || die "lib/outpost.so missing from the archive"
[ -f "$HERE/extension/outpost.control" ] || die "extension/outpost.control missing from the archive"
[ -f "$HERE/extension/outpost--$EXT_VERSION.sql" ] || die "extension/outpost--$EXT_VERSION.sql missing from the archive"

# pg_config: $PG_CONFIG, else the one on PATH, else Debian's for this major.
if [ -n "${PG_CONFIG:-}" ]; then
  [ -x "$PG_CONFIG" ] || command -v "$PG_CONFIG" >/dev/null 2>&1 ||
    die "PG_CONFIG=$PG_CONFIG is not an executable pg_config"
elif command -v pg_config >/dev/null 2>&1; then
  PG_CONFIG=pg_config
elif [ -x "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" ]; then
  PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
else
  die "pg_config not found. Install Postgres $PG_MAJOR's pg_config (Debian: package postgresql-$PG_MAJOR or libpq-dev) or set PG_CONFIG=/path/to/pg_config"
fi

pg_version=$("$PG_CONFIG" --version 2>/dev/null) || die "'$PG_CONFIG --version' failed"
# "PostgreSQL 15.18 (Debian ...)" → 15
pg_major=$(printf '%s\n' "$pg_version" | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')
[ -n "$pg_major" ] || die "cannot read the Postgres version from '$PG_CONFIG --version': $pg_version"
if [ "$pg_major" != "$PG_MAJOR" ]; then
  die "this archive is built for Postgres $PG_MAJOR, but $PG_CONFIG is $pg_version. Use the archive for Postgres $pg_major, or point PG_CONFIG at Postgres $PG_MAJOR's pg_config"
fi

pkglibdir=$("$PG_CONFIG" --pkglibdir) || die "'$PG_CONFIG --pkglibdir' failed"
sharedir=$("$PG_CONFIG" --sharedir) || die "'$PG_CONFIG --sharedir' failed"
[ -n "$pkglibdir" ] && [ -n "$sharedir" ] || die "$PG_CONFIG reported an empty --pkglibdir or --sharedir"
DESTDIR=${DESTDIR:-}
libdest=$DESTDIR$pkglibdir
extdest=$DESTDIR$sharedir/extension

say "outpost $EXT_VERSION for $pg_version ($PG_CONFIG)"
say "library:   $libdest/outpost.so"
say "SQL files: $extdest/"

if [ -z "$DESTDIR" ]; then
  [ -d "$pkglibdir" ] || die "pkglibdir $pkglibdir does not exist; is Postgres $PG_MAJOR installed here?"
  [ -d "$sharedir" ] || die "sharedir $sharedir does not exist; is Postgres $PG_MAJOR installed here?"
fi

# Every file of the archive and where it goes.
files=("lib/outpost.so:$libdest:755")
for f in "$HERE"/extension/*; do
  files+=("extension/$(basename "$f"):$extdest:644")
done

if [ "$DRY_RUN" = 1 ]; then
  for entry in "${files[@]}"; do
    IFS=: read -r src dir mode <<<"$entry"
    say "would copy $src -> $dir/$(basename "$src") (mode $mode)"
  done
  exit 0
fi

if [ -n "$DESTDIR" ]; then
  mkdir -p "$libdest" "$extdest" || die "cannot create $libdest or $extdest"
fi
for dir in "$libdest" "$extdest"; do
  [ -d "$dir" ] || die "$dir does not exist (Postgres $PG_MAJOR's server files are expected there)"
  [ -w "$dir" ] || die "no permission to write $dir; run as root (sudo ./install.sh) or as the owner of the Postgres installation"
done

for entry in "${files[@]}"; do
  IFS=: read -r src dir mode <<<"$entry"
  name=$(basename "$src")
  tmp="$dir/.$name.outpost-install.$$"
  # Write beside the destination, then rename: never truncate a library that
  # running backends have mapped.
  if ! cp "$HERE/$src" "$tmp" || ! chmod "$mode" "$tmp" || ! mv -f "$tmp" "$dir/$name"; then
    rm -f "$tmp"
    die "copying $src to $dir/$name failed"
  fi
  say "installed $dir/$name"
done

say "done. In each database: CREATE EXTENSION outpost;  (already installed: ALTER EXTENSION outpost UPDATE;)"
