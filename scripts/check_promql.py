#!/usr/bin/env python3
"""Runs the PromQL that Ward's operators rely on against a live Prometheus.

  check_promql.py wait      PROM QUERY           until QUERY has a result
  check_promql.py dashboard PROM DASHBOARD --var job=ward --need TITLE ...
  check_promql.py rules     PROM RULES           every rule evaluates cleanly
  check_promql.py adapter   PROM ADAPTER_VALUES  the HPA metric has data

PROM is the base URL (http://127.0.0.1:9090). Exits 1 with the failing
query and Prometheus's error on any failure.
"""

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request

import yaml

DEADLINE = 60.0
# Grafana's built-in variables, as a short live test needs them.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def get(prom, path, **params):
    url = f"{prom}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        return json.load(err)


def query(prom, expr):
    """The result list of an instant query; fails on a PromQL error."""
    answer = get(prom, "/api/v1/query", query=expr)
    if answer.get("status") != "success":
        fail(f"query {expr!r}: {answer.get('errorType')}: {answer.get('error')}")
    return answer["data"]["result"]


def poll(what, probe):
    """Calls probe() until it returns a true value or the deadline passes;
    a server that does not answer yet counts as no value."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            value = probe()
        except (ConnectionError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    fail(f"no {what} within {DEADLINE:.0f}s")


def cmd_wait(args):
    poll(f"result for {args.query!r}", lambda: query(args.prom, args.query))
    print(f"{args.query} has data")


def substitute(expr, variables):
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${%s}" % name, value).replace("$" + name, value)
    if "$" in expr:
        fail(f"unknown variable left in {expr!r}")
    return expr


def panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def check_variables(prom, dashboard):
    """Each `label_values(selector, label)` variable must offer a value."""
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        definition = var["query"]["query"]
        inner = definition.removeprefix("label_values(").removesuffix(")")
        selector, label = (part.strip() for part in inner.rsplit(",", 1))
        selector = substitute(selector, {"job": "ward", "instance": ".+"})
        if not query(prom, f"group by ({label}) ({selector})"):
            fail(f"variable {var['name']}: {definition} offers no value")


def cmd_dashboard(args):
    dashboard = json.load(open(args.file))
    variables = dict(BUILTINS, **dict(v.split("=", 1) for v in args.var))
    check_variables(args.prom, dashboard)
    titles, count = set(), 0
    for panel in panels(dashboard):
        titles.add(panel["title"])
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], variables)
            result = query(args.prom, expr)
            count += 1
            if panel["title"] in args.need and not result:
                fail(f"panel {panel['title']!r}: {expr!r} returned no data")
    missing = set(args.need) - titles
    if missing:
        fail(f"no panel titled {sorted(missing)}")
    print(f"{count} dashboard queries ran; {len(args.need)} panels have data")


def rule_health(prom, names):
    """Rules of `names` that have been evaluated, or None while some have not."""
    groups = get(prom, "/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"] if r["name"] in names]
    if len(rules) < len(names) or any(r["lastEvaluation"].startswith("0001") for r in rules):
        return None
    return rules


def cmd_rules(args):
    rules = [r for g in yaml.safe_load(open(args.file))["groups"] for r in g["rules"]]
    for rule in rules:
        query(args.prom, rule["expr"])
    names = {r.get("alert") or r.get("record") for r in rules}
    evaluated = poll("evaluation of every rule", lambda: rule_health(args.prom, names))
    broken = [f"{r['name']}: {r.get('lastError')}" for r in evaluated if r["health"] != "ok"]
    if broken:
        fail("rules fail to evaluate: " + "; ".join(broken))
    print(f"{len(rules)} rules query and evaluate cleanly")


def cmd_adapter(args):
    rules = yaml.safe_load(open(args.file))["rules"]["custom"]
    for rule in rules:
        query(args.prom, rule["seriesQuery"])
        series = rule["name"]["as"]
        expr = (rule["metricsQuery"].replace("<<.Series>>", series)
                .replace("<<.LabelMatchers>>", args.matchers)
                .replace("<<.GroupBy>>", args.group_by))
        if not query(args.prom, expr):
            fail(f"adapter query {expr!r} returned no data")
    print(f"{len(rules)} adapter rules return data")


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wait")
    w.add_argument("prom")
    w.add_argument("query")
    d = sub.add_parser("dashboard")
    d.add_argument("prom")
    d.add_argument("file")
    d.add_argument("--var", action="append", default=[], help="NAME=VALUE")
    d.add_argument("--need", action="append", default=[], help="panel title")
    r = sub.add_parser("rules")
    r.add_argument("prom")
    r.add_argument("file")
    a = sub.add_parser("adapter")
    a.add_argument("prom")
    a.add_argument("file")
    a.add_argument("--matchers", default='job="ward"')
    a.add_argument("--group-by", default="instance")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = parse()
    {"wait": cmd_wait, "dashboard": cmd_dashboard, "rules": cmd_rules,
     "adapter": cmd_adapter}[ARGS.command](ARGS)
