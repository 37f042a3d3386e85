"""The Dataset Decomposition method's contract: resolve the corpus and tokenizer, stream the buckets into
the build, record the statistics."""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

from lendata.corpus import doc_batches, prefetch
from lendata.inputs import InputError
from lendata.lengths import load_tokenizer
from lendata.methods.base import Build, Method, ReportSection, Split
from lendata.methods.decompose.buckets import Settings, token_type
from lendata.methods.decompose.stream import DOCUMENTS_SCHEMA, decompose_corpus, summary
from schemas.decompose import BaselineSchema, DocumentsSchema, PiecesSchema

STDLIB = "@stdlib"  # the running Python's standard library sources: real text on every machine


def corpus_path(s: Settings, build: Build) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) if s.input == STDLIB else build.path(s.input)


class Decompose(Method):
    name = "decompose"
    settings = Settings
    inputs = ("input", "tokenizer")
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
        path = corpus_path(s, build)
        batches = doc_batches(path, tokenizer, eos_id, text_field=s.text_field, token_field=s.token_field,
                              glob=s.glob, batch_docs=s.batch_docs)
        with build.progress(None, "decompose: documents") as bar:
            stats = decompose_corpus(prefetch(batches), build, s, ttype, on_batch=bar.advance)
        if stats["documents"] == 0:
            raise InputError(f"{path}: no readable document (glob {s.glob!r})")
        build.meta.update({"decomposition": stats, "summary": summary(stats, s)})

    def report(self, manifest: dict[str, Any], folder: Path) -> ReportSection | None:
        from lendata.methods.decompose.report import section

        return section(manifest, folder) if "decomposition" in manifest else None


METHOD = Decompose()
