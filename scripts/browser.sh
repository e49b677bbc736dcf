#!/usr/bin/env bash
# Install Debian's chromium for the UI tests (tests/ui drive it with Playwright through `executable_path`,
# so nothing is downloaded by Playwright). Idempotent: an installed chromium is left as it is.
#
# `make test` calls this. Without root (or apt-get) it says what is missing and tests/ui skip;
# with FSTORE_REQUIRE_SERVICES=1 (CI) a browser that cannot be had is an error.
set -uo pipefail

require=${FSTORE_REQUIRE_SERVICES:-0}
fail() {
  echo "browser: $*" >&2
  if [ "$require" = 1 ]; then exit 1; fi
  echo "browser: tests/ui will skip" >&2
  exit 0
}

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  fail "chromium is missing (install Debian's chromium package, or run as root with apt-get)"
fi
echo "browser: installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || fail "apt-get update failed"
apt-get install -y -qq chromium >/dev/null || fail "apt-get install chromium failed"
command -v chromium >/dev/null 2>&1 || fail "chromium is still missing after apt-get install"
