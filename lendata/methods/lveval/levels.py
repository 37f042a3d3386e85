"""Writing LV-Eval levels: every (item, level, depth) record is built, checked and streamed into its level's
split, so only a few contexts are in memory at once; then the version is published with its statistics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from lendata.methods.base import Writer
from lendata.methods.lveval.context import EvidenceTooLong, depth_plan, record
from lendata.methods.lveval.items import Item, Settings
from lendata.methods.lveval.pool import Pool, Unit, level_name, parse_level

_REPLACEMENT = pa.struct([("original", pa.string()), ("replacement", pa.string()), ("count", pa.int64())])
RECORD_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("input", pa.string()),
    ("context", pa.large_string()),
    ("answers", pa.list_(pa.string())),
    ("length", pa.int64()),  # input + context + answers, as LV-Eval counts it
    ("context_length", pa.int64()),
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


def _flush(buf: list[dict[str, Any]], writer: Writer, lengths: list[int]) -> None:
    # the build validates the batch (without the context column, which would be copied into polars for
    # nothing: assembly never leaves it empty, and its length is the `length` column the schema checks)
    written = writer.write(pa.Table.from_pylist(buf, schema=RECORD_SCHEMA))
    buf.clear()
    lengths.extend(written.column("length").to_pylist())


def write_levels(items: list[Item], facts: dict[str, list[str]], tables: dict[str, dict[str, str]], pool: Pool,
                 unit: Unit, s: Settings, dataset: str, out: Any, mixed: Pool, files: str,
                 on_record: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Stream every level of these items into its split through `out` (a shard's `build.output()`), in files
    named after `files`; the statistics per level. `mixed`: every item's documents (of all shards), mixed into
    the other items' contexts. Records that cannot be built are quarantined as they come (records failing the
    level schema by the output's check)."""
    stats: dict[str, Any] = {}
    for level in sorted({parse_level(x) for x in s.levels}):
        name = level_name(level)
        per_batch = max(1, BATCH_UNITS // level)
        writer = out.stream(name, RECORD_SCHEMA, None, max(1, SHARD_UNITS // level), files)
        lengths: list[int] = []
        buf: list[dict[str, Any]] = []

        for item in items:
            for tag, targets in depth_plan(s, len(item.documents)):
                try:
                    rec = record(item, facts.get(item.id, []), tables.get(item.id, {}), pool, unit, level, tag,
                                 targets, s, dataset, mixed)
                except EvidenceTooLong as e:
                    out.quarantine([{"id": f"{item.id}-{name}-{tag}", "stage": "assemble", "reason": str(e),
                                       "source": item.source, "record": ""}])
                    continue
                missing = answers_missing(rec)
                if missing:  # a replacement broke an answer: never ship an unanswerable record
                    out.quarantine([{"id": rec["id"], "stage": "assemble", "source": item.source, "record": "",
                                       "reason": f"answer {missing[0]!r} is not in the context"}])
                else:
                    buf.append(rec)
                if on_record:
                    on_record(name)
                if len(buf) >= per_batch:
                    _flush(buf, writer, lengths)
        if buf:
            _flush(buf, writer, lengths)
        writer.close()
        stats[name] = {"rows": len(lengths), "level_length": level, "unit": unit.name,
                       "min_length": min(lengths, default=0), "max_length": max(lengths, default=0),
                       "total_length": sum(lengths)}
    return stats


def merge_level_stats(parts: list[dict[str, Any]], final: bool = True) -> dict[str, Any]:
    """The per-level statistics of several blocks of items as one; `final`: with the mean length (from the
    summed lengths, which it then drops) instead of the sum, for the manifest."""
    out: dict[str, Any] = {}
    for part in parts:
        for name, st in part.items():
            if name not in out:
                out[name] = dict(st)
                continue
            o = out[name]
            if st["rows"]:
                o["min_length"] = min(o["min_length"], st["min_length"]) if o["rows"] else st["min_length"]
                o["max_length"] = max(o["max_length"], st["max_length"])
            o["rows"] += st["rows"]
            o["total_length"] += st["total_length"]
    if final:
        for o in out.values():
            o["mean_length"] = round(o.pop("total_length") / o["rows"], 1) if o["rows"] else 0
    return out
