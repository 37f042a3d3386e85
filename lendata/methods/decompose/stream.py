"""Decomposition of a whole corpus, streamed batch by batch into a staged version, and its statistics.

Memory holds one batch of documents and one open shard per bucket, whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from lendata.corpus import DocBatch
from lendata.methods.base import Build
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


def decompose_corpus(
    batches: Iterable[DocBatch],
    build: Build,
    s: Settings,
    ttype: pa.DataType,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Stream `train` (hive-partitioned `bucket=K`), `documents` and `baseline` into the build, quarantine the
    unreadable documents; return the statistics."""
    rng = np.random.default_rng(s.seed)  # one stream for the corpus: the same seed and batch size, the same data
    writers: dict[int, Any] = {}
    docs = build.stream("documents", DOCUMENTS_SCHEMA, rows_per_shard=1 << 20)
    chunker = ConcatChunker(s.baseline_length, ttype) if s.baseline_length else None
    base = build.stream("baseline", chunker.schema, rows_per_shard=s.rows_per_shard) if chunker else None
    seqs = {k: 0 for k in range(s.min_log2, s.max_log2 + 1)}
    bad: list[dict[str, Any]] = []
    n_docs = n_tokens = dropped = 0
    for b in batches:
        ids = np.arange(n_docs, n_docs + b.lengths.size, dtype=np.int64)
        pieces = decompose_lengths(b.lengths, s, rng)
        check_pieces(pieces, b.lengths, s)
        flat = b.flat.astype(numpy_type(ttype), copy=False)  # once: buckets and baseline share it
        for k, view in gather(pa.array(flat, type=ttype), b.starts, ids, pieces, s):
            rb = to_lists(view)
            if k not in writers:
                writers[k] = build.stream("train", bucket_schema(ttype), f"bucket={k}", s.rows_per_shard)
            seqs[k] += writers[k].write(rb).num_rows  # rows written: a row failing its schema is quarantined
        per_doc = np.bincount(pieces.doc, minlength=b.lengths.size).astype(np.int32)
        docs.write(pa.RecordBatch.from_arrays(
            [pa.array(ids), pa.array(b.sources, pa.string()), pa.array(b.lengths), pa.array(b.lengths - pieces.dropped),
             pa.array(pieces.dropped), pa.array(per_doc)], schema=DOCUMENTS_SCHEMA))
        if chunker is not None and base is not None:
            out = chunker.add(flat, b.lengths)
            if out is not None:
                base.write(out)
        bad += b.bad
        n_docs += b.lengths.size
        n_tokens += int(b.lengths.sum())
        dropped += int(pieces.dropped.sum())
        if on_batch:
            on_batch(b.lengths.size, int(b.lengths.sum()))
    for w in [*writers.values(), docs, *([base] if base else [])]:
        w.close()
    build.quarantine(bad)
    buckets = {str(k): {"sequences": n, "tokens": n * s.size(k)} for k, n in seqs.items()}
    stats: dict[str, Any] = {
        "documents": n_docs, "input_tokens": n_tokens, "kept_tokens": n_tokens - dropped,
        "dropped_tokens": dropped, "buckets": buckets, "unreadable_documents": len(bad),
    }
    if chunker is not None:
        stats["baseline"] = {
            "length": chunker.length, "sequences": chunker.next_id, "tokens": chunker.tokens,
            "dropped_tokens": chunker.dropped, "context_sum": chunker.pairs_within,
            "attention_pairs": chunker.pairs_total, "cross_document_pairs": chunker.pairs_total - chunker.pairs_within,
        }
    return stats


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
