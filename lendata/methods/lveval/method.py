"""The LV-Eval method's contract: QA items -> confusing facts -> replacement tables -> every length level
streamed into its own split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lendata.inputs import InputError
from lendata.methods.base import QUARANTINE_SCHEMA, Build, Method, Progress, Split, quarantine_table
from lendata.methods.lveval import items as lv
from lendata.methods.lveval.context import depth_plan, item_documents
from lendata.methods.lveval.levels import RECORD_SCHEMA, merge_level_stats, write_levels
from lendata.methods.lveval.pool import PYTHON_DOCS, level_name, make_unit, parse_level, read_pool
from lendata.methods.shared.lveval_metric import score_records
from lendata.remote import shown
from schemas.lveval import LevelSchema


def _source(value: str, build: Build) -> Path | str:
    return value if value == PYTHON_DOCS else build.path(value)


@dataclass
class BlocksDone:
    """What a shard of item blocks sends back: level statistics, rejected candidates, counts, its files."""

    levels: dict[str, Any]
    rejected: list[dict[str, Any]]
    facts: int
    replacement_entries: int
    records: int
    items: int
    written: Any

    def progress(self) -> tuple[int, int]:
        return self.records, 0

    def accounting(self) -> dict[str, Any]:
        return {"items": self.items, "records": self.records}


def record_count(items: list[lv.Item], s: lv.Settings) -> int:
    """Records the items give: one per (item, depth of its plan, level)."""
    return sum(len(depth_plan(s, len(it.documents))) for it in items) * len({parse_level(x) for x in s.levels})


def build_blocks(s: lv.Settings, blocks: list[tuple[int, list[lv.Item]]], offset: int, engines: Any,
                 progress: Progress, out: Any, pool: Any, mixed: Any, language: str, dataset: str) -> BlocksDone:
    """A shard's work (a `build.map` step): for each block of items, its confusing facts and replacement tables
    (engine calls, each seeded by its item), then its records of every level, written in files named after
    the block. A record depends on its item, the pool and `mixed` alone, so the rows do not depend on how
    the blocks were shared out."""
    unit = make_unit(s.unit, language, s.tokenizer)
    engine = engines.get() if (s.facts_per_item > 0 or s.kpr == "engine") else None
    items = [it for _, block in blocks for it in block]
    total = record_count(items, s)
    calls = len(items) * (s.fact_attempts if s.facts_per_item > 0 else 0) + (len(items) if s.kpr == "engine" else 0)
    with progress(calls or None, "confusing facts and replacement tables (calls, at most)") as bar:
        found = (lv.confusing_facts(items, engine, s, on_result=bar.update) if engine and s.facts_per_item > 0
                 else lv.FactsOutcome({}, []))
        tables, kpr_rejected = lv.replacement_tables(items, s, engine, on_result=bar.update)
    parts = []
    with progress(total, "contexts") as bar:
        for index, block in blocks:
            parts.append(write_levels(block, found.facts, tables, pool, unit, s, dataset, out, mixed,
                                      f"b{index:06d}", lambda _name: bar.advance(1, 0)))
    return BlocksDone(merge_level_stats(parts, final=False), found.rejected + kpr_rejected,
                      sum(len(v) for v in found.facts.values()), sum(len(v) for v in tables.values()),
                      sum(p["rows"] for part in parts for p in part.values()), len(items), out.result())


class LVEval(Method):
    name = "lveval"
    settings = lv.Settings
    sharded = True  # blocks of items, each with its own engine calls and files (build_blocks)
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
        mixed = item_documents(items, unit)  # every item's documents, mixed into the other items' contexts
        # blocks of items are the unit of work and of files: shards take whole blocks, so files are the same
        # for any number of shards
        blocks = [(i, items[a:a + s.block_items]) for i, a in enumerate(range(0, len(items), s.block_items))]
        records = record_count(items, s)
        done = build.map(build_blocks, blocks, "lveval", build.output(), pool, mixed, languages[0], build.dataset,
                         total=records)
        for shard in done:
            build.merge(shard.written)
        # in item order, CFI before KPR: within a shard, engine rounds interleave the items
        place = {it.id: i for i, it in enumerate(items)}
        rejected = sorted((r for shard in done for r in shard.rejected),
                          key=lambda r: (place.get(r["id"], len(place)), r["stage"] != "cfi"))
        build.add("rejected", quarantine_table(rejected + unreadable))
        build.meta.update({
            "unit": unit.name,
            "distractor_pool": {"source": shown(str(s.distractors)), "documents": len(pool.texts),
                                "units": pool.total, "unreadable": len(unreadable)},
            "confusing_facts": sum(shard.facts for shard in done),
            "replacement_entries": sum(shard.replacement_entries for shard in done),
            "levels": merge_level_stats([shard.levels for shard in done]),
            "blocks": len(blocks),
        })


METHOD = LVEval()
