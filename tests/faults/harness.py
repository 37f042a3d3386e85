"""Builds run as subprocesses against the fault server, killed with SIGKILL at chosen points and rerun: shared by
tests/faults and bench/faults.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lendata import store as st
from lendata.validation import validate_version

DATASET = "faults"
TOPICS = "rivers lanterns orchards harbours meadows quarries ledgers canals towers gardens archives".split()


def write_instructions(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Write about {TOPICS[i % len(TOPICS)]}, note {i}.", "length": 60}) + "\n")
    return path


def command(store: Path, qa: Path, url: str, concurrency: int = 2, retries: int = 3, timeout: float = 1.0,
            extra: tuple[str, ...] = ()) -> list[str]:
    options = (f"{{base_url: '{url}', concurrency: {concurrency}, max_retries: {retries}, backoff: 0.01, "
               f"max_backoff: 0.2, timeout: {timeout}}}")
    return [sys.executable, "-m", "lendata", "build", "direct", "--store", str(store), "--json", "--no-progress",
            "--set", f"input={qa}", "--set", "engine=openai", "--set", f"engine_options={options}",
            "--set", f"dataset={DATASET}", *extra]


def run(cmd: list[str], timeout: float = 300, env: dict[str, str] | None = None) -> dict[str, Any]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "NO_COLOR": "1", **(env or {})})
    if res.returncode != 0:
        raise AssertionError(f"build failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def kill_after(cmd: list[str], server, more_requests: int | None, after_seconds: float = 0.0,
               timeout: float = 300, env: dict[str, str] | None = None) -> bool:
    """Start a build and SIGKILL its whole process group once the server has seen `more_requests` more requests
    (then `after_seconds` more); None waits for all requests to be served first. True if it was killed."""
    start = server.requests
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        if more_requests is not None and server.requests - start >= more_requests:
            break
        time.sleep(0.002)
    if after_seconds:
        time.sleep(after_seconds)
    if p.poll() is not None:
        return False
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return True


def visible_versions_are_whole(store: Path) -> list[str]:
    """Every version a reader can see has its manifest and every file with the recorded hash."""
    versions = st.list_versions(store, DATASET) if (store / DATASET).is_dir() else []
    for v in versions:
        problems, _ = validate_version(store, f"{DATASET}@{v}")
        assert not problems, problems
    return versions


def killed_at(cmd: list[str], point: str, timeout: float = 300) -> None:
    """Run a build that SIGKILLs itself at the named fault point (lendata/faults.py)."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "NO_COLOR": "1", "LENDATA_TEST_FAULT": point})
    if res.returncode != -signal.SIGKILL:
        raise AssertionError(f"the build was not killed at {point} ({res.returncode}):\n{res.stderr[-3000:]}")


def rows_of(version: st.Version, split: str) -> list[tuple]:
    """A split's rows as sorted tuples, to compare two builds row by row."""
    return sorted(tuple(json.dumps(v, sort_keys=True, default=str) for v in r.values())
                  for r in version.read(split).to_pylist())


def crash_scenario(seed: int, n: int, make_server, tmp: Path, kills: int = 2, concurrency: int = 2
                   ) -> dict[str, Any]:
    """`kills` SIGKILLs: at random points while generating, and (odd seeds) one at the deterministic point where
    everything is generated and nothing validated or committed; then a rerun to completion, compared with an
    uninterrupted build on its own store, split by split."""
    qa = write_instructions(tmp / "qa.jsonl", n)
    with make_server() as server:
        baseline = run(command(tmp / "baseline", qa, server.url, concurrency=concurrency))
        base_requests = server.requests
    rng = np.random.default_rng(seed)
    store = tmp / "crashed"
    survived = 0
    with make_server() as server:
        cmd = command(store, qa, server.url, concurrency=concurrency)
        for k in range(kills):
            if k == kills - 1 and seed % 2 == 1:  # late: every call made, killed before validation and commit
                killed_at(cmd, "generated")
                killed = True
            else:
                left = max(1, n - server.requests)
                killed = kill_after(cmd, server, int(rng.integers(1, left + 1)))
            survived += killed
            visible_versions_are_whole(store)
        final = run(cmd)
        requests = server.requests
    a = st.open_version(tmp / "baseline", DATASET)
    b = st.open_version(store, DATASET)
    # rows are compared in both splits: validation moves a duplicated id to the quarantine, so a duplicate
    # would show there, not in train
    ids = b.read("train").column("id").to_pylist() + b.read("quarantine").column("id").to_pylist()
    base_ids = a.read("train").column("id").to_pylist() + a.read("quarantine").column("id").to_pylist()
    return {"seed": seed, "kills": survived, "concurrency": concurrency, "baseline_rows": baseline["rows"],
            "rows": final["rows"], "same_content": a.manifest["content_hash"] == b.manifest["content_hash"],
            "same_train": rows_of(a, "train") == rows_of(b, "train"),
            "same_quarantine": rows_of(a, "quarantine") == rows_of(b, "quarantine"),
            "rows_lost": len(set(base_ids) - set(ids)), "duplicate_rows": len(ids) - len(set(ids)),
            "extra_rows": len(ids) - len(base_ids),
            "versions": visible_versions_are_whole(store), "engine_calls": requests,
            "repeated_calls": requests - base_requests, "repeated_share": (requests - base_requests) / base_requests,
            "repeat_bound": survived * concurrency}
