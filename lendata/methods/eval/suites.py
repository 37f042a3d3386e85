"""Evaluation runs: the engine under test answers an evaluation set, and every answer is scored (issue 17, item 4).

Suites and their references (METHODS §2, §3, §6):
- `longbench_write` (LongWriter, `evaluation/pred.py`, `eval_length.py`, `eval_quality.py`): any JSONL with a
  prompt and a required length; one call per prompt at temperature 0.5 with up to 32,768 new tokens (capped by
  the window); S_l against the required length, optionally S_q from a judge, and S̄ = (S_l + S_q)/2; results per
  LongBench-Write's length ranges [0, 500), [500, 2000), [2000, 4000), [4000, ∞) words.
- `longwrite_ruler` (LongWriter): the 8 prompts × 6 lengths; the same generation; produced length and S_l per
  requested length.
- `longen` (Self-Lengthen's LonGen, the 240 prompts lendata ships): the length-following score of each
  query's constraint (about / range / above / below), with the LonGen word counter; optionally S_q.
- `lveval`: a lendata LV-Eval build (every level split of `DATASET@VERSION` in the store), in LV-Eval's prompt
  shape per dataset, greedy, with its generation limits, the prompt cut in the middle to the window, scored with
  the dataset's metric (lendata.methods.shared.lveval_metric); scores per level.

Deliberate deviations: prompts that cannot fit the window with room for 16 new tokens are quarantined, not
truncated (except LV-Eval's, which the reference truncates); every call is seeded (`seed` + the row's index);
every prompt goes through the engine's chat template (LV-Eval's `prediction.py` sends most models the raw
prompt); `n` takes the first n records of each LV-Eval level (not of the whole set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from lendata.engines.base import Engine, OnResult, Request, estimate_prompt_tokens
from lendata.engines.identity import model_name
from lendata.lengths import count_words, length_score, longen_score
from lendata.methods.eval import lveval_shape
from lendata.methods.shared.constraints import extract
from lendata.methods.shared.inputs import InstructionInput
from lendata.methods.shared.quality_gate import check_judge
from lendata.methods.shared.sft import row_id

Suite = Literal["longbench_write", "longwrite_ruler", "longen", "lveval"]
LBW_RANGES = ((0, 500), (500, 2000), (2000, 4000), (4000, None))  # LongBench-Write's required-length ranges
MIN_NEW_TOKENS = 16


@dataclass
class Settings(InstructionInput):
    suite: Suite = "longbench_write"  # longbench_write | longwrite_ruler | longen | lveval
    instruction_field: str = "prompt"  # the field holding the prompt (longen: query)
    target_field: str | None = "length"  # the required length in words (longbench_write, longwrite_ruler)
    temperature: float = 0.5  # LongBench-Write's generation setting (lveval: greedy, always)
    top_p: float = 1.0  # nucleus sampling (1: off)
    max_tokens: int = 32768  # new tokens per answer (LongBench-Write: 32,768), capped by the window
    seed: int = 42  # row i is sampled with seed + i
    judge: str | None = None  # S_q for longbench_write and longen: same | llamacpp | openai | vllm (null: none)
    judge_options: dict[str, Any] = field(default_factory=dict)  # the judge engine's options
    judge_attempts: int = 3  # judge calls per answer before it counts as unjudged
    levels: list[str] = field(default_factory=list)  # lveval: the level splits to run ([]: every data split)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_judge(self.judge)
        if self.judge and self.suite in ("lveval", "longwrite_ruler"):
            raise ValueError(f"the {self.suite} suite is scored by its own metric; S_q (judge) is for "
                             "longbench_write and longen")
        if self.max_tokens < MIN_NEW_TOKENS:
            raise ValueError(f"max_tokens is {self.max_tokens}; it must be at least {MIN_NEW_TOKENS}")


RESULTS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("suite", pa.string()),
    ("level", pa.string()),  # the group a row is reported in: a length range, a requested length, a level
    ("prompt", pa.large_string()),  # the instruction (lveval: the question)
    ("response", pa.large_string()),
    ("response_words", pa.int32()),
    ("response_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("target_words", pa.int32()),
    ("constraint_type", pa.string()),
    ("dataset", pa.string()),
    ("metric", pa.string()),  # the score's metric: sl | longen | gated_f1 | f1 | rouge_l_blacklist
    ("score", pa.float64()),  # 0..100
    ("sq", pa.float64()),
    ("judge_error", pa.string()),
    ("prompt_truncated", pa.bool_()),
    ("record_id", pa.string()),  # the input row's id (an LV-Eval record's), or its file:line
    ("engine", pa.string()),
    ("model", pa.string()),
    ("source", pa.string()),
])


def lbw_range(words: int) -> str:
    for lo, hi in LBW_RANGES:
        if hi is None or words < hi:
            return f"[{lo}, {hi})" if hi else f"[{lo}, ∞)"
    return ""


def text_items(rows: Sequence[dict[str, Any]], s: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(items, quarantine) for the long-output suites: each row's prompt and what it is scored against."""
    items, bad = [], []
    for i, row in enumerate(rows):
        item = {"index": i, "prompt": row["instruction"], "chat": row["instruction"], "source": row.get("source", ""),
                "record_id": str(row["id"]) if row.get("id") is not None else None,
                "language": row.get("language", ""), "target": row.get("target"), "ctype": None, "upper": None}
        if s.suite == "longen":
            c = extract(str(row.get("constraint") or row["instruction"]))
            if c is None:
                bad.append({"id": row_id(row["instruction"], i, 0), "stage": "input", "source": item["source"],
                            "reason": "no length constraint LonGen can score", "record": row["instruction"]})
                continue
            item.update(target=c.low, ctype=c.ctype, upper=c.high, level=f"{row.get('range', '')} {c.ctype}".strip())
        elif not item["target"]:
            bad.append({"id": row_id(row["instruction"], i, 0), "stage": "input", "source": item["source"],
                        "reason": "no required length (set target_field)", "record": row["instruction"]})
            continue
        else:
            item["level"] = lbw_range(item["target"]) if s.suite == "longbench_write" else str(item["target"])
        items.append(item)
    return items, bad


def lveval_items(records: Sequence[dict[str, Any]], first_index: int = 0) -> list[dict[str, Any]]:
    """LV-Eval records (input, context, answers, dataset, language, level) as items in LV-Eval's prompt shape."""
    from lendata.methods.shared.lveval_metric import dataset_name

    out = []
    for i, rec in enumerate(records, start=first_index):
        dataset = dataset_name(str(rec.get("dataset") or ""))
        lang = "zh" if str(rec.get("language", "")).startswith("zh") else "en"
        out.append({"index": i, "prompt": rec["input"], "source": rec.get("source") or "", "record_id": rec.get("id"),
                    "chat": lveval_shape.prompt(dataset, lang, rec.get("context") or "", rec["input"]),
                    "language": lang, "dataset": dataset, "level": str(rec.get("level") or ""),
                    "answers": list(rec.get("answers") or []), "keywords": rec.get("answer_keywords"),
                    "max_new_tokens": lveval_shape.max_new_tokens(dataset)})
    return out


def answer(items: Sequence[dict[str, Any]], engine: Engine, s: Settings, on_result: OnResult | None = None
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(result rows, quarantine): every item answered in one call and scored."""
    lveval = s.suite == "lveval"
    chats, truncated, bad = [], [], []
    usable = []
    for item in items:
        text, cut = item["chat"], False
        if lveval:  # LV-Eval cuts the middle of a prompt the window cannot hold
            budget = engine.context_window - item["max_new_tokens"] - 64  # 64: the chat template's tokens
            try:
                text, cut = lveval_shape.truncate_middle(text, engine, budget)
            except ValueError as e:
                bad.append({"id": row_id(item["prompt"], item["index"], 0), "stage": "generate",
                            "source": item["source"], "reason": str(e), "record": item["prompt"]})
                continue
        usable.append(item)
        chats.append(({"role": "user", "content": text},))
        truncated.append(cut)
    items = usable
    pending, requests = [], []
    for k, (item, chat, need) in enumerate(zip(items, chats, estimate_prompt_tokens(engine, chats), strict=True)):
        room = engine.context_window - need
        limit = min(item["max_new_tokens"], max(1, room)) if lveval else min(s.max_tokens, room)
        if limit < MIN_NEW_TOKENS and not lveval:
            bad.append({"id": row_id(item["prompt"], item["index"], 0), "stage": "generate", "source": item["source"],
                        "reason": f"the prompt (about {need:,} tokens) leaves {room} of the {engine.context_window:,}"
                                  "-token window to answer", "record": item["prompt"]})
            continue
        pending.append(k)
        requests.append(Request(messages=chat, max_tokens=limit, temperature=0.0 if lveval else s.temperature,
                                top_p=1.0 if lveval else s.top_p, seed=s.seed + item["index"]))
    results = engine.generate(requests, on_result=on_result) if requests else []
    rows = []
    for k, res in zip(pending, results, strict=True):
        item = items[k]
        rid = row_id(item["prompt"] + item.get("level", ""), item["index"], 0)
        if not res.ok:
            bad.append({"id": rid, "stage": "generate", "reason": res.error, "source": item["source"],
                        "record": item["prompt"]})
            continue
        text = res.text.strip()
        rows.append({**_score(item, text, s), "id": rid, "suite": s.suite, "level": item.get("level", ""),
                     "prompt": item["prompt"], "response": text, "response_tokens": res.completion_tokens,
                     "finish_reason": res.finish_reason, "prompt_truncated": truncated[k], "sq": None,
                     "record_id": item.get("record_id") or item["source"],
                     "judge_error": None, "engine": engine.name, "model": model_name(engine.model_id),
                     "source": item["source"]})
    return rows, bad


def _score(item: dict[str, Any], text: str, s: Settings) -> dict[str, Any]:
    if s.suite == "lveval":
        from lendata.methods.shared.lveval_metric import score_record

        value, metric = score_record(text, item["answers"], item["keywords"] or None, item["language"],
                                     item["dataset"])
        return {"score": 100 * value, "metric": metric, "dataset": item["dataset"], "target_words": None,
                "constraint_type": None, "response_words": count_words(text, "longwriter")}
    if s.suite == "longen":
        words = count_words(text, "longen")
        return {"score": 100 * longen_score(item["ctype"], item["target"], words, item["upper"]), "metric": "longen",
                "target_words": item["target"], "constraint_type": item["ctype"], "dataset": None,
                "response_words": words}
    words = count_words(text, "longwriter")
    return {"score": length_score(item["target"], words), "metric": "sl", "target_words": item["target"],
            "constraint_type": None, "dataset": None, "response_words": words}


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per level and overall: rows, mean score, mean words, mean S_q (judged rows) and S̄ where both exist."""
    def block(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        judged = [r for r in rs if r["sq"] is not None]
        out = {"n": len(rs), "score": sum(r["score"] for r in rs) / len(rs),
               "mean_words": sum(r["response_words"] for r in rs) / len(rs),
               "sq": sum(r["sq"] for r in judged) / len(judged) if judged else None, "judged": len(judged)}
        if judged and rs[0]["metric"] == "sl":
            # S̄ over the same rows: S_l of the judged rows only (a judge fails most on the longest answers)
            sl_judged = sum(r["score"] for r in judged) / len(judged)
            out.update(sl_judged=sl_judged, s_bar=(sl_judged + out["sq"]) / 2)
        return out

    levels: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        levels.setdefault(r["level"], []).append(r)
    return {"levels": {lv: block(rs) for lv, rs in levels.items()}, "all": block(rows) if rows else None,
            "metric": rows[0]["metric"] if rows else None}


def as_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA)

