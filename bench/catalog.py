"""A length histogram over a 1M-row dataset through `lendata query` (issue 7).

Commits a 1M-row long-output SFT table (chat `messages` with responses of 200..20,000 words' worth of
length columns) to a temporary store, then runs the histogram query through the catalog several times. Prints
one JSON line: rows, the query's median time (goal < 0.5 s), the catalog set-up time (reading manifests and
defining views), and the whole `lendata query` command's time in a fresh process.

    .venv/bin/python bench/catalog.py [--rows 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HISTOGRAM = ("SELECT (response_words // 500) * 500 AS words, count(*) AS rows, round(avg(length_score), 1) AS sl "
             "FROM bench GROUP BY 1 ORDER BY 1")


def table(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    target = rng.choice([1000, 2000, 5000, 10000, 20000], size=rows).astype(np.int32)
    produced = np.maximum(1, rng.normal(target, target * 0.15)).astype(np.int32)
    prompts = pa.array([f"Write {t} words about topic {i % 997}." for i, t in enumerate(target)])
    return pa.table({
        "id": pa.array([f"r{i}" for i in range(rows)]),
        "instruction": prompts,
        "target_words": target,
        "response_words": produced,
        "response_tokens": (produced * 1.3).astype(np.int32),
        "length_score": np.clip(100 - np.abs(produced / target - 1) * 100, 0, 100),
        "finish_reason": pa.array(np.where(rng.random(rows) < 0.02, "length", "stop")),
    })


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from lendata import store as st
    from lendata.catalog import check_read_only, connect

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        st.commit(store, "bench", {"train": table(args.rows)}, rows_per_shard=250_000, meta={"recipe": "bench"})
        setups, queries = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            check_read_only(HISTOGRAM)
            con = connect(store)
            t1 = time.perf_counter()
            df = con.sql(HISTOGRAM).pl()
            t2 = time.perf_counter()
            con.close()
            setups.append(t1 - t0)
            queries.append(t2 - t1)
        counted = int(df["rows"].sum())
        t0 = time.perf_counter()
        subprocess.run([str(REPO / ".venv/bin/lendata"), "query", HISTOGRAM, "--store", str(store), "--format",
                        "json"], check=True, capture_output=True)
        command = time.perf_counter() - t0
    print(json.dumps({"rows": counted, "bins": df.height, "query_seconds": round(statistics.median(queries), 4),
                      "catalog_setup_seconds": round(statistics.median(setups), 4),
                      "command_seconds": round(command, 2), "goal_query_seconds": 0.5,
                      "met": statistics.median(queries) < 0.5}))


if __name__ == "__main__":
    main()
