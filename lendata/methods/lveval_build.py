"""Writing LV-Eval levels: every (item, level, depth) record is built, checked and streamed into its level's
split, so only a few contexts are in memory at once; then the version is published with its statistics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lendata import store as st
from lendata.methods.lveval import Item, Settings
from lendata.methods.lveval_context import EvidenceTooLong, depth_plan, record
from lendata.methods.lveval_pool import Pool, Unit, level_name, parse_level

_REPLACEMENT = pa.struct([("original", pa.string()), ("replacement", pa.string()), ("count", pa.int64())])
RECORD_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("input", pa.string()),
    ("context", pa.large_string()),
    ("answers", pa.list_(pa.string())),
    ("length", pa.int64()),
    ("dataset", pa.string()),
    ("language", pa.string()),
    ("answer_keywords", pa.string()),
    ("confusing_facts", pa.list_(pa.string())),
    ("level", pa.string()),
    ("level_length", pa.int64()),
    ("unit", pa.string()),
    ("depth", pa.list_(pa.float64())),
    ("evidence_offsets", pa.list_(pa.int64())),
    ("fact_offsets", pa.list_(pa.int64())),
    ("distractors", pa.int32()),
    ("replacements", pa.list_(_REPLACEMENT)),
    ("item_id", pa.string()),
    ("source", pa.string()),
])
BATCH_UNITS = 500_000  # context units per written batch: bounds how many contexts are held at once
SHARD_UNITS = 20_000_000  # context units per Parquet shard


def answers_missing(rec: dict[str, Any]) -> list[str]:
    return [a for a in rec["answers"] if a not in rec["context"]]


def _flush(buf: list[dict[str, Any]], writer: st.ShardWriter, lengths: list[int],
           quarantine: list[dict[str, Any]]) -> None:
    from schemas import split_valid

    table = pa.Table.from_pylist(buf, schema=RECORD_SCHEMA)
    buf.clear()
    # checked without the context column, which would be copied into polars; assembly never leaves it empty,
    # and its length is the `length` column the schema checks
    _, failed = split_valid(table.drop_columns(["context"]), "lveval_level")
    if failed:
        quarantine.extend(failed)
        table = table.filter(pc.invert(pc.is_in(table["id"], pa.array([q["id"] for q in failed]))))
    writer.write(table)
    lengths.extend(table.column("length").to_pylist())


def write_levels(items: list[Item], facts: dict[str, list[str]], tables: dict[str, dict[str, str]], pool: Pool,
                 unit: Unit, s: Settings, dataset: str, stage: st.Stage,
                 on_record: Callable[[str], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Stream every level into `stage`; (statistics per level, quarantine records)."""
    stats: dict[str, Any] = {}
    quarantine: list[dict[str, Any]] = []
    for level in sorted({parse_level(x) for x in s.levels}):
        name = level_name(level)
        per_batch = max(1, BATCH_UNITS // level)
        writer = stage.writer(name, RECORD_SCHEMA, rows_per_shard=max(1, SHARD_UNITS // level))
        lengths: list[int] = []
        buf: list[dict[str, Any]] = []

        for item in items:
            for tag, targets in depth_plan(s, len(item.documents)):
                try:
                    rec = record(item, facts.get(item.id, []), tables.get(item.id, {}), pool, unit, level, tag,
                                 targets, s, dataset)
                except EvidenceTooLong as e:
                    quarantine.append({"id": f"{item.id}-{name}-{tag}", "stage": "assemble", "reason": str(e),
                                       "source": item.source, "record": ""})
                    continue
                missing = answers_missing(rec)
                if missing:  # a replacement broke an answer: never ship an unanswerable record
                    quarantine.append({"id": rec["id"], "stage": "assemble", "source": item.source, "record": "",
                                       "reason": f"answer {missing[0]!r} is not in the context"})
                else:
                    buf.append(rec)
                if on_record:
                    on_record(name)
                if len(buf) >= per_batch:
                    _flush(buf, writer, lengths, quarantine)
        if buf:
            _flush(buf, writer, lengths, quarantine)
        writer.close()
        stats[name] = {"rows": len(lengths), "level_length": level, "unit": unit.name,
                       "min_length": min(lengths, default=0), "max_length": max(lengths, default=0),
                       "mean_length": round(sum(lengths) / len(lengths), 1) if lengths else 0}
    return stats, quarantine


def publish(stage: st.Stage, recipe: dict[str, Any], rejected: list[dict[str, Any]],
            quarantine: list[dict[str, Any]], meta: dict[str, Any], overwrite: bool = False) -> st.Version:
    from lendata.build import quarantine_table

    stage.add_table("rejected", quarantine_table(rejected))  # generated candidates that failed a check (CFI, KPR)
    stage.add_table("quarantine", quarantine_table(quarantine))  # input rows and records that could not be built
    return stage.publish(str(recipe.get("version", st.AUTO)), overwrite, meta)


def input_path(recipe: dict[str, Any], key: str) -> Path | str:
    from lendata.methods.lveval_pool import PYTHON_DOCS
    from lendata.recipes import resolve_input

    value = str(recipe[key])
    return value if value == PYTHON_DOCS else resolve_input(recipe, value)
