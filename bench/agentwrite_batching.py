"""Batching: AgentWrite with all samples at once (chains: continuous batching on vLLM, rounds elsewhere) against
the reference order (one sample at a time, step after step), on the same 16 instructions, same seeds, same
engine, in one run.

Goals (issue 3): vLLM (CPU build) all at once >= 3x faster; llama.cpp (which does not batch) no more than 1.1x
slower. No cache: every request really goes to the engine in both orders (vLLM's prefix cache is reset before
each timed part).

Issue 19 adds the physical limit: the engine's raw decode throughput at the same batch size, measured in the
same run (one batch of `--n` requests, each forced to the run's mean writing-call length with min_tokens), and
the share of it AgentWrite reaches (completion tokens of the writing calls / wall time, plans included in the
time but not in the tokens). Two raw references: short prompts with default sampling (as the issue was filed),
and `--n` of the run's own writing calls (their prompts of instruction, plan and text so far, and their
sampling: a long context and a repetition penalty make every decoded token dearer). Goal: >= 0.8.

A third reference is the engine with no sampling work at all (top_p 1, no penalty): the decode limit of the
model at this batch size. `--compare-samplers` (vLLM) runs AgentWrite and the references once more with vLLM's own
sampler doing top-p (`sample_in_processor` off) in the same run; the penalty stays in lendata's processor, which
applies its window (Request.repetition_window), so runs before the window compared the penalty too.

On vLLM AgentWrite runs each sample as a chain (engines/chains.py) with continuous batching; `--compare-rounds`
also runs it in rounds (`continuous_batching` off: every call of a round waits for its slowest), in the same
run. Rounds here are this code's rounds (a round may mix one sample's plan retry, another's step and a third's
continuation), not the code before chains, which ran plans, steps, resamples and continuations as separate
batches and so waited more.

`--step-layout turns` writes with AgentWrite's turns layout (each step's prompt extends the last, so vLLM's
prefix cache serves it); `--compare-layouts` runs the other layout too, after the main run, in the same run;
`--block-size` sets vLLM's KV block size (the prefix cache's granularity; 128 by default on the CPU build).
Each run prints the share of its writing prompts served from the prefix cache, and its kept rows, S_l over
all rows and quarantine reasons, so a faster layout cannot hide worse texts.

    .venv-vllm/bin/python bench/agentwrite_batching.py --engine vllm \
        --model ~/.cache/lendata/models/SmolLM2-135M-Instruct-hf [--compare-rounds --skip-sequential]
    .venv/bin/python bench/agentwrite_batching.py --engine llamacpp
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOPICS = ["rivers", "bridges", "volcanoes", "libraries", "bees", "trains", "glaciers", "markets", "lighthouses",
          "deserts", "orchestras", "forests", "harbours", "comets", "bakeries", "mountains"]


def main() -> None:
    from lendata.engines import make_engine
    from lendata.engines.base import Request
    from lendata.methods.agentwrite import plan_and_write as aw

    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="llamacpp", choices=["llamacpp", "vllm"])
    ap.add_argument("--model", default=None, help="vllm: checkpoint directory")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--words", type=int, default=300)
    ap.add_argument("--compare-rounds", action="store_true",
                    help="vllm: run the rounds driver too (continuous_batching off), the way before chains")
    ap.add_argument("--recipe-decoding", action="store_true",
                    help="decode the steps with the shipped recipe's no_repeat_ngram=8 and end_at_sentence (vLLM: "
                         "engines/vllm_decoding.py) and continue a last step cut at its limit (continue_attempts=2; "
                         "before 2026-11-29 this flag left it at 0), as a build does; off: the settings of earlier "
                         "runs")
    ap.add_argument("--max-num-seqs", type=int, default=None,
                    help="vllm: the engine's batch size (max_num_seqs); with --n above it, a build larger than one "
                         "batch, as real builds are (the raw references run at the same batch size)")
    ap.add_argument("--compare-samplers", action="store_true",
                    help="vllm: also run with vLLM's own sampler doing top-p (sample_in_processor off; the "
                         "penalty stays in the processor, which applies its window)")
    ap.add_argument("--step-layout", default="single", choices=["single", "turns"],
                    help="AgentWrite's step_layout: single (the reference's one message per step) or turns (the "
                         "steps as one conversation, which vLLM's prefix cache serves)")
    ap.add_argument("--compare-layouts", action="store_true",
                    help="also run AgentWrite with the other step_layout in the same run (after the main run)")
    ap.add_argument("--block-size", type=int, default=None,
                    help="vllm: the KV block size (the prefix cache's granularity; the CPU build's default is 128)")
    ap.add_argument("--skip-sequential", action="store_true",
                    help="only the rounds and the raw-throughput limit (issue 19), not one sample at a time")
    args = ap.parse_args()
    # max_num_batched_tokens: no chunked prefill, which crashes seeded requests on the CPU build
    # ("CPU Generator does not use offset")
    opts = ({"model": str(Path(args.model).expanduser()), "max_model_len": 4096, "max_num_batched_tokens": 65536,
             **({"max_num_seqs": args.max_num_seqs} if args.max_num_seqs else {}),
             **({"block_size": args.block_size} if args.block_size else {})}
            if args.engine == "vllm" else {})
    engine = make_engine(args.engine, **opts)
    s = aw.Settings(min_paragraph=100, max_paragraph=150, temperature=0.7, repetition_penalty=1.2,
                    write_prompt="concise", step_attempts=1, plan_attempts=1, step_layout=args.step_layout,
                    **({"no_repeat_ngram": 8, "end_at_sentence": True, "continue_attempts": 2}
                       if args.recipe_decoding else {}))
    many = TOPICS * (args.n // len(TOPICS) + 1)
    rows = [{"instruction": f"Write a {args.words}-word article about {t}" + (f" (part {i // len(TOPICS) + 1})."
                                                                             if i >= len(TOPICS) else "."),
             "source": ""} for i, t in enumerate(many[: args.n])]
    aw.agentwrite(rows[:1], engine, s)  # warm-up (compilation, caches) outside both timings

    def timed_run(continuous: bool, s: aw.Settings = s) -> dict:
        """AgentWrite over `rows` with the engine's continuous batching on or off (rounds), counting the
        writing calls' tokens apart from the plans' (both drivers see every call through `Noting`)."""
        made: list[int] = []  # completion tokens of every writing call
        prompts: list[int] = []  # prompt tokens of every writing call
        writes: list[Request] = []  # the writing calls, for the workload's raw reference
        plan_tokens = [0]
        cached: list[tuple[int, int]] = []  # (prompt tokens, of them served from the engine's cache) per call

        def note(q, r):
            if q.json_schema is None:
                made.append(r.completion_tokens)
                prompts.append(r.prompt_tokens)
                writes.append(q)
                if r.prompt_cached_tokens is not None:  # an engine that says: its prompt and its cache hits
                    cached.append((r.prompt_tokens, r.prompt_cached_tokens))
            else:
                plan_tokens[0] += r.completion_tokens

        engine.continuous_batching = continuous
        cold()
        t0 = time.monotonic()
        table, quarantine, samples = aw.agentwrite(rows, Noting(engine, note), s)
        wall = time.monotonic() - t0
        # quality, so a faster layout cannot hide worse texts: kept rows, and S_l over all rows (quarantined: 0)
        return {"wall": wall, "made": made, "writes": writes, "prompts": prompts, "samples": samples,
                "plan_tokens": plan_tokens[0], "kept": table.num_rows,
                "sl_all": sum(table.column("length_score").to_pylist()) / len(rows),
                "cached_share": sum(c for _, c in cached) / max(1, sum(p for p, _ in cached)),
                "layout": s.step_layout,
                # the two truncated endings (mid-sentence, cut at the limit) stay apart; n-gram counts do not
                "why": Counter(re.sub(r" \(\d+x\)", "", reason if reason.startswith("truncated") else
                                      reason.split(":")[0])
                               for q in quarantine for reason in q["reason"].split("; "))}

    def cold() -> None:
        """vLLM keeps prompt prefixes between calls: each timed run and raw reference starts without them, so
        the one measured second is not served by the first's cache."""
        if args.engine == "vllm":
            engine._llm.reset_prefix_cache()

    def raw_tps(reqs: list[Request], length: int, **change) -> float:
        """Tokens per second decoding `reqs` in one batch, each forced to `length` tokens."""
        from dataclasses import replace

        forced = [replace(q, max_tokens=length, min_tokens=length, no_repeat_ngram=0, end_at_sentence=False,
                          **change) for q in reqs]
        cold()
        t0 = time.monotonic()
        tokens = sum(r.completion_tokens for r in engine.generate(forced))
        return tokens / (time.monotonic() - t0)

    continuous = bool(getattr(engine, "continuous_batching", False))
    rounds_run = timed_run(False) if continuous and args.compare_rounds else None
    run = timed_run(continuous)
    other_layout = None
    if args.compare_layouts:
        from dataclasses import replace as _replace

        other = "turns" if args.step_layout == "single" else "single"
        other_layout = timed_run(continuous, _replace(s, step_layout=other))
    made, batched, rounds = run["made"], run["samples"], run["wall"]
    # the limit: the same number of sequences decoded in one batch, each as long as a mean writing call, on a
    # short prompt with default sampling (as issue 19 was filed) and on the workload's own prompts and sampling
    step_len = max(1, round(sum(made) / max(1, len(made))))
    short = [Request(messages=({"role": "user", "content": f"Write a long article about {t}."},),
                     max_tokens=step_len, temperature=0.7, seed=i) for i, t in enumerate(many[: args.n])]
    raw = raw_tps(short, step_len)
    import random

    picked = random.Random(0).sample(range(len(run["writes"])), min(args.n, len(run["writes"])))
    workload = [run["writes"][k] for k in picked]
    # the sample is fair when its prompts are about as long as all the writing calls' (a long context is dearer)
    prompt_mean = sum(run["prompts"]) / max(1, len(run["prompts"]))
    picked_mean = sum(run["prompts"][k] for k in picked) / max(1, len(picked))
    raw_workload = raw_tps(workload, step_len)
    raw_free = raw_tps(short, step_len, top_p=1.0, repetition_penalty=1.0)
    vllm_sampler = None
    if args.compare_samplers and getattr(engine, "sample_in_processor", False):
        engine.sample_in_processor = False
        vllm_sampler = {"run": timed_run(continuous), "raw": raw_tps(short, step_len),
                        "raw_workload": raw_tps(workload, step_len)}
        engine.sample_in_processor = True
    sequential, reference = [], float("nan")
    if not args.skip_sequential:
        cold()
        t0 = time.monotonic()
        sequential = [aw.agentwrite([row], engine, s)[2][0] for row in rows]
        reference = time.monotonic() - t0

    steps = sum(len(x.plan) for x in batched)
    words = sum(sum(x.step_words) for x in batched)
    ratio = reference / rounds
    goal = "ratio >= 3" if args.engine == "vllm" else "ratio >= 1/1.1 = 0.91"
    met = ratio >= 3 if args.engine == "vllm" else ratio >= 1 / 1.1
    driver = "chains (continuous batching)" if continuous else "rounds"
    print(f"{args.engine}: {args.n} samples, {steps} steps, {words} words; {driver} {rounds:.1f}s, "
          + ("(one at a time skipped)" if args.skip_sequential else f"one-at-a-time {reference:.1f}s -> "
             f"{ratio:.2f}x as fast ({goal}: {'met' if met else 'NOT met'})"))

    def shares(r: dict, label: str) -> dict:
        tps = sum(r["made"]) / r["wall"]
        every = (sum(r["made"]) + r["plan_tokens"]) / r["wall"]
        print(f"{args.engine} {label}, step_layout {r['layout']}: {r['wall']:.1f}s; writing tokens / wall {tps:.1f} "
              f"tok/s = {tps / raw:.2f} of "
              f"raw (short prompts), {tps / raw_workload:.2f} of raw (the workload's prompts); every token decoded "
              f"(plans {r['plan_tokens']} too) / wall {every:.1f} tok/s = {every / raw:.2f} / "
              f"{every / raw_workload:.2f}; writing prompts {sum(r['prompts'])} tokens, "
              f"{r['cached_share']:.0%} from the prefix cache; kept {r['kept']} of {args.n} rows, "
              f"S_l over all rows {r['sl_all']:.1f}; quarantined for {dict(r['why']) or 'nothing'}")
        return {"seconds": round(r["wall"], 2), "tokens_per_s": round(tps, 1), "raw_share": round(tps / raw, 3),
                "workload_raw_share": round(tps / raw_workload, 3), "all_tokens_share": round(every / raw, 3),
                "plan_tokens": r["plan_tokens"], "step_layout": r["layout"], "kept": r["kept"],
                "sl_all": round(r["sl_all"], 2), "prompt_cached_share": round(r["cached_share"], 3),
                "writing_tokens": sum(r["made"]), "words": sum(sum(x.step_words) for x in r["samples"])}

    print(f"{args.engine}: raw decode of {args.n} x {step_len} tokens in one batch: {raw:.1f} tok/s on short "
          f"prompts with default sampling, {raw_workload:.1f} tok/s on {len(workload)} of the run's own writing "
          f"calls (same prompts and sampling; their mean prompt {picked_mean:.0f} tokens, all writing calls' "
          f"{prompt_mean:.0f}); {raw_free:.1f} tok/s with no sampling work (top_p 1, no penalty)")
    out = {"bench": "agentwrite_batching", "engine": args.engine, "samples": args.n, "steps": steps,
           "max_num_seqs": args.max_num_seqs,
           "recipe_decoding": args.recipe_decoding,
           "driver": driver, "raw_tokens_per_s": round(raw, 1), "free_raw_tokens_per_s": round(raw_free, 1),
           "sample_in_processor": getattr(engine, "sample_in_processor", None),
           "workload_raw_tokens_per_s": round(raw_workload, 1),
           "workload_prompt_tokens": round(picked_mean, 1), "writing_prompt_tokens": round(prompt_mean, 1)}
    if rounds_run:
        out["rounds"] = shares(rounds_run, "rounds (continuous batching off)")
    out["run"] = shares(run, driver)
    if other_layout:
        out["other_layout"] = shares(other_layout, driver + " (same run, after the main run)")
    out["run"]["free_raw_share"] = round(sum(made) / rounds / raw_free, 3)
    out["run"]["all_tokens_free_raw_share"] = round((sum(made) + run["plan_tokens"]) / rounds / raw_free, 3)
    print(f"{args.engine}: against the decode limit with no sampling work ({raw_free:.1f} tok/s): writing tokens "
          f"{out['run']['free_raw_share']:.2f}, every token {out['run']['all_tokens_free_raw_share']:.2f}")
    if vllm_sampler:
        v = vllm_sampler["run"]
        tps, vtps = sum(made) / rounds, sum(v["made"]) / v["wall"]
        out["vllm_sampler"] = {"seconds": round(v["wall"], 2), "tokens_per_s": round(vtps, 1),
                               "raw_tokens_per_s": round(vllm_sampler["raw"], 1),
                               "workload_raw_tokens_per_s": round(vllm_sampler["raw_workload"], 1),
                               "raw_share": round(vtps / vllm_sampler["raw"], 3),
                               "free_raw_share": round(vtps / raw_free, 3), "speedup": round(tps / vtps, 3)}
        print(f"{args.engine} with vLLM's own sampler (sample_in_processor off), same run: {v['wall']:.1f}s, "
              f"writing tokens / wall {vtps:.1f} tok/s; raw {vllm_sampler['raw']:.1f} tok/s short, "
              f"{vllm_sampler['raw_workload']:.1f} workload; lendata's processor writes {tps / vtps:.2f}x the tokens "
              f"per second, "
              f"{v['wall'] / rounds:.2f}x in wall time (this ran second)")
    share = out["run"]["raw_share"]
    print(f"{args.engine}: goal >= 0.80 of raw: {share:.2f} against short prompts "
          f"({'met' if share >= 0.8 else 'NOT met'}), {out['run']['workload_raw_share']:.2f} against the "
          f"workload's own prompts ({'met' if out['run']['workload_raw_share'] >= 0.8 else 'NOT met'})")
    skipped = args.skip_sequential
    out.update({"sequential_seconds": None if skipped else round(reference, 2),
                "speedup": None if skipped else round(ratio, 3), "goal_met": None if skipped else met,
                "same_plans": None if skipped else [x.plan for x in batched] == [x.plan for x in sequential]})
    print(json.dumps(out))
    engine.close()


class Noting:
    """`engine` with every chain's calls shown to `note`; the chains are then driven as `engine` drives them
    (continuously or in rounds), so both drivers are counted the same way."""

    continuous_batching = True  # AgentWrite hands its chains here

    def __init__(self, engine, note):
        self.engine, self.note = engine, note

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_chains(self, chains, on_result=None):
        from lendata.engines.chains import run_chains

        return run_chains(self.engine, [_noted(c, self.note) for c in chains], on_result)


def _noted(chain, note):
    """`chain` with every (request, result) pair shown to `note` on its way back."""
    try:
        req = next(chain)
        while True:
            res = yield req
            note(req, res)
            req = chain.send(res)
    except StopIteration as done:
        return done.value


if __name__ == "__main__":  # vLLM's CPU build spawns workers: the guard is required
    main()
