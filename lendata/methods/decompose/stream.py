"""Decomposition of a corpus, unit by unit, streamed batch by batch into a staged version, and its statistics.

The corpus is cut into units (lendata.corpus.plan_units) from the input alone; each unit writes its own files
(named after the unit) and returns only counts, so the version's files and content hash are the same for any
number of shards, local or on Ray. Memory holds one batch of documents and one open shard per bucket.

Deliberate deviation: the concat-and-chunk baseline joins the documents of one unit, not of the whole corpus
(its last partial chunk, under `baseline_length` tokens, is dropped per unit); `seq_id` is unit << 32 + the
chunk's number in the unit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lendata.corpus import Unit, prefetch, unit_batches
from lendata.memory import limit_malloc_arenas, peak_rss_mb
from lendata.methods.base import Progress
from lendata.methods.decompose.buckets import (
    ConcatChunker,
    Pieces,
    Settings,
    bucket_schema,
    decompose_lengths,
    gather,
    numpy_type,
    to_lists,
)

DOCUMENTS_SCHEMA = pa.schema([
    ("doc_id", pa.int64()), ("source", pa.string()), ("tokens", pa.int64()), ("kept", pa.int64()),
    ("dropped", pa.int64()), ("pieces", pa.int32()),
])


def check_pieces(pieces: Pieces, lengths: np.ndarray, s: Settings) -> None:
    """Every piece lies inside its own document: a broken invariant is a bug, never data."""
    ends = pieces.offset + (np.int64(1) << pieces.log2.astype(np.int64)) + s.extra
    if pieces.doc.size and ((pieces.offset < 0) | (ends > lengths[pieces.doc])).any():
        raise AssertionError("a decomposed piece reaches outside its document")


@dataclass
class UnitsDone:
    """What a shard of units sends back to the driver: statistics and the files it wrote, never tokens."""

    stats: dict[str, Any]
    written: Any  # the shard's `Output.result()`, merged into the staged version by the build
    seconds: float
    peak_rss_mb: int = 0  # of the process that ran the shard (on the local runner: the driver, so far)

    def progress(self) -> tuple[int, int]:
        """(documents, tokens) the shard read: the driver's progress bar counts these."""
        return self.stats["documents"], self.stats["input_tokens"]

    def accounting(self) -> dict[str, Any]:
        return {"documents": self.stats["documents"], "tokens": self.stats["input_tokens"],
                "work_seconds": round(self.seconds, 2), "peak_rss_mb": self.peak_rss_mb}


def empty_stats(s: Settings) -> dict[str, Any]:
    buckets = {str(k): {"sequences": 0, "tokens": 0} for k in range(s.min_log2, s.max_log2 + 1)}
    stats: dict[str, Any] = {"documents": 0, "input_tokens": 0, "dropped_tokens": 0, "unreadable_documents": 0,
                             "buckets": buckets}
    if s.baseline_length:
        stats["baseline"] = {"length": s.baseline_length, "sequences": 0, "tokens": 0, "dropped_tokens": 0,
                             "context_sum": 0, "attention_pairs": 0}
    return stats


def merge_stats(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Sum one unit's (or shard's) statistics into `total`: every figure is a count, so the sum does not depend
    on how the corpus was cut."""
    for key in ("documents", "input_tokens", "dropped_tokens", "unreadable_documents"):
        total[key] += part[key]
    for k, v in part["buckets"].items():
        for f in ("sequences", "tokens"):
            total["buckets"][k][f] += v[f]
    if "baseline" in part:
        for f in ("sequences", "tokens", "dropped_tokens", "context_sum", "attention_pairs"):
            total["baseline"][f] += part["baseline"][f]
    return total


def finish_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The manifest's form: kept tokens and cross-document pairs derived from the sums."""
    stats["kept_tokens"] = stats["input_tokens"] - stats["dropped_tokens"]
    if "baseline" in stats:
        b = stats["baseline"]
        b["cross_document_pairs"] = b["attention_pairs"] - b["context_sum"]
    return stats


def decompose_unit(unit: Unit, tokenizer: Any, eos_id: int | None, s: Settings, ttype: pa.DataType, out: Any,
                   on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Decompose one unit into `train` (hive-partitioned `bucket=K`), `documents` and `baseline` files named
    after the unit; return its statistics. Everything here depends on the unit alone."""
    name = f"u{unit.index:06d}"
    stats = empty_stats(s)
    writers: dict[int, Any] = {}
    docs = out.stream("documents", DOCUMENTS_SCHEMA, None, 1 << 20, name)
    # the baseline joins the unit's documents end to end; the unit's last partial chunk is dropped
    chunker = ConcatChunker(s.baseline_length, ttype, first_id=unit.index << 32) if s.baseline_length else None
    base = out.stream("baseline", chunker.schema, None, s.rows_per_shard, name) if chunker else None
    for b in prefetch(unit_batches(unit, tokenizer, eos_id, s.text_field, s.token_field, s.batch_docs)):
        ids = b.ids  # unit_batches gives every batch its corpus-wide ids
        assert ids is not None
        pieces = decompose_lengths(b.lengths, s, ids)
        check_pieces(pieces, b.lengths, s)
        flat = b.flat.astype(numpy_type(ttype), copy=False)  # once: buckets and baseline share it
        for k, view in gather(pa.array(flat, type=ttype), b.starts, ids, pieces, s):
            if k not in writers:
                writers[k] = out.stream("train", bucket_schema(ttype), f"bucket={k}", s.rows_per_shard, name)
            written = writers[k].write(to_lists(view)).num_rows  # a row failing its schema is quarantined
            stats["buckets"][str(k)]["sequences"] += written
            stats["buckets"][str(k)]["tokens"] += written * s.size(k)
        per_doc = np.bincount(pieces.doc, minlength=b.lengths.size).astype(np.int32)
        docs.write(pa.RecordBatch.from_arrays(
            [pa.array(ids), pa.array(b.sources, pa.string()), pa.array(b.lengths), pa.array(b.lengths - pieces.dropped),
             pa.array(pieces.dropped), pa.array(per_doc)], schema=DOCUMENTS_SCHEMA))
        if chunker is not None and base is not None:
            chunk = chunker.add(flat, b.lengths)
            if chunk is not None:
                base.write(chunk)
        out.quarantine(b.bad)
        stats["unreadable_documents"] += len(b.bad)
        stats["documents"] += int(b.lengths.size)
        stats["input_tokens"] += int(b.lengths.sum())
        stats["dropped_tokens"] += int(pieces.dropped.sum())
        if on_batch:
            on_batch(int(b.lengths.size), int(b.lengths.sum()))
    for w in [*writers.values(), docs, *([base] if base else [])]:
        w.close()
    if chunker is not None:
        stats["baseline"].update(sequences=chunker.sequences, tokens=chunker.tokens, dropped_tokens=chunker.dropped,
                                 context_sum=chunker.pairs_within, attention_pairs=chunker.pairs_total)
    return stats


def decompose_units(s: Settings, units: list[Unit], offset: int, engines: Any, progress: Progress,
                    out: Any, eos_id: int | None, ttype: str, tokenizer_file: str | None) -> UnitsDone:
    """A shard's work (a `build.map` step): its units one after another, on whichever worker runs it.
    `tokenizer_file`: the recipe's tokenizer, resolved by the driver (a worker's working folder is not the
    recipe's)."""
    from lendata.lengths import load_tokenizer

    started = time.monotonic()
    limit_malloc_arenas()  # memory flat as the corpus grows (lendata/memory.py); before the tokeniser's threads
    tokenizer = None if s.token_field else load_tokenizer(tokenizer_file)
    arrow_type = {"uint16": pa.uint16(), "uint32": pa.uint32()}[ttype]
    stats = empty_stats(s)
    with progress(sum(u.count for u in units), "documents") as bar:
        for unit in units:
            merge_stats(stats, decompose_unit(unit, tokenizer, eos_id, s, arrow_type, out,
                                              on_batch=lambda docs, toks: bar.advance(docs, toks)))
    return UnitsDone(stats, out.result(), time.monotonic() - started, peak_rss_mb())


# its one bar counts the documents and tokens that UnitsDone.progress() totals (lendata.methods.base.Build.map)
decompose_units.live_progress = True  # type: ignore[attr-defined]


def summary(stats: dict[str, Any], s: Settings) -> dict[str, Any]:
    """The DD metrics (METHODS.md §5) from the build's stats: token share per bucket, average sequence and
    context length, attention cost relative to concat-and-chunk at 2^max, cross-document attention."""
    b = {int(k): v for k, v in stats["buckets"].items()}
    kept = sum(v["tokens"] for v in b.values())
    seqs = sum(v["sequences"] for v in b.values())
    share = {k: (v["tokens"] / kept if kept else 0.0) for k, v in sorted(b.items())}
    # every DD sequence is one document's slice, so a token's context is its position in the sequence
    context = sum(v["sequences"] * s.size(k) * (s.size(k) - 1) / 2 for k, v in b.items())
    out: dict[str, Any] = {
        "token_share": {f"D{k}": round(x, 4) for k, x in share.items()},
        "avg_sequence_length": round(kept / seqs, 1) if seqs else 0.0,
        "avg_context_length": round(context / kept, 1) if kept else 0.0,
        # a step of b tokens from D_k costs b * 2^k attention; concat-and-chunk at L costs b * L per step
        "attention_cost_vs_concat": round(sum(x * (1 << k) for k, x in share.items()) / (1 << s.max_log2), 4),
        "cross_document_attention": 0,
        "kept_share": round(kept / stats["input_tokens"], 4) if stats["input_tokens"] else 0.0,
    }
    base = stats.get("baseline")
    if base and base["tokens"]:
        out["baseline"] = {
            "length": base["length"],
            "avg_sequence_length": base["length"],
            "avg_context_length": round(base["context_sum"] / base["tokens"], 1),
            "cross_document_attention_share": round(base["cross_document_pairs"] / base["attention_pairs"], 4),
        }
    return out
