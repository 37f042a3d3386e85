"""The fixed cost of a trivial build (issue 13, item 14): a dozen small files through `decompose`.

Times, each the median of --repeat runs, all in this one run:
- `work`: the build's own work, `builds.run()` called in a fresh Python without Prefect (imports
  excluded): the floor any orchestration adds to;
- `first`: `lendata build decompose` on a machine where lendata's Prefect server has never run (a private user
  cache): CLI start, the server's database created, the flow, the commit;
- `restart`: the same once that server has stopped (its database exists);
- `warm`: the same right after a build, while the server still lingers (builds in a row, or several stores).
Prints one JSON line with each time and each overhead (command minus work). Goal: warm overhead under 5 s on a
2-core machine.

    .venv/bin/python bench/overhead.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LENDATA = [sys.executable, "-m", "lendata"]
LINGER = 5.0

WORK = """
import sys, time
from pathlib import Path
from lendata import recipes
from lendata import build as builds
recipe = recipes.load("decompose", {"input": sys.argv[1], "glob": "*.txt", "dataset": "bench"})
t0 = time.perf_counter()
builds.run(recipe, Path(sys.argv[2]), progress=False)
print(time.perf_counter() - t0)
"""


def corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = Path(REPO / "README.md").read_text()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(text[i * 2000:(i + 1) * 2000] * 3)
    return folder


def build(store: Path, docs: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*LENDATA, "build", "decompose", "--store", str(store), "--no-progress", "--json", "--set",
                    f"input={docs}", "--set", "glob='*.txt'", "--set", "dataset=bench"], check=True,
                   capture_output=True, env=env, cwd=REPO)
    return time.perf_counter() - t0


def server_stopped(cache: Path) -> None:
    deadline = time.monotonic() + LINGER + 30
    while list(cache.glob("prefect-server/*/server.json")) and time.monotonic() < deadline:
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from lendata.paths import user_cache

    times: dict[str, list[float]] = {"work": [], "first": [], "restart": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        docs = corpus(Path(tmp) / "docs")
        for i in range(args.repeat):
            cache = Path(tmp) / f"cache{i}"  # a machine where the server never ran (the tokenizer is reused)
            shutil.copytree(user_cache() / "tokenizers", cache / "tokenizers", dirs_exist_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
            env.update(LENDATA_CACHE=str(cache), LENDATA_PREFECT_LINGER=str(LINGER))
            out = subprocess.run([sys.executable, "-c", WORK, str(docs), str(Path(tmp) / f"plain{i}")], check=True,
                                 capture_output=True, text=True, env=env, cwd=REPO)
            times["work"].append(float(out.stdout.strip().splitlines()[-1]))
            times["first"].append(build(Path(tmp) / f"a{i}", docs, env))
            server_stopped(cache)
            times["restart"].append(build(Path(tmp) / f"b{i}", docs, env))
            times["warm"].append(build(Path(tmp) / f"c{i}", docs, env))  # another store, the server lingering
            server_stopped(cache)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"files": 12, **{f"{k}_seconds": round(v, 2) for k, v in med.items()},
                      **{f"{k}_overhead_seconds": round(med[k] - med["work"], 2) for k in ("first", "restart", "warm")},
                      "warm_over_work": round(med["warm"] / med["work"], 1), "goal_warm_overhead_seconds": 5,
                      "met": med["warm"] - med["work"] < 5}))


if __name__ == "__main__":
    main()
