#!/usr/bin/env bash
# PowerSync's Node SDK for compat/powersync-node/ (`make test-compat`, and the
# bench's `latency-official` section): `npm ci` when node_modules is missing,
# stale against package-lock.json, or lacks better-sqlite3's native module
# (compiled from source the first time, ~80 s; needs python3, make, g++).
# Idempotent: does nothing when all is in place. Prints the versions in use.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=compat/powersync-node
command -v node >/dev/null || { echo "compat-deps: node not found (Node 20+ needed)" >&2; exit 1; }
command -v npm >/dev/null || { echo "compat-deps: npm not found" >&2; exit 1; }
if [ ! -f "$PKG/node_modules/.package-lock.json" ] || ! cmp -s "$PKG/package-lock.json" "$PKG/node_modules/.outpost-lock" ||
  [ ! -f "$PKG/node_modules/better-sqlite3/build/Release/better_sqlite3.node" ]; then
  (cd "$PKG" && npm ci --no-audit --no-fund) >&2
  [ -f "$PKG/node_modules/better-sqlite3/build/Release/better_sqlite3.node" ] || {
    echo "compat-deps: better-sqlite3 was not built (its install script must run; needs python3, make, g++)" >&2
    exit 1
  }
  cp "$PKG/package-lock.json" "$PKG/node_modules/.outpost-lock"
fi
echo "@powersync/node $(node -p "require('./$PKG/node_modules/@powersync/node/package.json').version"), @powersync/common $(node -p "require('./$PKG/node_modules/@powersync/common/package.json').version"), better-sqlite3 $(node -p "require('./$PKG/node_modules/better-sqlite3/package.json').version"), node $(node -v)"
