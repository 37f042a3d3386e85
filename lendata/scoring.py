"""Scoring any file of responses: S_l, LonGen length-following, Ruler PM/FM (length), LV-Eval (answers)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lendata import lengths as L
from lendata.inputs import InputError, records
from lendata.methods.constraints import extract

METRICS = ("sl", "longen", "ruler", "lveval")
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
    counter: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-row scores, summary). Rows without a response or a target are listed as skipped with why."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    if metric == "lveval":
        return _score_lveval(path, response_field)
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
    by_target: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_target[r["target"]].append(r)
    summary: dict[str, Any] = {
        "metric": metric, "counter": counter, "rows": len(rows), "skipped": skipped,
        "mean": statistics.fmean(r["score"] for r in rows) if rows else None,
        "by_target": {
            t: {"rows": len(rs), "mean_words": statistics.fmean(r["words"] for r in rs),
                "mean_score": statistics.fmean(r["score"] for r in rs)}
            for t, rs in sorted(by_target.items())
        },
    }
    if metric == "ruler" and rows:
        summary["pm"] = statistics.fmean(r["pm"] for r in rows)
        summary["fm"] = statistics.fmean(r["fm"] for r in rows)
    return rows, summary


def _score_lveval(path: Path, response_field: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """LV-Eval records with a prediction (`pred`, or --response-field), `answers`, `answer_keywords` (or the
    reference's `gold_ans`) and `language`; grouped by `length` (the level) when present."""
    from lendata.methods.lveval_metric import score

    rows, skipped = [], []
    for where, rec in _readable(path, skipped):
        pred = rec.get(response_field) if response_field else rec.get("pred", _response(rec, None))
        answers = rec.get("answers")
        if not isinstance(pred, str):
            skipped.append(f"{where}: no prediction (`pred`, or set --response-field)")
            continue
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers:
            skipped.append(f"{where}: no `answers` list")
            continue
        lang = "zh" if str(rec.get("language", "")).startswith("zh") else "en"
        keywords = rec.get("answer_keywords", rec.get("gold_ans"))
        level = rec.get("level", rec.get("length")) or 0
        rows.append({"source": where, "target": level, "words": L.count_words(pred, "longwriter"), "language": lang,
                     "score": 100 * score(pred, [str(a) for a in answers], keywords or None, lang)})
    by_level: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_level[r["target"]].append(r)
    summary = {
        "metric": "lveval", "counter": "longwriter", "rows": len(rows), "skipped": skipped,
        "mean": statistics.fmean(r["score"] for r in rows) if rows else None,
        "by_target": {t: {"rows": len(rs), "mean_words": statistics.fmean(r["words"] for r in rs),
                          "mean_score": statistics.fmean(r["score"] for r in rs)}
                      for t, rs in sorted(by_level.items(), key=lambda kv: str(kv[0]))},
    }
    return rows, summary
