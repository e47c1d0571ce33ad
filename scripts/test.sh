#!/usr/bin/env bash
# Runs every Ward test: Rust unit and integration tests (with real
# redis-server processes), the browser end-to-end test in headless Chromium,
# and the deployment checks (Helm chart, manifests, dashboards, image).
#
# Installs what the tests need when it is missing, so it works on a fresh
# Debian machine with a Rust toolchain. Usage: scripts/test.sh
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

apt_updated=""
apt_install() {
  # Installs Debian packages, running `apt-get update` once per run.
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

install_missing() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

rust_tests() {
  say "cargo test (unit and integration tests)"
  cargo build --release --locked
  cargo test --locked --no-fail-fast
}

browser_tests() {
  say "browser end-to-end test (headless Chromium)"
  (
    cd tests/e2e
    if [ ! -d node_modules/playwright-core ]; then
      npm ci --no-audit --no-fund
    fi
    WARD_BIN="$root/target/release/ward" node --test
  )
}

deploy_checks() {
  say "deployment checks (chart, manifests, dashboards, alerts, image)"
  WARD_BIN="$root/target/release/ward" bash scripts/check-deploy.sh
}

install_missing
rust_tests
browser_tests
if [ -f scripts/check-deploy.sh ]; then
  deploy_checks
fi
say "all tests passed"
