#!/bin/bash
# Container health check of outpost-relay: exits 0 when GET /health on the
# relay's own OUTPOST_LISTEN address answers 200 (Postgres reachable).
# Plain bash (/dev/tcp), so the slim image needs no curl.
set -euo pipefail
listen=${OUTPOST_LISTEN:-127.0.0.1:8080}
port=${listen##*:}
host=${listen%:*}
host=${host#[}
host=${host%]}
case "$host" in
  0.0.0.0 | "") host=127.0.0.1 ;;
  ::) host=::1 ;;
esac
exec 3<>"/dev/tcp/$host/$port" || {
  echo "outpost-relay-healthcheck: cannot connect to $host:$port" >&2
  exit 1
}
printf 'GET /health HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
status=""
IFS= read -r -t 5 status <&3 || true
case "$status" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *)
    echo "outpost-relay-healthcheck: GET /health answered '${status%$'\r'}'" >&2
    exit 1
    ;;
esac
