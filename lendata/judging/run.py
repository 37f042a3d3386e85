"""Judging files and dataset versions: S_q (with S_l and S̄ when targets are present) and pairwise comparisons
with raw and length-controlled win rates. The CLI's `lendata score --metric sq` and `lendata compare`."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lendata import lengths as L
from lendata.engines.base import Engine
from lendata.inputs import InputError
from lendata.judging import judges
from lendata.judging import winrate as wr

_INSTRUCTION_FIELDS = ("instruction", "prompt", "query", "input")


@dataclass(frozen=True)
class Source:
    """A file of responses, or a committed dataset version's split."""

    name: str  # how rows are named in messages and as a generator (the file's stem, or DATASET@VERSION)
    rows: list[tuple[str, dict[str, Any]]]  # (where, record)
    skipped: list[str]
    path: Path | None = None  # the file, when the source is one


def open_source(ref: str, store: Path | None = None, split: str = "train") -> Source:
    """`ref` is a JSONL/Parquet file, or `DATASET` / `DATASET@VERSION` in the store (a file wins when both
    exist). Unreadable records are listed in `skipped` with their file and line."""
    from lendata.scoring import _readable

    path = Path(ref)
    if path.is_file():
        skipped: list[str] = []
        name = path.stem if path.suffix in (".jsonl", ".json", ".parquet") else path.name
        return Source(name, list(_readable(path, skipped)), skipped, path.resolve())
    if store is None or os.sep in ref or path.suffix in (".jsonl", ".json", ".parquet"):
        raise InputError(f"file not found: {ref}")
    from lendata import store as st

    try:
        version = st.open_version(store, ref)
        table = version.read(split)
    except (st.StoreError, ValueError) as e:
        raise InputError(f"{ref} is neither a file nor a dataset version: {e}") from None
    name = f"{version.dataset}@{version.version}"
    return Source(name, [(f"{name}:{split}:{i}", rec) for i, rec in enumerate(table.to_pylist(), 1)], [])


def instruction_of(rec: dict[str, Any]) -> str | None:
    for f in _INSTRUCTION_FIELDS:
        if isinstance(rec.get(f), str) and rec[f].strip():
            return rec[f]
    if isinstance(rec.get("messages"), list):
        turns = [m.get("content") for m in rec["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        if turns and isinstance(turns[-1], str):
            return turns[-1]
    return None


def _pairs(source: Source, response_field: str | None) -> Iterator[tuple[str, dict[str, Any], str, str]]:
    from lendata.scoring import _response

    for where, rec in source.rows:
        instruction, response = instruction_of(rec), _response(rec, response_field)
        if not isinstance(instruction, str):
            source.skipped.append(f"{where}: no instruction (instruction, prompt, query or a user message)")
        elif not isinstance(response, str) or not response.strip():
            source.skipped.append(f"{where}: no response")
        else:
            yield where, rec, instruction, response


def score_quality(source: Source, engine: Engine, settings: judges.JudgeSettings | None = None,
                  response_field: str | None = None, target_field: str | None = None,
                  on_done=None, counter: str = "longwriter") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-row scores, summary): S_q per row and overall, the judge's failures listed (never scored in), and
    with target lengths S_l and S̄ = (S_l + S_q) / 2 as LongBench-Write reports them."""
    from lendata.scoring import _target

    items = list(_pairs(source, response_field))
    targets = []
    for where, rec, _, _ in items:  # read before judging: a bad target is listed, never a crash after the calls
        try:
            targets.append(_target(rec, target_field)[1])
        except (TypeError, ValueError) as e:
            source.skipped.append(f"{where}: the target length is not a whole number ({e}); S_l is not scored")
            targets.append(None)
    judgments = judges.judge_quality([(i, r) for _, _, i, r in items], engine, settings, on_done)
    rows, failures, sls = [], [], []
    for (where, _rec, _instr, response), target, j in zip(items, targets, judgments, strict=True):
        row: dict[str, Any] = {"source": where, "sq": j.sq, **{d: (j.scores or {}).get(d) for d in judges.DIMENSIONS},
                               "judge_error": j.error, "attempts": j.attempts}
        if isinstance(target, int) and target > 0:
            words = L.count_words(response, counter)  # type: ignore[arg-type]
            row.update(target=target, words=words, sl=L.length_score(target, words))
            sls.append(row["sl"])
        if j.error:
            failures.append(f"{where}: {j.error}")
        rows.append(row)
    summary: dict[str, Any] = {"metric": "sq", "source": source.name, "rows": len(rows), "skipped": source.skipped,
                               **judges.sq_summary(judgments), "failures": failures,
                               "judge": {"engine": engine.name, "model": engine.model_id}}
    if sls:
        summary["sl"] = sum(sls) / len(sls)
        summary["s_bar"] = (summary["sl"] + summary["sq"]) / 2 if summary["sq"] is not None else None
    return rows, summary


def match_pairs(a: Source, b: Source, response_field: str | None = None) -> tuple[list[wr.Annotation], list[str]]:
    """Rows of A and B with the same instruction, paired in order of appearance (the k-th A row with the k-th B row
    for an instruction that repeats); rows without a partner are listed. Preferences are not yet judged (0)."""
    by_instruction: dict[str, list[str]] = defaultdict(list)
    for _, _, instr, resp in _pairs(a, response_field):
        by_instruction[instr].append(resp)
    pairs, unmatched = [], []
    for where, _, instr, resp in _pairs(b, response_field):
        if by_instruction.get(instr):
            pairs.append(wr.Annotation(instr, by_instruction[instr].pop(0), resp, a.name, b.name, 0.0))
        else:
            unmatched.append(f"{where}: no row of {a.name} has this instruction")
    left = sum(len(v) for v in by_instruction.values())
    if left:
        unmatched.append(f"{left} row(s) of {a.name} have no row of {b.name} with the same instruction")
    return pairs, [*a.skipped, *b.skipped, *unmatched]


def compare(a: Source, b: Source, engine: Engine, settings: judges.JudgeSettings | None = None,
            response_field: str | None = None, on_done=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(annotations in AlpacaEval's format, summary): every shared instruction judged in both orders, then the raw
    and length-controlled win rate of B over A."""
    if a.name == b.name:
        b = Source(f"{b.name} (B)", b.rows, b.skipped)
    pending, skipped = match_pairs(a, b, response_field)
    if not pending:
        raise InputError(f"{a.name} and {b.name} share no instruction with a response on both sides")
    judged = judges.judge_pairs([(p.instruction, p.output_1, p.output_2) for p in pending], engine, settings,
                                on_done)
    annotations, rows, failures = [], [], []
    for p, j in zip(pending, judged, strict=True):
        rows.append({"instruction": p.instruction, "output_1": p.output_1, "output_2": p.output_2,
                     "generator_1": p.generator_1, "generator_2": p.generator_2, "preference": j.preference,
                     "annotator": f"lendata pairwise ({engine.model_id})", "judge_a_first": j.first_order,
                     "judge_b_first": j.second_order, "judge_error": j.error})
        if j.preference is None:
            failures.append(f"{p.instruction[:60]!r}: {j.error}")
        else:
            annotations.append(wr.Annotation(p.instruction, p.output_1, p.output_2, p.generator_1, p.generator_2,
                                             j.preference))
    summary = summarize(annotations, skipped) if annotations else {"n": 0, "systems": [], "skipped": skipped}
    summary.update(failed=len(failures), failures=failures, judge={"engine": engine.name, "model": engine.model_id})
    return rows, summary


def summarize(annotations: list[wr.Annotation], skipped: list[str]) -> dict[str, Any]:
    """The win rates of each system over its baseline; the first (or only) system's numbers at the top level."""
    if not annotations:
        raise InputError("no judged pair to compute a win rate from" + (f" ({len(skipped)} skipped)" if skipped
                                                                         else ""))
    results = [r.as_json() for r in wr.win_rates(annotations)]
    return {**results[0], "systems": results, "skipped": skipped}
