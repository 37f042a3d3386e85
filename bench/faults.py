"""Reliability report (issues 8 and 13): builds killed with SIGKILL at random points and rerun, at concurrency 2
and 8, and a build against a server that injects faults. Prints one JSON line: kills survived, rows lost,
duplicate rows, repeated engine calls against their bound (kills x requests in flight = kills x concurrency),
fault-injected requests and rows that ended failed. Goal: 0 lost, 0 duplicated, repeated <= the bound.

    .venv/bin/python bench/faults.py [--seeds 5] [--rows 200] [--concurrency 2 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.faults.fault_server import FaultServer  # noqa: E402
from tests.faults.harness import command, crash_scenario, run, write_instructions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[2, 8])
    args = ap.parse_args()
    runs = []
    for concurrency in args.concurrency:
        for seed in range(1, args.seeds + 1):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(crash_scenario(seed, args.rows, lambda: FaultServer(delay=0.01), Path(tmp), args.kills,
                                           concurrency=concurrency))
    with tempfile.TemporaryDirectory() as tmp:
        qa = write_instructions(Path(tmp) / "qa.jsonl", args.rows)
        with FaultServer(transient_share=0.3, permanent_share=0.05, stall=1.5) as server:
            faulty = run(command(Path(tmp) / "s", qa, server.url, concurrency=4, retries=3, timeout=1.0))
            injected = dict(server.faults)
    by_concurrency = {}
    for c in args.concurrency:
        mine = [r for r in runs if r["concurrency"] == c]
        repeated = sum(r["repeated_calls"] for r in mine)
        by_concurrency[c] = {
            "builds": len(mine), "kills": sum(r["kills"] for r in mine), "repeated_calls": repeated,
            "bound_kills_x_in_flight": sum(r["repeat_bound"] for r in mine),
            "repeated_share": round(repeated / sum(r["engine_calls"] - r["repeated_calls"] for r in mine), 4),
            "within_bound": all(r["repeated_calls"] <= r["repeat_bound"] for r in mine)}
    print(json.dumps({
        "kills_survived": sum(r["kills"] for r in runs), "builds": len(runs),
        "all_equal_to_uninterrupted": all(r["same_content"] and r["same_quarantine"] for r in runs),
        "rows_lost": sum(r["rows_lost"] for r in runs), "duplicate_rows": sum(r["duplicate_rows"] for r in runs),
        "by_concurrency": by_concurrency,
        "fault_injected_requests": sum(injected.values()), "faults_by_kind": injected,
        "faulty_build_rows": faulty["rows"], "rows_failed": faulty["quarantined"],
        "goal": {"rows_lost": 0, "duplicate_rows": 0, "repeated_calls": "<= kills x in-flight requests"},
    }))


if __name__ == "__main__":
    main()
