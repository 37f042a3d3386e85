"""The AgentWrite method's contract: targets prepared once, planning and writing sharded by samples."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from lendata.methods.agentwrite import plan_and_write as aw
from lendata.methods.base import Build, Method, Progress, Split
from lendata.methods.shared import quality_gate
from lendata.methods.shared.inputs import load_instructions
from schemas.sft import SFTSchema


def plan_write_filter(s: aw.Settings, samples: Sequence[aw.Sample], offset: int, engines: Any, progress: Progress
                      ) -> tuple[pa.Table, list[dict[str, Any]]]:
    """One shard: plans and paragraphs (all samples at once), the output filters, then the judge when one is
    set. On an engine with continuous batching each sample is one chain (its plan, then its steps) and the bar
    counts finished samples; elsewhere all plans come first (a bar over the samples), then the steps (a bar over
    the planned steps). Both give the same rows; the rate counts every token generated."""
    engine, samples = engines.get(), list(samples)

    def tokens(bar: Any) -> Callable[[int, Any], None]:
        return lambda _i, r: bar.advance(0, 0 if r.cached else r.completion_tokens)

    if getattr(engine, "continuous_batching", False):
        with progress(len(samples), "planning and writing") as bar:
            aw.plan_and_write(samples, engine, s, on_result=tokens(bar), on_sample=lambda _i: bar.advance(1, 0))
    else:
        with progress(len(samples), "planning") as bar:
            aw.make_plans(samples, engine, s, on_result=tokens(bar), on_sample=lambda _i: bar.advance(1, 0))
        with progress(sum(min(len(x.plan), s.max_steps) for x in samples), "writing") as bar:
            aw.write(samples, engine, s, on_result=tokens(bar), on_step=lambda _i, n: bar.advance(n, 0))
    table, filtered = aw.to_table(samples, engine, s)
    table, below = quality_gate.judge_shard(table, s, engines, progress)
    return table, filtered + below


class AgentWrite(Method):
    name = "agentwrite"
    settings = aw.Settings
    sharded = True
    card_tags = ("long-output", "sft", "agentwrite")

    def splits(self, s: aw.Settings) -> dict[str, Split]:
        return {"train": Split(quality_gate.with_judge_columns(aw.OUTPUT_SCHEMA, s), SFTSchema)}

    def run(self, s: aw.Settings, build: Build) -> None:
        samples = aw.prepare(load_instructions(s, build), s)
        done = build.map(plan_write_filter, samples, "agentwrite")
        quarantined = [q for _, filtered in done for q in filtered]
        build.quarantine(quarantined)
        # how many samples were written from the even fallback plan, and why: in the manifest, not just a log
        reasons = [r for t, _ in done for r in t.column("plan_fallback").to_pylist() if r]
        reasons += [r for q in quarantined if (r := json.loads(q["record"]).get("plan_fallback"))]
        build.meta["plan_fallbacks"] = {"plans": len(reasons), "reasons": dict(Counter(reasons).most_common())}
        schema = quality_gate.with_judge_columns(aw.OUTPUT_SCHEMA, s)
        build.add("train", pa.concat_tables([t for t, _ in done]) if done else schema.empty_table())


METHOD = AgentWrite()
