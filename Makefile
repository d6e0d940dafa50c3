# Outpost — the two commands for a fresh machine are `make demo` and `make test`.
# Each runs scripts/setup.sh first (idempotent: packages, cargo-pgrx, a Postgres
# 15 cluster on 127.0.0.1:5432, the extension installed).

SHELL := /bin/bash
CARGO ?= cargo
export OUTPOST_TEST_DATABASE_URL ?= host=127.0.0.1 port=5432 user=postgres dbname=postgres

.PHONY: setup test test-unit test-integration test-faults demo bench lint fmt install-ext package test-package test-compat

setup:
	@scripts/setup.sh

install-ext: setup

## make test: every test tier (unit, integration on real Postgres).
test: setup lint
	$(CARGO) test --workspace --exclude outpost --no-fail-fast

## Tier 2 only: the integration tests on real Postgres (tests/tests/*).
test-integration: setup
	$(CARGO) test -p outpost-tests --no-fail-fast

## make test-faults: Postgres restarted under a running relay and client, on a
## dedicated cluster (15/faults on 127.0.0.1:5434, created if needed, stopped after).
test-faults: setup
	@scripts/test-faults.sh

## Tier 1 only: pure crates, no Postgres needed.
test-unit:
	$(CARGO) test -p outpost-protocol -p outpost-rules -p outpost-relay -p outpost-client -p outpost-cli --lib --bins --tests

## make demo: Postgres + extension + relay + two clients syncing demo data.
demo: setup
	@scripts/demo.sh $(ARGS)

## make bench: the benchmark suite; writes bench-results/bench.md.
bench: setup
	$(CARGO) run --release -p outpost-tests --bin outpost-bench

## make lint: formatting and clippy (warnings are errors); part of `make test`.
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## make package: dist/outpost-<version>-pg15-debian12-x86_64.tar.gz (extension
## + install.sh) and stripped release binaries dist/outpost-relay, dist/outpost.
package:
	@SKIP_EXTENSION=1 scripts/setup.sh
	@scripts/package.sh

## make test-package: `make package`, then install the archive with its
## install.sh into a second cluster (15/pkgtest on 127.0.0.1:5433), sync there.
test-package:
	@SKIP_EXTENSION=1 scripts/setup.sh
	@scripts/test-package.sh

## make test-compat: PowerSync's own Node SDK (compat/powersync-node, pinned)
## syncs from outpost-relay; needs Node 20+ and npm.
test-compat: setup
	@scripts/test-compat.sh
