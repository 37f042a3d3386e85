"""The fixed cost of a trivial build (issue 13, item 14): a dozen small files through `decompose`.

Times, each the median of --repeat runs, in one process of this script:
- `work`: the build's own work, `decompose_build.build()` called in a fresh Python without Prefect (imports
  excluded), the floor any orchestration adds to;
- `cold`: `lendata build decompose` in a fresh store: CLI start, the store's Prefect server started (database
  created), the flow, the commit;
- `warm`: the same command again on that store, while its Prefect server still lingers (builds in a row).
Prints one JSON line with each time, the overhead (command minus work) and its ratio to the work. Goal: warm
overhead under 5 s on a 2-core machine.

    .venv/bin/python bench/overhead.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LENDATA = [sys.executable, "-m", "lendata"]

WORK = """
import sys, time
from pathlib import Path
from lendata import recipes
from lendata.methods import decompose_build
recipe = recipes.load("decompose", {"input": sys.argv[1], "glob": "*.txt", "dataset": "bench"})
t0 = time.perf_counter()
decompose_build.build(recipe, Path(sys.argv[2]), progress=False)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["LENDATA_PREFECT_LINGER"] = "20"  # long enough for the warm runs, short enough to clean up after
    work, cold, warm = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        docs = corpus(Path(tmp) / "docs")
        for i in range(args.repeat):
            out = subprocess.run([sys.executable, "-c", WORK, str(docs), str(Path(tmp) / f"plain{i}")], check=True,
                                 capture_output=True, text=True, env=env, cwd=REPO)
            work.append(float(out.stdout.strip().splitlines()[-1]))
            store = Path(tmp) / f"store{i}"
            cold.append(build(store, docs, env))
            warm.append(build(store, docs, env))
    w, c, h = (statistics.median(x) for x in (work, cold, warm))
    print(json.dumps({"files": 12, "work_seconds": round(w, 2), "cold_seconds": round(c, 2),
                      "warm_seconds": round(h, 2), "cold_overhead_seconds": round(c - w, 2),
                      "warm_overhead_seconds": round(h - w, 2), "warm_over_work": round(h / w, 1),
                      "goal_overhead_seconds": 5, "met": h - w < 5}))


if __name__ == "__main__":
    main()
