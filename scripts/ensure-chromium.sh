#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
echo "==> installing chromium from Debian's packages (browser tests)"
if ! command -v apt-get >/dev/null; then
  echo "error: /usr/bin/chromium is missing and apt-get is not available; install Chromium by hand" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq || { echo "error: apt-get update failed (no package registry?)" >&2; exit 1; }
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
  || { echo "error: apt-get install chromium failed" >&2; exit 1; }
echo "==> chromium installed: $(/usr/bin/chromium --version 2>/dev/null || echo unknown)"
