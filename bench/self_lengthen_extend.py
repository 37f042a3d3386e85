"""Issue 19, goal 4: the cost of Self-Lengthen's extend rounds per kept extended word, before and after.

The same initial responses (generated once with the base model and the recipe's sampling) are extended twice
with the embedded engine and the same seeds: once as before (`extend_no_repeat_ngram=0`) and once with the
extender's output kept from repeating itself while decoding (`extend_no_repeat_ngram=N`, output scope: the
extender must copy its prompt). Prints, per run, wall time, engine calls, completion tokens, the extension
submissions that grew past `min_growth` ("kept": before drop_short, which is seeded and the same for both runs)
with their words (whole texts) and the words they added, the failed submissions with their last rounds, and the
cost per kept extended word in seconds and in generated tokens; then the after/before ratio of each cost. No
response cache and a fresh engine per run, so times are real. Quality is not measured here: the ban removes
the failure the response check looks for, so more submissions pass it by construction; judge the texts with
`lendata report` or an S_q judge.

    .venv/bin/python bench/self_lengthen_extend.py [--instructions 3] [--extend-retries 2] [--max-tokens 600]
        [--no-repeat 8]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lendata import recipes  # noqa: E402
from lendata.engines.llamacpp import LlamaCppEngine  # noqa: E402
from lendata.lengths import count_words  # noqa: E402
from lendata.methods.self_lengthen import steps as sl  # noqa: E402


class Counting:
    """The engine, counting the calls and completion tokens that go through it."""

    def __init__(self, engine):
        self.engine, self.calls, self.tokens = engine, 0, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, requests, on_result=None):
        out = self.engine.generate(requests, on_result)
        self.calls += len(requests)
        self.tokens += sum(r.completion_tokens for r in out)
        return out


def run(label: str, responses, engine, s: sl.Settings) -> dict:
    counting = Counting(engine)
    t0 = time.monotonic()
    rows = sl.extend(responses, counting, s)
    wall = time.monotonic() - t0
    kept = [r for r in rows if r.failed is None and r.extended]
    words = sum(count_words(r.extended, s.word_counter) for r in kept)
    grown = sum(count_words(r.extended, s.word_counter) - count_words(r.initial, s.word_counter) for r in kept)
    causes = collections.Counter()
    for r in rows:  # the round log is per state; the failed rows carry their last rounds in `failed`
        if r.failed:
            causes["submission failed"] += 1
    out = {"run": label, "wall_s": round(wall, 1), "calls": counting.calls, "tokens": counting.tokens,
           "submissions": len(rows), "kept": len(kept), "kept_words": words, "added_words": grown,
           "s_per_kept_word": round(wall / words, 4) if words else None,
           "tokens_per_kept_word": round(counting.tokens / words, 2) if words else None,
           "failures": dict(causes)}
    print(f"{label:>7}: {out['wall_s']:7.1f} s, {out['calls']:3d} calls, {out['tokens']:6d} tokens; kept "
          f"{out['kept']}/{out['submissions']} extended ({words} words, +{grown}); per kept extended word: "
          f"{out['s_per_kept_word']} s, {out['tokens_per_kept_word']} tokens", flush=True)
    for r in rows:
        if r.failed:
            print(f"         failed: {r.failed[:160]}")
    return out


def main() -> None:
    base = recipes.load("self_lengthen", {"max_tokens": args.max_tokens, "extend_retries": args.extend_retries,
                                          "extensions": 1}).settings
    seeds = [json.loads(x) for x in (REPO / "pipelines/data/self_lengthen_seeds.jsonl").read_text().splitlines()]
    instructions = [{"id": f"bench-{i}", "instruction": r["instruction"], "iteration": 1}
                    for i, r in enumerate(r for r in seeds if r.get("language", "en") == "en")][: args.instructions]
    engine = LlamaCppEngine()
    t0 = time.monotonic()
    initial = [r for r in sl.generate(instructions, engine, dataclasses.replace(base, samples=1))
               if r.failed is None]
    print(f"{len(initial)} initial responses of {len(instructions)} instructions in {time.monotonic() - t0:.1f} s "
          f"({sum(count_words(r.initial, base.word_counter) for r in initial)} words)", flush=True)
    engine.close()
    results = []
    for label, n in (("before", 0), ("after", args.no_repeat)):
        engine = LlamaCppEngine()  # a fresh engine: no KV state carried from the other run
        results.append(run(label, initial, engine, dataclasses.replace(base, extend_no_repeat_ngram=n)))
        engine.close()
    before, after = results
    ratios = {k: round(after[k] / before[k], 2) if before[k] and after[k] else None
              for k in ("s_per_kept_word", "tokens_per_kept_word")}
    print(f"after / before: seconds per kept extended word {ratios['s_per_kept_word']}, tokens per kept "
          f"extended word {ratios['tokens_per_kept_word']} (lower is better)")
    print(json.dumps({"bench": "self_lengthen_extend", "no_repeat": args.no_repeat, "runs": results,
                      "after_over_before": ratios}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--instructions", type=int, default=3, help="initial responses to extend (one per instruction)")
    p.add_argument("--extend-retries", type=int, default=2, help="attempts per extension submission")
    p.add_argument("--max-tokens", type=int, default=600, help="per call")
    p.add_argument("--no-repeat", type=int, default=8, help="extend_no_repeat_ngram of the 'after' run")
    args = p.parse_args()
    main()
