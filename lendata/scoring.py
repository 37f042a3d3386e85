"""Scoring any file of responses: S_l, LonGen length-following, Ruler PM/FM (length), and the metrics methods
declare (`Method.metrics`: LV-Eval's answer score)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lendata import lengths as L
from lendata.inputs import InputError, records
from lendata.methods.shared.constraints import extract

LENGTH_METRICS = ("sl", "longen", "ruler")


def metrics() -> dict[str, Any]:
    """Every metric: the length metrics here (None), then each method's own (its scorer)."""
    from lendata.methods import registry

    out: dict[str, Any] = dict.fromkeys(LENGTH_METRICS)
    for method in registry().values():
        out.update(method.metrics)
    return out
_TARGET_FIELDS = ("target_words", "target", "length", "words")
_TEXT_FIELDS = ("instruction", "prompt", "query", "constraint")


def _response(rec: dict[str, Any], field: str | None) -> str | None:
    if field:
        return rec.get(field)
    if isinstance(rec.get("messages"), list):
        turns = [m for m in rec["messages"] if isinstance(m, dict) and m.get("role") == "assistant"]
        return turns[-1].get("content") if turns else None
    return rec.get("response") or rec.get("output")


def _target(rec: dict[str, Any], field: str | None):
    """(constraint type, target, upper) from a target field, or the constraint stated in the text."""
    texts = [rec[f] for f in ("constraint", *_TEXT_FIELDS) if isinstance(rec.get(f), str)]
    if isinstance(rec.get("messages"), list):  # SFT rows: the length is stated in the user's turn
        texts += [m.get("content") for m in rec["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    stated = next((c for t in texts if isinstance(t, str) and (c := extract(t))), None)
    ctype = rec.get("type") if rec.get("type") in ("about", "range", "above", "below") else None
    value = rec.get(field) if field else next((rec[f] for f in _TARGET_FIELDS if rec.get(f) is not None), None)
    if value is not None:
        return ctype or (stated.ctype if stated else "about"), int(value), stated.high if stated else None
    if stated:
        return ctype or stated.ctype, stated.low, stated.high
    return None, None, None


def _readable(path: Path, skipped: list[str]):
    """(file:line, record) for each readable record; unreadable ones are added to `skipped` with why."""
    for lineno, rec, problem, _ in records(path):
        if rec is None:
            skipped.append(f"{path}:{lineno}: {problem}")
        else:
            yield f"{path}:{lineno}", rec


def score_file(
    path: str | Path, metric: str, target_field: str | None = None, response_field: str | None = None,
    counter: str | None = None, best_of_answers: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-row scores, summary). Rows without a response or a target are listed as skipped with why."""
    known = metrics()
    if metric not in known:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(known)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    if known[metric] is not None:
        skipped: list[str] = []
        rows, extra = known[metric](_readable(path, skipped), response_field, lambda rec: _response(rec, None),
                                    skipped, best_of_answers)
        return rows, {**_summary(metric, "longwriter", rows, skipped), **extra}
    counter = counter or {"sl": "longwriter", "longen": "longen", "ruler": "ruler"}[metric]
    rows, skipped = [], []
    for where, rec in _readable(path, skipped):
        text = _response(rec, response_field)
        ctype, target, upper = _target(rec, target_field)
        if not isinstance(text, str):
            skipped.append(f"{where}: no response field")
            continue
        if not target or target <= 0:
            skipped.append(f"{where}: no target length (set --target-field)")
            continue
        words = L.count_words(text, counter)  # type: ignore[arg-type]
        row: dict[str, Any] = {"source": where, "target": target, "words": words}
        if metric == "sl":
            row["score"] = L.length_score(target, words)
        elif metric == "longen":
            if ctype == "range" and not upper:
                ctype = "about"
            row.update(type=ctype, score=100 * L.longen_score(ctype, target, words, upper))
        else:
            try:
                L.ruler_level(target)
            except ValueError as e:
                skipped.append(f"{where}: {e}")
                continue
            row.update(pm=100.0 * L.ruler_hit(target, words, "pm"), fm=100.0 * L.ruler_hit(target, words, "fm"))
            row["score"] = row["pm"]
        rows.append(row)
    summary = _summary(metric, counter, rows, skipped)
    if metric == "ruler" and rows:
        summary["pm"] = statistics.fmean(r["pm"] for r in rows)
        summary["fm"] = statistics.fmean(r["fm"] for r in rows)
        # Ruler's own table: PM and FM per level (0: 10-80 words, 1: 150-500, 2: 700 and >800) and overall
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            groups[L.ruler_group(r["target"])].append(r)
        summary["levels"] = {
            name: {"n": len(rs), "pm": statistics.fmean(r["pm"] for r in rs),
                   "fm": statistics.fmean(r["fm"] for r in rs)}
            for name, rs in [*sorted(groups.items()), ("All", rows)]
        }
    return rows, summary


def _summary(metric: str, counter: str, rows: list[dict[str, Any]], skipped: list[str]) -> dict[str, Any]:
    """The mean score, and rows, mean words and mean score per target (a length, or an LV-Eval level)."""
    by_target: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_target[r["target"]].append(r)
    return {
        "metric": metric, "counter": counter, "rows": len(rows), "skipped": skipped,
        "mean": statistics.fmean(r["score"] for r in rows) if rows else None,
        "by_target": {
            t: {"rows": len(rs), "mean_words": statistics.fmean(r["words"] for r in rs),
                "mean_score": statistics.fmean(r["score"] for r in rs)}
            for t, rs in sorted(by_target.items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))
        },
    }
