"""The S_q judge's speed and reliability with the embedded engine (issue 17): 20 rows judged.

The 20 rows are responses the embedded model writes (once, cached in --out) to the 16 LongWrite-Ruler prompts
in ../shared/data and 4 LonGen queries, cut to --words words. Then, in this one run and on the same engine:
- `judge`: S_q judgments of the 20 rows (schema-constrained JSON, up to 3 attempts each, no cache);
- `free`: the same 20 judge prompts answered as free text with the same sampling, up to --free-max-tokens (256:
  about what a judgment takes), what the engine does without the JSON grammar: the baseline of the ratio.
Prints judge calls per second, the share of rows whose judgment failed (with why), completion tokens per second
of both, and their ratio.

    .venv/bin/python bench/judge.py [--rows 20] [--words 150] [--out bench/out/judge]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lendata.engines import CachedEngine, Request, ResponseCache  # noqa: E402
from lendata.engines.llamacpp import LlamaCppEngine  # noqa: E402
from lendata.judging import judges  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def prompts(k: int) -> list[str]:
    ruler = [json.loads(x)["prompt"] for x in (SHARED / "longwrite_ruler.jsonl").read_text().splitlines() if x]
    longen = [json.loads(x)["query"] for x in (SHARED / "longen.jsonl").read_text().splitlines() if x]
    return (ruler[:16] + longen[-4:])[:k]


def main() -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = LlamaCppEngine(n_ctx=4096)
    writer = CachedEngine(engine, ResponseCache(out / "responses.sqlite"))
    instructions = prompts(args.rows)
    written = writer.generate([Request(messages=({"role": "user", "content": p},), max_tokens=2 * args.words,
                                       temperature=0.7, seed=0) for p in instructions])
    pairs = [(p, " ".join(r.text.split()[: args.words])) for p, r in zip(instructions, written, strict=True)]

    counted = []

    class Counting:  # the engine, counting what the judge asked for
        name, model_id, context_window = engine.name, engine.model_id, engine.context_window

        def generate(self, requests, on_result=None):
            res = engine.generate(requests, on_result)
            counted.extend(res)
            return res

        def count_tokens(self, texts):
            return engine.count_tokens(texts)

    t0 = time.monotonic()
    judged = judges.judge_quality(pairs, Counting(), judges.JudgeSettings())
    judge_s = time.monotonic() - t0
    engine_tokens = sum(r.completion_tokens for r in counted)
    calls = len(counted)
    failed = [j for j in judged if j.scores is None]

    free_requests = [Request(messages=({"role": "user", "content": judges.quality_prompt(i, r)},),
                             max_tokens=args.free_max_tokens, temperature=0.5, seed=0)
                     for i, r in pairs]
    t1 = time.monotonic()
    free = engine.generate(free_requests)
    free_s = time.monotonic() - t1
    free_tokens = sum(r.completion_tokens for r in free)
    engine.close()

    judge_tps, free_tps = engine_tokens / judge_s, free_tokens / free_s
    summary = judges.sq_summary(judged)
    print(f"rows {len(pairs)}: judged {summary['judged']}, failed {len(failed)} "
          f"({100 * len(failed) / len(pairs):.0f}%); S_q {summary['sq']}")
    for j in failed:
        print(f"  failed: {j.error}")
    print(f"judge: {calls} calls in {judge_s:.1f} s = {calls / judge_s:.2f} calls/s, "
          f"{judge_s / len(pairs):.2f} s per row, {judge_tps:.1f} tokens/s")
    print(f"free text on the same prompts: {len(free)} calls in {free_s:.1f} s, {free_tps:.1f} tokens/s")
    print(f"ratio (judge tokens/s over free-text tokens/s): {judge_tps / free_tps:.2f}")
    print(json.dumps({"bench": "judge", "rows": len(pairs), "failed": len(failed),
                      "failed_share": round(len(failed) / len(pairs), 3), "calls": calls,
                      "calls_per_second": round(calls / judge_s, 3), "judge_seconds": round(judge_s, 1),
                      "judge_tokens_per_second": round(judge_tps, 1), "free_tokens_per_second": round(free_tps, 1),
                      "ratio": round(judge_tps / free_tps, 3), "sq": summary["sq"]}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--words", type=int, default=150, help="each response is cut to this many words")
    ap.add_argument("--free-max-tokens", type=int, default=256, help="token limit of the free-text baseline")
    ap.add_argument("--out", default=str(REPO / "bench/out/judge"))
    args = ap.parse_args()
    main()
