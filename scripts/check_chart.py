#!/usr/bin/env python3
"""Checks of the Helm chart with Helm's own engine (helm_python), no cluster.

  check_chart.py render VALUES|default OUTDIR   lint strictly, render to OUTDIR
  check_chart.py reject VALUES                  the chart must refuse VALUES
  check_chart.py invariants OUTDIR              rules every rendering keeps
  check_chart.py rules OUTDIR                   PrometheusRule == files/ rules
  check_chart.py config OUTDIR                  print the rendered ward.toml
  check_chart.py documented                     every values key has `# --`
  check_chart.py boot OUTDIR BINARY REDIS_URL PEM
                                                Ward starts and gets ready with
                                                the rendered config and env

Each command exits 0 when its check passes, 1 with a message otherwise.
"""

import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

import helm_python
import yaml

CHART = pathlib.Path(__file__).resolve().parent.parent / "helm" / "ward"
KUBE_VERSION = "v1.31.0"
RELEASE = "ward"
NAMESPACE = "ward"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def load_values(source):
    """Values of a case: `default` is the chart's own values.yaml alone."""
    if source == "default":
        return {}
    return yaml.safe_load(pathlib.Path(source).read_text()) or {}


def lint(values):
    """Strict lint; a warning counts as a failure."""
    report = helm_python.lint(CHART, values, strict=True, kube_version=KUBE_VERSION)
    problems = list(report.get("errors") or [])
    problems += [
        f"{m.get('path')}: {m.get('error')}"
        for m in report.get("messages") or []
        if m.get("severity", 0) >= 2
    ]
    if problems:
        fail("helm lint: " + "; ".join(problems))


def render(values):
    """Rendered manifests by template file name, empty ones dropped."""
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {
        pathlib.Path(name).name: text
        for name, text in files.items()
        if name.endswith(".yaml") and text.strip()
    }


def cmd_render(source, outdir):
    values = load_values(source)
    lint(values)
    out = pathlib.Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render(values).items():
        list(yaml.safe_load_all(text))  # must be YAML
        (out / name).write_text(text)
    print(f"rendered {source} into {outdir}")


def expected_error(path):
    """The `# expect: TEXT` line of a bad values file."""
    match = re.search(r"^# expect: (.+)$", pathlib.Path(path).read_text(), re.M)
    if not match:
        fail(f"{path} has no '# expect: TEXT' line")
    return match.group(1).strip()


def cmd_reject(path):
    expected = expected_error(path)
    try:
        render(load_values(path))
    except helm_python.HelmError as err:
        if expected not in str(err):
            fail(f"{path} was refused, but not for '{expected}': {err}")
        print(f"refused {path}: {expected}")
        return
    fail(f"{path} rendered, but the chart should refuse it ({expected})")


def documents(outdir):
    for path in sorted(pathlib.Path(outdir).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield doc


def by_kind(outdir):
    """One document per kind; the ConfigMap is the one with ward.toml."""
    kinds = {}
    for doc in documents(outdir):
        if doc["kind"] != "ConfigMap" or "ward.toml" in doc.get("data", {}):
            kinds[doc["kind"]] = doc
    return kinds


def check_selectors(docs):
    """Selectors never carry labels that change with the chart version."""
    for doc in docs:
        spec = doc.get("spec") or {}
        selector = spec.get("selector") or {}
        labels = selector.get("matchLabels", selector)
        for key in labels:
            if key in ("helm.sh/chart", "app.kubernetes.io/version"):
                fail(f"{doc['kind']} selects on {key}")


def check_pod(deploy, values):
    pod = deploy["spec"]["template"]["spec"]
    drain = values["drain"]
    grace = pod["terminationGracePeriodSeconds"]
    if grace != drain["timeoutSeconds"] + drain["graceMarginSeconds"]:
        fail(f"terminationGracePeriodSeconds {grace} is not drain timeout + margin")
    if pod.get("automountServiceAccountToken") is not False:
        fail("the pod mounts a service account token")
    if pod.get("enableServiceLinks") is not False:
        fail("the pod gets service link variables (WARD_PORT and the like)")
    if pod["securityContext"].get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail("the pod has no RuntimeDefault seccomp profile")
    (container,) = pod["containers"]
    sc = container["securityContext"]
    wanted = {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
              "allowPrivilegeEscalation": False}
    for key, value in wanted.items():
        if sc.get(key) is not value:
            fail(f"container securityContext.{key} is not {value}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail("container does not drop ALL capabilities")
    probes = {name: container[name]["httpGet"]["path"]
              for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    if probes != {"startupProbe": "/healthz", "readinessProbe": "/readyz",
                  "livenessProbe": "/healthz"}:
        fail(f"probes are {probes}")
    if "checksum/config" not in deploy["spec"]["template"]["metadata"]["annotations"]:
        fail("no checksum/config annotation on the pods")
    if not pod.get("topologySpreadConstraints"):
        fail("no topologySpreadConstraints")


def check_hpa(hpa):
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    if metrics.get("Pods", {}).get("pods", {}).get("metric", {}).get("name") != "ward_connections":
        fail("the HPA does not scale on the pods metric ward_connections")
    if metrics.get("Resource", {}).get("resource", {}).get("name") != "cpu":
        fail("the HPA has no CPU fallback")
    if hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] < 300:
        fail("the HPA scales down faster than one stabilisation window of 5 minutes")


def check_config(configmap):
    config = tomllib.loads(configmap["data"]["ward.toml"])
    if config["auth"]["mode"] != "jwt":
        fail("auth.mode is not jwt by default")
    if config["drain"] != {"delay": "5s", "spread": "10s", "timeout": "30s"}:
        fail(f"drain is {config['drain']}")


def cmd_invariants(outdir):
    """Rules of the default rendering that a refactoring must not lose."""
    kinds = by_kind(outdir)
    for kind in ("Deployment", "Service", "ConfigMap", "ServiceAccount",
                 "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        if kind not in kinds:
            fail(f"the default rendering has no {kind}")
    for kind in ("Ingress", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"):
        if kind in kinds:
            fail(f"the default rendering has a {kind}; it must be off by default")
    with helm_python.Chart.load(CHART) as chart:
        values = chart.values
    check_selectors(documents(outdir))
    check_pod(kinds["Deployment"], values)
    check_hpa(kinds["HorizontalPodAutoscaler"])
    check_config(kinds["ConfigMap"])
    if kinds["ServiceAccount"].get("automountServiceAccountToken") is not False:
        fail("the ServiceAccount mounts its token")
    print(f"invariants hold in {outdir}")


def cmd_config(outdir):
    configmap = by_kind(outdir).get("ConfigMap")
    if not configmap:
        fail(f"no ConfigMap with ward.toml in {outdir}")
    sys.stdout.write(configmap["data"]["ward.toml"])


def cmd_rules(outdir):
    """The PrometheusRule carries the rules file that promtool tests, unchanged."""
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    for doc in documents(outdir):
        if doc["kind"] == "PrometheusRule":
            if doc["spec"] != rules:
                fail("the PrometheusRule's spec differs from files/prometheus-rules.yaml")
            print("the PrometheusRule embeds files/prometheus-rules.yaml")
            return
    fail(f"no PrometheusRule in {outdir}")


# Stand-ins for the Secrets a cluster would hold, by variable name.
SECRET_STAND_INS = {
    "WARD_AUTH__JWT__SECRET": "check-hs256-key-0123456789abcdef",
    "WARD_API__TOKENS": '["check-api-token"]',
    "WARD_ESCALATION__WEBHOOK_SECRET": "check-webhook-key",
}


def pod_env(deploy):
    """The container's environment as the kubelet would build it."""
    env = {}
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in source:
            env[item["name"]] = SECRET_STAND_INS.get(item["name"], "")
        elif "fieldRef" in source:
            env[item["name"]] = "ward-check-0"
    return env


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def wait_ready(proc, url, log, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            fail(f"ward exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if http_status(url) == 200:
            return
        time.sleep(0.2)
    fail(f"{url} not 200 within {deadline:.0f}s:\n{log.read_text()[-2000:]}")


def cmd_boot(outdir, binary, redis_url, pem):
    """Starts Ward as the pod would, on loopback, with a local Redis."""
    kinds = by_kind(outdir)
    toml = kinds["ConfigMap"]["data"]["ward.toml"]
    config = tomllib.loads(toml)
    env = pod_env(kinds["Deployment"])
    port = free_port()
    # Only the broker's address and the key file's path differ from a pod.
    if "url" in config.get("redis", {}) or "WARD_REDIS__URL" in env:
        env.update(WARD_REDIS__URL=redis_url, WARD_REDIS__CLUSTER="false")
    if "public_key_file" in config["auth"].get("jwt", {}):
        env["WARD_AUTH__JWT__PUBLIC_KEY_FILE"] = pem
    with tempfile.TemporaryDirectory(prefix="ward-boot.") as tmp:
        work = pathlib.Path(tmp)
        (work / "ward.toml").write_text(toml)
        env.update(WARD_CONFIG=str(work / "ward.toml"), WARD_LISTEN=f"127.0.0.1:{port}",
                   PATH="/usr/bin:/bin")
        log = work / "ward.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([binary], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/readyz", log)
        finally:
            proc.kill()
            proc.wait()
    print(f"ward is ready with the config rendered in {outdir}")


KEY_LINE = re.compile(r"^( *)([A-Za-z_][\w.-]*):(.*)$")


def undocumented_keys(lines):
    """Leaf keys with no `# --` comment on themselves or on a parent key."""
    stack, doc, missing = [], False, []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            doc = doc or stripped.startswith("# --")
            continue
        match = KEY_LINE.match(line)
        if match:
            indent, key, rest = len(match[1]), match[2], match[3].strip()
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = doc or any(d for _, _, d in stack)
            if rest and not rest.startswith("#") and not documented:
                missing.append(f"line {number}: {'.'.join([k for _, k, _ in stack] + [key])}")
            stack.append((indent, key, documented))
        doc = False
    return missing


def cmd_documented():
    missing = undocumented_keys((CHART / "values.yaml").read_text().splitlines())
    if missing:
        fail("values.yaml keys without a `# --` comment: " + ", ".join(missing))
    print("every key of values.yaml is documented")


COMMANDS = {"documented": cmd_documented, "render": cmd_render, "reject": cmd_reject, "invariants": cmd_invariants,
            "config": cmd_config, "rules": cmd_rules, "boot": cmd_boot}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(__doc__)
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except helm_python.HelmError as err:
        fail(str(err))
