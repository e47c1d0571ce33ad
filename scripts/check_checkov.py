#!/usr/bin/env python3
"""Keeps the list of skipped checkov checks honest.

  check_checkov.py ids SKIPS               the IDs, comma-separated
  check_checkov.py needed SKIPS REPORT     every skipped check still fails
                                           somewhere in REPORT (checkov -o json)
  check_checkov.py explained SKIPS README  README's table explains every ID
"""

import json
import pathlib
import sys


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def skip_ids(path):
    ids = [line.split()[0] for line in pathlib.Path(path).read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    if not ids:
        fail(f"{path} lists no check")
    return ids


def failed_ids(report_path):
    reports = json.loads(pathlib.Path(report_path).read_text())
    if isinstance(reports, dict):
        reports = [reports]
    return {c["check_id"] for r in reports for c in r["results"]["failed_checks"]}


def cmd_ids(skips):
    print(",".join(skip_ids(skips)))


def cmd_needed(skips, report):
    stale = sorted(set(skip_ids(skips)) - failed_ids(report))
    if stale:
        fail(f"skipped but passing everywhere, remove from {skips}: {stale}")
    print("every skipped check is still needed")


def cmd_explained(skips, readme):
    rows = [line for line in pathlib.Path(readme).read_text().splitlines()
            if line.startswith("|")]
    missing = [i for i in skip_ids(skips) if not any(f"`{i}`" in row for row in rows)]
    if missing:
        fail(f"{readme} does not explain {missing} in a table")
    print("every skipped check is explained")


COMMANDS = {"ids": cmd_ids, "needed": cmd_needed, "explained": cmd_explained}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in COMMANDS:
        fail(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
