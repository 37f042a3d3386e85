"""Dataset Decomposition as the corpus grows, and on Ray (issue 18).

The CPython standard library (~50M SmolLM2 tokens) at 1x, 2x and 4x: copies of its files under new folder
names (symlinks, so the disk holds it once), built with `lendata build decompose` in a fresh process each.
Prints one JSON line with, against the 1x build of the same run:

- wall time at 2x and 4x                                          goal: 4x corpus <= 4.4x time
- the driver's peak RSS at 2x and 4x                              goal: <= 1.1x
- the 1x corpus on a local 2-CPU Ray cluster in 2 shards vs the local runner (Ray and Prefect overhead as a
  ratio), and each Ray worker's peak RSS (from the manifest's `shards`)
- per-token figures for the README's 100B-token table: tokens/s of this machine (marginal: without the
  start-up), input and output bytes per token

    .venv/bin/python bench/decompose_scale.py [--scales 1 2 4] [--skip-ray] [--glob '**/*.py']
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
LENDATA = [sys.executable, "-m", "lendata"]


def make_corpus(root: Path, scale: int, glob: str) -> Path:
    """`scale` copies of the stdlib's files (symlinks) under copy0/, copy1/, ...: new paths, so new ids."""
    files = sorted(p for p in STDLIB.glob(glob) if p.is_file() and "site-packages" not in p.parts)
    out = root / f"x{scale}"
    for c in range(scale):
        for p in files:
            link = out / f"copy{c}" / p.relative_to(STDLIB)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p)
    return out


def build(store: Path, corpus: Path, *sets: str) -> dict:
    """Run one build in a fresh process: its wall time and its manifest (which records each shard's peak RSS:
    on the local runner, the driver's; on Ray, each worker's)."""
    args = [*LENDATA, "build", "decompose", "--store", str(store), "--json", "--no-progress",
            "--set", f"input={corpus}", "--set", "glob=**/*.py", *(a for s in sets for a in ("--set", s))]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LENDATA_PREFECT_LINGER": "0"})
    stdout, stderr = proc.communicate()
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"build failed:\n{stderr[-3000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    manifest = json.loads((Path(report["path"]) / "manifest.json").read_text())
    return {"seconds": round(seconds, 1), "manifest": manifest}


def peak_of(manifest: dict) -> int:
    """The driver's peak RSS as the build recorded it (shards on the local runner run in the driver)."""
    shards = manifest.get("shards")
    if not shards:
        raise SystemExit("the build ran in one shard: lower --unit-bytes so that every scale has several units")
    return max(s.get("peak_rss_mb", 0) for s in shards)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--glob", default="**/*.py")
    ap.add_argument("--skip-ray", action="store_true")
    # the 1x corpus is ~30 MB here: 8 MB units give every scale several units for its 2 shards
    ap.add_argument("--unit-bytes", type=int, default=8 << 20)
    args = ap.parse_args()
    result: dict = {"bench": "decompose_scale", "corpus": f"{STDLIB} {args.glob}", "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        root = Path(tmp)
        runs = {}
        for scale in args.scales:
            corpus = make_corpus(root / "corpora", scale, args.glob)
            for p in corpus.rglob("*.py"):  # warm the page cache: measure decomposing, not the first disk read
                p.read_bytes()
            # shards=2 on the local runner: the manifest records the driver's peak RSS per shard
            run = build(root / f"store{scale}", corpus, "shards=2", f"unit_bytes={args.unit_bytes}")
            d = run["manifest"]["decomposition"]
            runs[scale] = {"seconds": run["seconds"], "tokens": d["input_tokens"], "documents": d["documents"],
                           "units": d["units"], "peak_rss_mb": peak_of(run["manifest"]),
                           "input_bytes": sum(p.stat().st_size for p in corpus.glob(args.glob) if p.is_file()),
                           "bytes": sum(f["bytes"] for sp in run["manifest"]["splits"].values()
                                        for f in sp["files"])}
            print(json.dumps({"scale": scale, **runs[scale]}), file=sys.stderr, flush=True)
        base = runs[args.scales[0]]
        result["scales"] = {str(k): {**v, "time_ratio": round(v["seconds"] / base["seconds"], 3),
                                     "rss_ratio": round(v["peak_rss_mb"] / base["peak_rss_mb"], 3)}
                            for k, v in runs.items()}
        top_run = runs[max(args.scales)]
        # the marginal rate (largest scale minus smallest) leaves out the fixed start-up every build pays
        marginal = ((top_run["tokens"] - base["tokens"]) / (top_run["seconds"] - base["seconds"])
                    if len(runs) > 1 else None)
        result["per_token"] = {"tokens_per_s_local": round(base["tokens"] / base["seconds"]),
                               "marginal_tokens_per_s": round(marginal) if marginal else None,
                               "input_bytes_per_token": round(base["input_bytes"] / base["tokens"], 3),
                               "output_bytes_per_token": round(base["bytes"] / base["tokens"], 3)}
        if not args.skip_ray:
            corpus = root / "corpora" / f"x{args.scales[0]}"
            ray = build(root / "store-ray", corpus, "runner=ray", "shards=2", "ray.num_cpus=2",
                        f"unit_bytes={args.unit_bytes}")
            shards = ray["manifest"]["shards"]
            result["ray"] = {"seconds": ray["seconds"], "ratio_vs_local": round(ray["seconds"] / base["seconds"], 3),
                             "same_content": ray["manifest"]["content_hash"] == json.loads(
                                 (root / f"store{args.scales[0]}").joinpath("decompose").glob(
                                     "*/manifest.json").__next__().read_text())["content_hash"],
                             "worker_peak_rss_mb": [s.get("peak_rss_mb") for s in shards],
                             "worker_seconds": [s.get("work_seconds") for s in shards]}
    top = str(max(args.scales))
    result["goals"] = {
        "time_linear(4x<=4.4x)": result["scales"][top]["time_ratio"] <= 4.4 * int(top) / 4,
        "rss_flat(<=1.1x)": all(v["rss_ratio"] <= 1.1 for v in result["scales"].values()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
