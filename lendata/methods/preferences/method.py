"""The `preferences` method's contract: instructions sharded; on each shard every model samples, the judge scores
every sample, and each instruction's pair is selected; the report shows the length difference of the pairs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lendata.judging import judges
from lendata.methods.base import QUARANTINE_SCHEMA, Build, Method, Progress, ReportSection, Split, quarantine_table
from lendata.methods.preferences import pairs as pp
from lendata.methods.shared import quality_gate
from lendata.methods.shared.inputs import load_instructions
from lendata.methods.shared.model_list import open_models
from schemas.preferences import PairsSchema


def pair_shard(s: pp.Settings, rows: Sequence[dict[str, Any]], offset: int, engines: Any, progress: Progress
               ) -> tuple[list[pp.Candidate], list[dict[str, Any]], list[dict[str, Any]], str]:
    """One shard: (judged candidates, quarantined samples, instructions without any candidate, the judge's
    model). The pairs are selected on the driver: `length_adjusted` fits its slope over every shard."""
    candidates, failed = [], []
    for label, _, _, engine in open_models(s.models, engines):
        with progress(len(rows) * s.samples, f"sampling {label}") as bar:
            got, bad = pp.sample(rows, engine, label, s, offset, bar.update)
        candidates += got
        failed += bad
    judge = quality_gate.judge_engine(s, engines)
    with progress(len(candidates), "judging") as bar:
        verdicts = judges.judge_quality([(c.instruction, c.text) for c in candidates], judge,
                                        judges.JudgeSettings(attempts=s.judge_attempts),
                                        lambda _i, _j: bar.advance(1, 0))
    for c, v in zip(candidates, verdicts, strict=True):
        c.sq, c.judge_error = v.sq, v.error
    empty = [pp.rejection_without_samples(row, i, s.samples * max(1, len(s.models)))
             for i, row in enumerate(rows, start=offset) if not any(c.index == i for c in candidates)]
    return candidates, failed, empty, judge.model_id


class Preferences(Method):
    name = "preferences"
    settings = pp.Settings
    sharded = True
    card_tasks = ("text-generation",)
    card_tags = ("dpo", "preferences", "long-output")
    main_split = "train"

    def splits(self, s: pp.Settings) -> dict[str, Split]:
        # `rejected` (instructions without a pair) is counted: a run that finds no pair is a result, published
        # with the reasons, not a failed build
        return {"train": Split(pp.PAIRS_SCHEMA, PairsSchema), "rejected": Split(QUARANTINE_SCHEMA, None, counted=True)}

    def run(self, s: pp.Settings, build: Build) -> None:
        done = build.map(pair_shard, load_instructions(s, build), "preferences")
        build.quarantine([q for _, bad, _, _ in done for q in bad])
        rejected = [r for _, _, empty, _ in done for r in empty]
        judge_model = next((m for _, _, _, m in done), "")
        groups: dict[int, list[pp.Candidate]] = defaultdict(list)
        for cands, _, _, _ in done:
            for c in cands:
                groups[c.index].append(c)
        slope = pp.length_slope(list(groups.values()))
        kept = []
        for _, cands in sorted(groups.items()):
            pair, why = pp.select(cands, s, slope)
            if pair:
                kept.append(pp.pair_row(*pair, judge_model, len(cands)))
            else:
                rejected.append(pp.rejection(cands, why))
        ratios = [p["length_ratio"] for p in kept]
        build.meta["preferences"] = {
            "pairs": len(kept), "instructions_without_pair": len(rejected),
            "selection": s.selection, "length_tolerance": s.length_tolerance, "length_slope": slope,
            "length_ratios": [round(r, 4) for r in ratios],
            "chosen_longer_share": round(float(np.mean([r > 1 for r in ratios])), 4) if ratios else None,
            "median_length_ratio": round(float(np.median(ratios)), 4) if ratios else None,
        }
        build.add("train", pa.Table.from_pylist(kept, schema=pp.PAIRS_SCHEMA))
        build.add("rejected", quarantine_table(rejected))

    def report(self, manifest: dict[str, Any], folder: Path) -> ReportSection | None:
        data = manifest.get("preferences")
        if data is None:
            return None
        from lendata.plots import pyplot, save_png

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ratios = np.asarray(data["length_ratios"], dtype=float)
        if len(ratios):
            ax.hist(np.log2(ratios), bins=min(30, max(5, len(ratios))), color="#4c72b0")
        ax.axvline(0, color="#999", ls="--", lw=1)
        ax.set_xlabel("log2(chosen words / rejected words): right = chosen longer")
        ax.set_ylabel("pairs")
        ax.set_title(f"length difference of {data['pairs']} pairs ({data['selection']})", fontsize=9)
        png = save_png(fig, folder / "preference_lengths.png")
        lines = [f"{data['pairs']} pairs, {data['instructions_without_pair']} instructions without a pair; chosen "
                 f"longer in {data['chosen_longer_share']:.0%} of pairs, median chosen/rejected length "
                 f"{data['median_length_ratio']:.2f}" if data["pairs"] else "no pair was kept"]
        return ReportSection("preferences", data, [str(png)], None, lines)


METHOD = Preferences()
