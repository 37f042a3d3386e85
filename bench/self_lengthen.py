"""Self-Lengthen's premise on the embedded model: does the Generator write longer after each iteration's training?

Builds the self_lengthen recipe for `--iterations` macro-iterations with the built-in LoRA trainer, then has the
Generator of each iteration (iteration 1: the base model; iteration k: the adapter trained after k - 1) answer
the same held-out instructions with the same seeds, and prints their mean and median LonGen words against the
base model's, per iteration. Without training every iteration samples the base model, so the base model's
lengths are the no-training baseline of every iteration (computed once, not three times). Also prints the
training time per iteration and its share of the build.

Issue 16 asks for what it does with a 135M model, whatever it is: the numbers are reported, not asserted.

    .venv/bin/python bench/self_lengthen.py [--iterations 3] [--n 6] [--held-out 8] [--max-tokens 700]
        [--extend-retries 3] [--out bench/out/self_lengthen]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lendata import build as builds  # noqa: E402
from lendata import recipes  # noqa: E402
from lendata import store as st  # noqa: E402
from lendata.engines import CachedEngine, ResponseCache  # noqa: E402
from lendata.engines.llamacpp import LlamaCppEngine  # noqa: E402
from lendata.lengths import count_words  # noqa: E402
from lendata.methods.self_lengthen import steps as sl  # noqa: E402


def held_out(k: int) -> tuple[list[dict], Path]:
    """The last `k` English seeds are held out; the build self-instructs from the others."""
    rows = [json.loads(x) for x in (REPO / "pipelines/data/self_lengthen_seeds.jsonl").read_text().splitlines()]
    en = [r for r in rows if r.get("language") == "en"]
    keep = [r for r in rows if r not in en[-k:]]
    seeds = Path(args.out) / "seeds.jsonl"
    seeds.parent.mkdir(parents=True, exist_ok=True)
    seeds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
    return [{"id": f"held-{i}", "instruction": r["instruction"], "iteration": 1} for i, r in enumerate(en[-k:])], seeds


def lengths(instructions: list[dict], engine, s: sl.Settings, lora: str | None) -> list[int]:
    responses = sl.generate(instructions, engine, s, lora)
    return [count_words(r.initial, "longen") for r in responses if r.failed is None]


def main() -> None:
    instructions, seeds = held_out(args.held_out)
    store = Path(args.out) / "store"
    recipe = recipes.load("self_lengthen", {"input": str(seeds), "n": args.n, "iterations": args.iterations,
                                            "max_tokens": args.max_tokens, "extend_retries": args.extend_retries})
    t0 = time.monotonic()
    builds.run(recipe, store, progress=True)
    build_seconds = time.monotonic() - t0
    v = st.open_version(store, "self_lengthen")
    evidence = v.manifest["iterations"]
    s = recipe.settings
    engine = CachedEngine(LlamaCppEngine(), ResponseCache(Path(args.out) / "held_out.sqlite"))
    base = lengths(instructions, engine, s, None)
    print(f"held-out instructions: {len(instructions)}, {s.samples} samples each; build {build_seconds:.0f} s")
    print(f"{'iteration':>9} {'adapter':>14} {'mean':>7} {'median':>7} {'base mean':>9} {'ratio':>6} "
          f"{'train s':>8} {'share':>6}")
    rows = []
    for it in evidence:
        lora = it["generator"]["lora"]
        got = lengths(instructions, engine, s, lora) if lora else base
        trained = it.get("trained") or {}
        train_s = sum(((r or {}).get("training") or {}).get("seconds", 0) for r in trained.values())
        mean = statistics.fmean(got) if got else 0.0
        base_mean = statistics.fmean(base) if base else 0.0
        row = {"iteration": it["iteration"], "adapter": (it["generator"]["lora_sha256"] or "base")[:12],
               "mean_words": round(mean, 1), "median_words": statistics.median(got) if got else 0,
               "base_mean_words": round(base_mean, 1), "ratio": round(mean / base_mean, 3) if base_mean else None,
               "train_seconds": round(train_s, 1), "train_share": round(train_s / build_seconds, 3),
               "responses": len(got)}
        rows.append(row)
        print(f"{row['iteration']:>9} {row['adapter']:>14} {row['mean_words']:>7} {row['median_words']:>7} "
              f"{row['base_mean_words']:>9} {row['ratio']!s:>6} {row['train_seconds']:>8} {row['train_share']:>6}")
    print(json.dumps({"iterations": rows, "build_seconds": round(build_seconds, 1)}))
    engine.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--n", type=int, default=6, help="new instructions per iteration")
    ap.add_argument("--held-out", type=int, default=8, help="English seed instructions held out for the comparison")
    ap.add_argument("--max-tokens", type=int, default=700)
    ap.add_argument("--extend-retries", type=int, default=3, help="the recipe's demo value (reference: 20)")
    ap.add_argument("--out", default=str(REPO / "bench/out/self_lengthen"))
    args = ap.parse_args()
    main()
