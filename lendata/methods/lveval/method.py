"""The LV-Eval method's contract: QA items -> confusing facts -> replacement tables -> every length level
streamed into its own split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lendata.inputs import InputError
from lendata.methods.base import QUARANTINE_SCHEMA, Build, Method, Split, quarantine_table
from lendata.methods.lveval import items as lv
from lendata.methods.lveval.context import depth_plan
from lendata.methods.lveval.levels import RECORD_SCHEMA, write_levels
from lendata.methods.lveval.pool import PYTHON_DOCS, level_name, make_unit, parse_level, read_pool
from lendata.methods.shared.lveval_metric import score_records
from schemas.lveval import LevelSchema


def _source(value: str, build: Build) -> Path | str:
    return value if value == PYTHON_DOCS else build.path(value)


def confusing_facts(items: list[lv.Item], engine: Any, s: lv.Settings, build: Build) -> lv.FactsOutcome:
    with build.progress(len(items) * s.fact_attempts, "confusing facts (calls, at most)") as bar:
        return lv.confusing_facts(items, engine, s, on_result=bar.update)


def replacement_tables(items: list[lv.Item], s: lv.Settings, engine: Any, build: Build) -> Any:
    if s.kpr != "engine":
        return lv.replacement_tables(items, s, engine)
    with build.progress(len(items), "replacement tables") as bar:
        return lv.replacement_tables(items, s, engine, on_result=bar.update)


class LVEval(Method):
    name = "lveval"
    settings = lv.Settings
    card_tasks = ("question-answering",)
    inputs = ("input", "distractors", "tokenizer")
    card_tags = ("long-context", "lv-eval")
    metrics = {"lveval": score_records}  # LV-Eval's keyword-recall gated F1 of predictions

    def splits(self, s: lv.Settings) -> dict[str, Split]:
        levels = {level_name(parse_level(x)): Split(RECORD_SCHEMA, LevelSchema, unchecked=("context",))
                  for x in sorted({parse_level(x) for x in s.levels})}
        # generated candidates that failed a check (CFI, KPR): part of the method's account, not of the data
        return {**levels, "rejected": Split(QUARANTINE_SCHEMA, None, counted=False)}

    def run(self, s: lv.Settings, build: Build) -> None:
        loaded = build.step("load QA items", lv.read_items, _source(s.input, build), s.n)
        items = loaded.rows
        build.quarantine([b.as_quarantine() for b in loaded.bad])
        if not items:
            reasons = "; ".join(f"{b.source}: {b.reason}" for b in loaded.bad[:3])
            raise InputError(f"no usable QA item in {s.input}" + (f" ({reasons})" if reasons else ""))
        # in QA items, before any engine call: the build's own check at the end counts level records
        build.check_share(len(loaded.bad), len(items) + len(loaded.bad), "QA items")
        languages = sorted({it.language for it in items})
        if s.unit == "auto" and len(languages) > 1:
            raise InputError(f"the QA items mix languages ({', '.join(languages)}): LV-Eval counts en levels in "
                             "words and zh in characters, so build each language separately or set `unit`")
        unit = make_unit(s.unit, languages[0], s.tokenizer)
        cap = int(max(parse_level(x) for x in s.levels) * s.pool_factor)
        pool = build.step("sample the distractor pool", read_pool, _source(s.distractors, build), unit, cap,
                          s.text_field, s.glob, 20, s.seed)
        # the pool reads the whole corpus: its unreadable documents are the corpus's, kept in `rejected` with
        # their file and line, not bad records of this build (they would count against max_quarantine_share)
        unreadable = [{**b, "stage": "distractors"} for b in pool.bad]
        engine = build.engines.get() if (s.facts_per_item > 0 or s.kpr == "engine") else None
        found = (build.step("confusing-fact insertion", confusing_facts, items, engine, s, build) if engine
                 else lv.FactsOutcome({}, []))
        tables, kpr_rejected = build.step("keyword and phrase replacement", replacement_tables, items, s, engine,
                                          build)
        build.add("rejected", quarantine_table(found.rejected + kpr_rejected + unreadable))
        total = sum(len(depth_plan(s, len(it.documents))) for it in items) * len(s.levels)
        with build.progress(total, "contexts") as bar:
            stats = build.step("assemble levels", write_levels, items, found.facts, tables, pool, unit, s,
                               build.dataset, build, lambda _name: bar.advance(1, 0))
        build.meta.update({
            "unit": unit.name,
            "distractor_pool": {"source": str(s.distractors), "documents": len(pool.texts), "units": pool.total,
                                "unreadable": len(unreadable)},
            "confusing_facts": sum(len(v) for v in found.facts.values()),
            "replacement_entries": sum(len(v) for v in tables.values()),
            "levels": stats,
        })


METHOD = LVEval()
