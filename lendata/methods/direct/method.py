"""The `direct` method's contract: one SFT split, sharded by rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lendata.methods.base import Build, Method, Progress, Split
from lendata.methods.direct.generate import Settings, direct
from lendata.methods.shared.inputs import load_instructions
from lendata.methods.shared.sft import SFT_SCHEMA
from schemas.sft import SFTSchema


def answer(s: Settings, rows: Sequence[dict[str, Any]], offset: int, engines: Any, progress: Progress
           ) -> tuple[pa.Table, list[dict[str, Any]]]:
    """One shard: its rows answered in one budgeted call each."""
    with progress(len(rows), "") as bar:
        return direct(rows, engines.get(), s, first_index=offset, on_result=bar.update)


class Direct(Method):
    name = "direct"
    settings = Settings
    sharded = True
    card_tags = ("long-output", "sft")

    def splits(self, s: Settings) -> dict[str, Split]:
        return {"train": Split(SFT_SCHEMA, SFTSchema)}

    def run(self, s: Settings, build: Build) -> None:
        rows = load_instructions(s, build)
        done = build.map(answer, rows, "direct")
        build.quarantine([q for _, failed in done for q in failed])
        build.add("train", pa.concat_tables([t for t, _ in done]) if done else SFT_SCHEMA.empty_table())


METHOD = Direct()
