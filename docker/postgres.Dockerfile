# syntax=docker/dockerfile:1
# Postgres 15 (Debian 12 "bookworm", like the build machine) with the outpost
# extension installed from the release archive — exactly what a user installs.
# Build from the repository root after `make package`:
#
#   make package
#   docker build -f docker/postgres.Dockerfile -t outpost-postgres .
#
# COPY fails with "no source files were specified" when dist/ has no archive.
# The archive is x86_64, hence the platform. Not built by CI: see README "Install".
FROM --platform=linux/amd64 postgres:15-bookworm
COPY dist/outpost-*-pg15-debian12-x86_64.tar.gz /tmp/outpost/
RUN set -eu; \
    cd /tmp/outpost; \
    set -- outpost-*.tar.gz; \
    [ "$#" -eq 1 ] || { echo "expected one outpost archive in dist/, found: $*" >&2; exit 1; }; \
    tar -xzf "$1"; \
    ./"${1%.tar.gz}"/install.sh; \
    rm -rf /tmp/outpost
# No shared_preload_libraries or wal_level changes are needed: CREATE EXTENSION
# outpost in the application database (compose.yaml's setup service does).
