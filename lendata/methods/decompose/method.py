"""The Dataset Decomposition method's contract: resolve the corpus and tokenizer, stream the buckets into
the build, record the statistics."""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

from lendata.corpus import plan_units
from lendata.inputs import InputError
from lendata.lengths import load_tokenizer
from lendata.methods.base import Build, Method, ReportSection, Split
from lendata.methods.decompose.buckets import Settings, token_type
from lendata.methods.decompose.stream import (
    DOCUMENTS_SCHEMA,
    decompose_units,
    empty_stats,
    finish_stats,
    merge_stats,
    summary,
)
from lendata.remote import is_url, shown
from schemas.decompose import BaselineSchema, DocumentsSchema, PiecesSchema

STDLIB = "@stdlib"  # the running Python's standard library sources: real text on every machine


def corpus_location(s: Settings, build: Build) -> str:
    """The corpus as a local path or an fsspec URL (s3://, hf://, gs://, ...)."""
    if s.input == STDLIB:
        return sysconfig.get_paths()["stdlib"]
    return s.input if is_url(s.input) else str(build.path(s.input))


class Decompose(Method):
    name = "decompose"
    settings = Settings
    inputs = ("input", "tokenizer")
    sharded = True  # units of the corpus, on the local runner or Ray (lendata/methods/decompose/stream.py)
    card_tags = ("pretraining", "variable-sequence-length", "dataset-decomposition")
    main_split = "train"

    def splits(self, s: Settings) -> dict[str, Split]:
        # the quarantine share is over documents: a piece or a baseline chunk is not a unit of input
        out = {"train": Split(None, PiecesSchema, counted=False, unchecked=("tokens",)),
               "documents": Split(DOCUMENTS_SCHEMA, DocumentsSchema)}
        if s.baseline_length:
            out["baseline"] = Split(None, BaselineSchema, counted=False, unchecked=("tokens",))
        return out

    def run(self, s: Settings, build: Build) -> None:
        tokenizer = load_tokenizer(s.tokenizer)
        eos_id = None
        if s.eos_token:
            eos_id = tokenizer.token_to_id(s.eos_token)
            if eos_id is None:
                raise InputError(f"the tokenizer has no token {s.eos_token!r} (set eos_token to one it has, or null)")
        ttype = token_type(int(s.vocab_size or tokenizer.get_vocab_size()))
        location = corpus_location(s, build)
        units = build.step("plan units", plan_units, location, s.glob, s.unit_bytes)
        tokenizer_file = str(build.path(s.tokenizer)) if s.tokenizer else None
        done = build.map(decompose_units, units, "decompose", build.output(), eos_id, str(ttype), tokenizer_file,
                         total=sum(u.count for u in units))
        stats = empty_stats(s)
        for shard in done:
            build.merge(shard.written)
            merge_stats(stats, shard.stats)
        if stats["documents"] == 0:
            raise InputError(f"{shown(location)}: no readable document (glob {s.glob!r})")
        finish_stats(stats)
        build.meta.update({"decomposition": {**stats, "units": len(units)}, "summary": summary(stats, s)})

    def report(self, manifest: dict[str, Any], folder: Path) -> ReportSection | None:
        from lendata.methods.decompose.report import section

        return section(manifest, folder) if "decomposition" in manifest else None


METHOD = Decompose()
