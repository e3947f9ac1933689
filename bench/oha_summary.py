#!/usr/bin/env python3
"""Turns oha's JSON report (`--output-format json`) into the one-line summary bench/load.sh reads.

Prints `BENCH requests=N duration_us=D p50_us=.. p99_us=.. p999_us=.. failed=F deadline=A`:
requests that got an answer (any status), the run's length, latency percentiles of those requests
in microseconds (as oha measured them: with `--latency-correction`, from when each request was
due), failed = answers >= 400 plus connection errors, deadline = requests oha cut off because the
run's time was up (not failures: they were in flight at the end).
"""

import json
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: oha_summary.py OHA-JSON", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        report = json.load(f)
    statuses = {int(code): n for code, n in report["statusCodeDistribution"].items()}
    errors = report.get("errorDistribution", {})
    deadline = sum(n for what, n in errors.items() if "deadline" in what)
    other_errors = sum(n for what, n in errors.items() if "deadline" not in what)
    for what, n in errors.items():
        if "deadline" not in what:
            print(f"oha: {n} x {what}", file=sys.stderr)
    answered = sum(statuses.values())
    if answered == 0:
        print("oha: no request was answered", file=sys.stderr)
        return 1
    failed = sum(n for code, n in statuses.items() if code >= 400) + other_errors
    pct = report["latencyPercentiles"]

    def us(key: str) -> int:
        return round(pct[key] * 1e6)

    duration_us = round(report["summary"]["total"] * 1e6)
    print(
        f"BENCH requests={answered} duration_us={duration_us} p50_us={us('p50')} "
        f"p99_us={us('p99')} p999_us={us('p99.9')} failed={failed} deadline={deadline}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
