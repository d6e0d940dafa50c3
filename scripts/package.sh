#!/usr/bin/env bash
# Release artifacts in dist/ (`make package`, which runs scripts/setup.sh
# without the extension install first):
#
#   dist/outpost-<version>-pg15-debian12-x86_64.tar.gz
#       the extension: lib/outpost.so, extension/outpost.control,
#       extension/outpost--<version>.sql (+ any upgrade scripts
#       sql/outpost--A--B.sql), install.sh (scripts/install-extension.sh),
#       BUILD_INFO, SHA256SUMS. Built with `cargo pgrx package` against
#       /usr/bin/pg_config (override: PG_CONFIG).
#   dist/outpost-relay, dist/outpost
#       the relay and the client CLI, release builds, stripped.
#   dist/SHA256SUMS
#
# dist/ is recreated on every run. Needs what scripts/setup.sh installs
# (postgresql-server-dev-15, libclang-dev, cargo-pgrx 0.18.1 initialised for pg15).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PG_MAJOR=15
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
CARGO=${CARGO:-cargo}
OS_TAG=debian12
DIST=$ROOT/dist
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac

log() { printf '\033[1m[package]\033[0m %s\n' "$*" >&2; }
die() {
  printf '\033[1;31m[package] error: %s\033[0m\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
T0=$(now_ms)

# ------------------------------------------------------------ preconditions --
command -v "$CARGO" >/dev/null || die "cargo not found"
[ -x "$PG_CONFIG" ] || die "PG_CONFIG=$PG_CONFIG not found (install postgresql-server-dev-$PG_MAJOR; scripts/setup.sh does)"
pg_version=$("$PG_CONFIG" --version)
case "$pg_version" in
  "PostgreSQL $PG_MAJOR".*) ;;
  *) die "$PG_CONFIG is '$pg_version'; this package is for Postgres $PG_MAJOR" ;;
esac
"$CARGO" pgrx --version >/dev/null 2>&1 || die "cargo-pgrx is not installed (run scripts/setup.sh)"
command -v strip >/dev/null || die "strip not found (apt-get install binutils)"
arch=$(uname -m)
[ "$arch" = x86_64 ] || die "this script packages for x86_64; this machine is $arch"
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  os_id=$(. /etc/os-release && echo "${ID:-}${VERSION_ID:-}")
  [ "$os_id" = debian12 ] || log "warning: building on '$os_id', the archive is named $OS_TAG (glibc of the build machine applies)"
fi

# "path+file:///…/pg_ext#outpost@0.1.0" → 0.1.0 (the workspace version).
pkgid=$("$CARGO" pkgid --manifest-path pg_ext/Cargo.toml -p outpost)
VERSION=${pkgid##*[#@]}
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot read the extension version from cargo pkgid: $pkgid"
NAME=outpost-$VERSION-pg$PG_MAJOR-$OS_TAG-$arch
log "outpost $VERSION for $pg_version → dist/$NAME.tar.gz"

# ----------------------------------------------------------- the extension --
STAGE=$TARGET_DIR/package/outpost-pg$PG_MAJOR
rm -rf "$STAGE"
t=$(now_ms)
log "cargo pgrx package --pg-config $PG_CONFIG (release build; minutes when cold)"
(cd pg_ext && "$CARGO" pgrx package --pg-config "$PG_CONFIG" --out-dir "$STAGE") >&2 ||
  die "cargo pgrx package failed"
log "extension built in $(($(now_ms) - t)) ms"

pkglibdir=$("$PG_CONFIG" --pkglibdir)
sharedir=$("$PG_CONFIG" --sharedir)
so=$STAGE$pkglibdir/outpost.so
control=$STAGE$sharedir/extension/outpost.control
sql=$STAGE$sharedir/extension/outpost--$VERSION.sql
for f in "$so" "$control" "$sql"; do
  [ -f "$f" ] || die "cargo pgrx package did not produce $f (found: $(cd "$STAGE" && find . -type f | tr '\n' ' '))"
done
grep -q "^default_version = '$VERSION'" "$control" ||
  die "$control does not say default_version = '$VERSION': $(grep default_version "$control")"

rm -rf "$DIST"
mkdir -p "$DIST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKG=$WORK/$NAME
mkdir -p "$PKG/lib" "$PKG/extension"
cp "$so" "$PKG/lib/outpost.so"
# Symbols for debugging stay out of the shipped library; its dynamic symbol
# table (what Postgres looks up) is kept.
strip --strip-unneeded "$PKG/lib/outpost.so"
cp "$control" "$sql" "$PKG/extension/"
shopt -s nullglob
upgrades=(sql/outpost--*--*.sql)
shopt -u nullglob
for u in "${upgrades[@]}"; do
  cp "$u" "$PKG/extension/"
done
cp scripts/install-extension.sh "$PKG/install.sh"
chmod 755 "$PKG/install.sh" "$PKG/lib/outpost.so"
chmod 644 "$PKG/extension/"*
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null | head -1)" ]; then commit="$commit-dirty"; fi
cat >"$PKG/BUILD_INFO" <<EOF
name=outpost
version=$VERSION
pg_major=$PG_MAJOR
pg_version=$pg_version
os=$OS_TAG
arch=$arch
commit=$commit
pgrx=$("$CARGO" pgrx --version | awk '{print $2}')
EOF
(cd "$PKG" && find lib extension install.sh BUILD_INFO -type f | sort | xargs sha256sum >SHA256SUMS)
# Reproducible listing: sorted names, fixed owner and mtime.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}" \
  -C "$WORK" -czf "$DIST/$NAME.tar.gz" "$NAME"

# ------------------------------------------------------- relay and client --
t=$(now_ms)
log "cargo build --release -p outpost-relay -p outpost-cli"
"$CARGO" build --release --locked -p outpost-relay -p outpost-cli >&2 || die "cargo build of the binaries failed"
log "binaries built in $(($(now_ms) - t)) ms"
for b in outpost-relay outpost; do
  [ -x "$TARGET_DIR/release/$b" ] || die "$TARGET_DIR/release/$b was not built"
  cp "$TARGET_DIR/release/$b" "$DIST/$b"
  strip "$DIST/$b"
done
"$DIST/outpost-relay" --version >/dev/null || die "dist/outpost-relay does not run"

(cd "$DIST" && sha256sum "$NAME.tar.gz" outpost-relay outpost >SHA256SUMS)

log "done in $(($(now_ms) - T0)) ms; produced:"
(cd "$DIST" && stat -c '%n %s' "$NAME.tar.gz" outpost-relay outpost SHA256SUMS | awk '{printf "  dist/%-48s %10s bytes\n", $1, $2}')
printf '  contents of %s.tar.gz:\n' "$NAME"
tar -tzvf "$DIST/$NAME.tar.gz" | awk '{printf "    %-60s %10s\n", $NF, $3}'
