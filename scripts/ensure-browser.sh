#!/usr/bin/env bash
# ensure-browser.sh - Debian's chromium and chromium-driver for the explorer page's test
# (tests/test_explorer.py drives /usr/bin/chromium headless through Selenium; never a
# downloaded browser). Installs them with apt-get when missing (needs root). Idempotent.
set -euo pipefail

say() { printf 'browser: %s\n' "$*" >&2; }

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  say "ready: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
  exit 0
fi
[[ $(id -u) == 0 ]] || { say "error: chromium is missing; install it as root: apt-get install chromium chromium-driver"; exit 1; }
say "installing chromium and chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
  apt-get update -q >/dev/null 2>&1
  apt-get install -y -q chromium chromium-driver >/dev/null
}
say "ready: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
