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


def run(cmd: list[str], timeout: float = 300) -> dict[str, Any]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1"})
    if res.returncode != 0:
        raise AssertionError(f"build failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def kill_after(cmd: list[str], server, more_requests: int | None, after_seconds: float = 0.0,
               timeout: float = 300) -> bool:
    """Start a build and SIGKILL its whole process group once the server has seen `more_requests` more requests
    (then `after_seconds` more); None waits for all requests to be served first. True if it was killed."""
    start = server.requests
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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


def crash_scenario(seed: int, n: int, make_server, tmp: Path, kills: int = 2) -> dict[str, Any]:
    """`kills` SIGKILLs at random points (one of them after generation, in validation and commit), then a rerun
    to completion; compared with an uninterrupted build on its own store."""
    qa = write_instructions(tmp / "qa.jsonl", n)
    with make_server() as server:
        baseline = run(command(tmp / "baseline", qa, server.url))
        base_requests = server.requests
    rng = np.random.default_rng(seed)
    store = tmp / "crashed"
    survived = 0
    with make_server() as server:
        cmd = command(store, qa, server.url)
        for k in range(kills):
            if k == kills - 1 and seed % 2 == 0:  # late: everything generated, killed while validating/committing
                killed = kill_after(cmd, server, None if server.requests >= n else n - server.requests,
                                    after_seconds=float(rng.uniform(0.0, 1.0)))
            else:
                left = max(1, n - server.requests)
                killed = kill_after(cmd, server, int(rng.integers(1, left + 1)))
            survived += killed
            visible_versions_are_whole(store)
        final = run(cmd)
        requests = server.requests
    a = st.open_version(tmp / "baseline", DATASET)
    b = st.open_version(store, DATASET)
    ids = b.read("train").column("id").to_pylist()
    base_ids = set(a.read("train").column("id").to_pylist())
    return {"seed": seed, "kills": survived, "baseline_rows": baseline["rows"], "rows": final["rows"],
            "same_content": a.manifest["content_hash"] == b.manifest["content_hash"],
            "rows_lost": len(base_ids - set(ids)), "duplicate_rows": len(ids) - len(set(ids)),
            "versions": visible_versions_are_whole(store), "engine_calls": requests,
            "repeated_calls": requests - base_requests, "repeated_share": (requests - base_requests) / base_requests}
