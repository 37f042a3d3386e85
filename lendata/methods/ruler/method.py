"""The `ruler` method's contract: an SFT table in (a chat JSONL/Parquet file, or a built DATASET@VERSION),
MLT-tagged `train` and `tlg` out; the MLT tags are recorded as the stop tokens a tagged model needs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from lendata.inputs import records
from lendata.lengths import MLT_WINDOWS
from lendata.methods.base import Build, Method, Split
from lendata.methods.ruler.tags import LEVELS, TLG_SCHEMA, TRAIN_SCHEMA, tag
from schemas.ruler import TaggedSchema, TLGSchema


@dataclass
class Settings:
    input: str = ""  # chat rows: a JSONL/Parquet file, or a built version (DATASET@VERSION: its train split)
    messages_field: str = "messages"  # the list of {role, content} turns
    tlg_levels: tuple[str, ...] = LEVELS  # target levels TLG instructions are drawn from
    tlg_per_instruction: int = 1  # TLG instructions per distinct input instruction
    seed: int = 42  # TLG levels are drawn per instruction from this

    def __post_init__(self) -> None:
        unknown = [x for x in self.tlg_levels if x not in MLT_WINDOWS]
        if unknown or not self.tlg_levels:
            raise ValueError(f"tlg_levels must be among {', '.join(MLT_WINDOWS)}, got {list(self.tlg_levels)}")
        if self.tlg_per_instruction < 0:
            raise ValueError("tlg_per_instruction must be 0 or more")


def _rows(s: Settings, build: Build, bad: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    path = build.path(s.input)
    remote = not isinstance(path, Path)  # a URL (RemotePath): a file, never a version of the store
    sources = [(path.name, [path])] if remote or path.exists() else [build.version_files(s.input, "train")]
    for label, files in sources:
        for f in files:
            for lineno, rec, problem, raw in records(f):
                where = f"{label}:{lineno}" if len(files) == 1 else f"{label}/{f.name}:{lineno}"
                if rec is None:
                    bad.append({"id": None, "stage": "input", "source": where, "reason": problem, "record": raw})
                else:
                    yield where, rec


class Ruler(Method):
    name = "ruler"
    settings = Settings
    card_tags = ("long-output", "sft", "ruler", "meta-length-tokens")

    def splits(self, s: Settings) -> dict[str, Split]:
        return {"train": Split(TRAIN_SCHEMA, TaggedSchema), "tlg": Split(TLG_SCHEMA, TLGSchema)}

    def run(self, s: Settings, build: Build) -> None:
        unreadable: list[dict[str, Any]] = []
        tagged = tag(_rows(s, build, unreadable), s.messages_field, s.tlg_levels, s.tlg_per_instruction, s.seed)
        build.quarantine(unreadable + tagged.bad)
        build.add("train", pa.Table.from_pylist(tagged.train, schema=TRAIN_SCHEMA))
        build.add("tlg", pa.Table.from_pylist(tagged.tlg, schema=TLG_SCHEMA))
        build.meta["ruler"] = {"stop_tokens": [f"[MLT:{k}]" for k in MLT_WINDOWS], "dropped_outside_windows":
                               tagged.dropped, "tags": {t: sum(r["mlt"] == t for r in tagged.train)
                                                        for t in sorted({r["mlt"] for r in tagged.train})}}


METHOD = Ruler()
