#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the browser test
# (tests/tests/browser.rs), if it is not there yet. Idempotent; prints the
# browser's path on success. Called by the test itself when the browser is
# missing, and safe to call from setup scripts.
set -euo pipefail
for b in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$b" ]; then echo "$b"; exit 0; fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "[install-chromium] installing chromium (Debian package)" >&2
$SUDO apt-get update -qq >&2 || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2
for b in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$b" ]; then echo "$b"; exit 0; fi
done
echo "[install-chromium] chromium did not install" >&2
exit 1
