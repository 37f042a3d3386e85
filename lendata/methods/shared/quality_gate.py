"""A quality gate for SFT builds: an optional judge scores every kept row with LongBench-Write's S_q, the scores
become columns, and rows below `min_sq` go to quarantine with their scores (issue 17, item 5).

A row the judge could not score is kept with a null `sq` and its `judge_error` when no `min_sq` is set; with a
`min_sq` it is quarantined (the gate cannot vouch for it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lendata.engines import ENGINES
from lendata.judging import judges

_COLUMNS = {d: d.lower().replace(" ", "_") for d in judges.DIMENSIONS}
JUDGE_FIELDS = [
    ("sq", pa.float64()),
    ("judge_scores", pa.struct([(c, pa.int8()) for c in _COLUMNS.values()])),
    ("judge_model", pa.string()),
    ("judge_error", pa.string()),
]


@dataclass
class JudgeGate:
    judge: str | None = None  # null: no judge; same: the recipe's engine; or llamacpp | openai | vllm
    judge_options: dict[str, Any] = field(default_factory=dict)  # the judge engine's options (base_url, model, ...)
    min_sq: float | None = None  # rows the judge scores below this S_q (0-100) are quarantined with their scores
    judge_attempts: int = 3  # judge calls per row before it counts as unjudged

    def __post_init__(self) -> None:
        check_judge(self.judge)
        if self.min_sq is not None and not 0 <= self.min_sq <= 100:
            raise ValueError(f"min_sq is {self.min_sq}; S_q is on 0..100")
        if self.min_sq is not None and not self.judge:
            raise ValueError("min_sq needs a judge: set judge to `same` (the recipe's engine) or an engine name")
        if self.judge_attempts < 1:
            raise ValueError(f"judge_attempts is {self.judge_attempts}; it must be at least 1")
        getattr(super(), "__post_init__", lambda: None)()


def check_judge(judge: str | None) -> None:
    """A judge setting names `same` (the recipe's engine), an engine, or nothing (None)."""
    if judge is not None and judge not in ("same", *ENGINES):
        raise ValueError(f"judge is {judge!r}; choose same (the recipe's engine) or one of {', '.join(ENGINES)} "
                         "(null: no judge)")


def with_judge_columns(schema: pa.Schema, gate: JudgeGate) -> pa.Schema:
    """The split's schema, with the judge's columns when a judge is set."""
    if not gate.judge:
        return schema
    for name, typ in JUDGE_FIELDS:
        schema = schema.append(pa.field(name, typ))
    return schema


def judge_engine(gate: Any, engines: Any) -> Any:
    """The judge engine of any settings with `judge` and `judge_options` (a gate, preferences, eval)."""
    return engines.get() if gate.judge == "same" else engines.get(gate.judge, gate.judge_options)


def apply(table: pa.Table, gate: JudgeGate, engines: Any, on_done: Callable[..., None] | None = None,
          stage: str = "quality") -> tuple[pa.Table, list[dict[str, Any]]]:
    """(kept rows with the judge's columns, quarantine records of the rows below `min_sq`). The table needs
    `id`, `instruction` and `messages` (the last turn the response). Without a judge, the table as it is."""
    if not gate.judge or table.num_rows == 0:
        return (with_columns(table, []) if gate.judge else table), []
    engine = judge_engine(gate, engines)
    rows = table.to_pylist()
    pairs = [(r["instruction"], r["messages"][-1]["content"]) for r in rows]
    judged = judges.judge_quality(pairs, engine, judges.JudgeSettings(attempts=gate.judge_attempts), on_done)
    scores, keep, quarantine = [], [], []
    for i, (r, j) in enumerate(zip(rows, judged, strict=True)):
        entry = {"sq": j.sq, "judge_scores": ({_COLUMNS[d]: v for d, v in j.scores.items()} if j.scores else None),
                 "judge_model": engine.model_id, "judge_error": j.error}
        scores.append(entry)
        if gate.min_sq is None or (j.sq is not None and j.sq >= gate.min_sq):
            keep.append(i)
            continue
        why = (f"S_q {j.sq:.1f} is below min_sq {gate.min_sq:g}" if j.sq is not None
               else f"the judge could not score it ({j.error}), and min_sq {gate.min_sq:g} is set")
        quarantine.append({"id": r["id"], "stage": stage, "reason": why, "source": r.get("source", ""),
                           "record": json.dumps({**r, **entry}, ensure_ascii=False, default=str)})
    kept = table.take(pa.array(keep, pa.int64()))
    return with_columns(kept, [scores[i] for i in keep]), quarantine


def judge_shard(table: pa.Table, gate: JudgeGate, engines: Any, progress: Any
                ) -> tuple[pa.Table, list[dict[str, Any]]]:
    """`apply` inside a shard, with a "judging" progress bar when a judge is set."""
    if not gate.judge:
        return table, []
    with progress(table.num_rows, "judging") as bar:
        return apply(table, gate, engines, lambda _i, _j: bar.advance(1, 0))


def with_columns(table: pa.Table, entries: list[dict[str, Any]]) -> pa.Table:
    for name, typ in JUDGE_FIELDS:
        table = table.append_column(pa.field(name, typ), pa.array([e[name] for e in entries], typ))
    return table
