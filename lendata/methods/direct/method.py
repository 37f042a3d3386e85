"""The `direct` method's contract: one SFT split, sharded by rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lendata.methods.base import Build, Method, Progress, Split
from lendata.methods.direct.generate import Settings, direct
from lendata.methods.shared import quality_gate
from lendata.methods.shared.inputs import load_instructions
from lendata.methods.shared.sft import SFT_SCHEMA
from schemas.sft import SFTSchema


def answer(s: Settings, rows: Sequence[dict[str, Any]], offset: int, engines: Any, progress: Progress
           ) -> tuple[pa.Table, list[dict[str, Any]]]:
    """One shard: its rows answered in one budgeted call each (continued when the budget cut them and the
    settings say so), then judged when a judge is set."""
    with progress(len(rows), "") as bar:
        table, failed = direct(rows, engines.get(), s, first_index=offset, on_result=bar.update)
    table, below = quality_gate.judge_shard(table, s, engines, progress)
    return table, failed + below


class Direct(Method):
    name = "direct"
    settings = Settings
    sharded = True
    card_tags = ("long-output", "sft")

    def splits(self, s: Settings) -> dict[str, Split]:
        return {"train": Split(quality_gate.with_judge_columns(SFT_SCHEMA, s), SFTSchema)}

    def run(self, s: Settings, build: Build) -> None:
        rows = load_instructions(s, build)
        done = build.map(answer, rows, "direct")
        build.quarantine([q for _, failed in done for q in failed])
        schema = quality_gate.with_judge_columns(SFT_SCHEMA, s)
        build.add("train", pa.concat_tables([t for t, _ in done]) if done else schema.empty_table())


METHOD = Direct()
