"""The `eval` method's contract: the evaluation set read once, answered (and judged) in shards, the results
summarised per level into the manifest and the report's table."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lendata.judging import judges
from lendata.methods.base import Build, Method, Progress, ReportSection, Split
from lendata.methods.eval import suites as ev
from lendata.methods.shared import quality_gate
from lendata.methods.shared.inputs import load_instructions
from schemas.eval import ResultsSchema

LONGEN = Path(__file__).resolve().parents[2] / "data" / "longen.jsonl"  # the 240 LonGen prompts lendata ships
# an empty `input` means the suite's own set (relative to the recipe: pipelines/data/)
DEFAULT_SETS = {"longbench_write": "data/longwrite_ruler_en.jsonl", "longwrite_ruler": "data/longwrite_ruler.jsonl"}


def eval_shard(s: ev.Settings, items: Sequence[dict[str, Any]], offset: int, engines: Any, progress: Progress
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One shard: answers, scores, and S_q from the judge when one is set."""
    engine = engines.get()
    with progress(len(items), f"eval {s.suite}") as bar:
        rows, bad = ev.answer(items, engine, s, bar.update)
    if s.judge and rows:
        judge = quality_gate.judge_engine(s, engines)
        with progress(len(rows), "judging") as bar:
            verdicts = judges.judge_quality([(r["prompt"], r["response"]) for r in rows], judge,
                                            judges.JudgeSettings(attempts=s.judge_attempts),
                                            lambda _i, _j: bar.advance(1, 0))
        for r, v in zip(rows, verdicts, strict=True):
            r["sq"], r["judge_error"] = v.sq, v.error
    return rows, bad


def level_order(level: str) -> tuple[float, str]:
    """Levels by their first number ("[500, 2000)" before "[4000, ∞)", "16k" before "128k"), then by name."""
    found = re.search(r"\d+", level)
    value = float(found.group()) * (1000 if level.strip().endswith("k") else 1) if found else float("inf")
    return value, level


class Eval(Method):
    name = "eval"
    settings = ev.Settings
    sharded = True
    card_tasks = ("text-generation",)
    card_tags = ("evaluation",)
    main_split = "results"

    def splits(self, s: ev.Settings) -> dict[str, Split]:
        return {"results": Split(ev.RESULTS_SCHEMA, ResultsSchema)}

    def run(self, s: ev.Settings, build: Build) -> None:
        if s.suite == "lveval":
            items = self._lveval_items(s, build)
        else:
            source = s
            if s.suite == "longen" and not s.input:  # the shipped prompts: their text is `query`
                source = dataclasses.replace(s, input=str(LONGEN), instruction_field="query", target_field=None)
            elif not s.input:  # the suite's own set, beside the recipe
                source = dataclasses.replace(s, input=DEFAULT_SETS[s.suite])
            items, bad = ev.text_items(load_instructions(source, build), s)
            build.quarantine(bad)
        done = build.map(eval_shard, items, "eval")
        rows = [r for got, _ in done for r in got]
        build.quarantine([q for _, bad in done for q in bad])
        build.meta["eval"] = {"suite": s.suite, **ev.summary(rows)}
        for level, n in (build.meta.get("eval_input") or {}).get("records_per_level", {}).items():
            if not n:  # a level with no record says so, instead of vanishing from the table
                build.meta["eval"]["levels"][level] = {"n": 0, "score": None, "mean_words": None, "sq": None,
                                                       "judged": 0}
        build.add("results", ev.as_table(rows) if rows else ev.RESULTS_SCHEMA.empty_table())

    @staticmethod
    def _lveval_items(s: ev.Settings, build: Build) -> list[dict[str, Any]]:
        from lendata.inputs import InputError

        if not s.input:
            raise InputError("the lveval suite reads a lendata LV-Eval build: set input to DATASET[@VERSION]")
        splits = list(dict.fromkeys(s.levels or build.version_splits(s.input)))  # each level once
        needed = ["id", "input", "context", "answers", "dataset", "language", "answer_keywords", "level", "source"]
        records: list[dict[str, Any]] = []
        read: dict[str, int] = {}
        label = s.input
        for split in splits:
            label, files = build.version_files(s.input, split)
            level: list[dict[str, Any]] = []
            for f in files:
                missing = [c for c in needed if c not in pq.read_schema(f).names]
                if missing:
                    raise InputError(f"{label} is not an LV-Eval build: its records have no {', '.join(missing)}")
                level += pq.read_table(f, columns=needed).to_pylist()
            level = level[: s.n] if s.n else level  # the first n records of each level
            read[split] = len(level)
            records += [{**rec, "level": rec.get("level") or split} for rec in level]
        build.meta["eval_input"] = {"version": label.rsplit(":", 1)[0], "records_per_level": read}
        return ev.lveval_items(records)

    def report(self, manifest: dict[str, Any], folder: Path) -> ReportSection | None:
        data = manifest.get("eval")
        if not data or not data.get("all"):
            return None
        def fmt(v: Any) -> str:
            return "—" if v is None else f"{v:.1f}"

        rows = [(lv, str(b["n"]), fmt(b["mean_words"]), fmt(b["score"]), fmt(b["sq"]), fmt(b.get("s_bar")))
                for lv, b in [*sorted(data["levels"].items(), key=lambda kv: level_order(kv[0])), ("all", data["all"])]]
        a = data["all"]
        lines = [f"{data['suite']}: {data['metric']} {a['score']:.1f} over {a['n']} answers"
                 + (f"; S_q {a['sq']:.1f} ({a['judged']} judged)" if a["sq"] is not None else "")]
        return ReportSection("eval", data, [], (("level", "n", "mean words", data["metric"], "S_q", "S̄"), rows),
                             lines)


METHOD = Eval()
