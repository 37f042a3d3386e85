"""`direct`: answer each length-constrained instruction in one call, with a token budget per row.

The baseline that AgentWrite improves on, and the simplest recipe that exercises the whole toolkit: per-row
`min_tokens`/`max_tokens` from the word target and the tokenizer's measured tokens per word, targets capped
to what the context window holds, and every row scored with S_l against its target.

Deviation from LongBench-Write's baseline, off by default: with `continue_attempts`, a row cut at
`max_tokens` is continued from where it stopped (shared/continuation.py: the cut text as the assistant's
turn, ending at the first sentence end on engines that enforce `end_at_sentence`, else at the next paragraph
break), so it ends on the model's own sentence instead of mid-word. The `direct` recipe turns it on; the
LongWrite-Ruler recipe keeps it off (it measures how long the model writes in one call). `continued_tokens`
records what the continuations added; `stopped_by` stays `max_tokens` for such a row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lendata.engines.base import (
    Engine,
    OnResult,
    Request,
    Result,
    continues_prefill,
    enforces,
    estimate_prompt_tokens,
)
from lendata.engines.chains import Chain, run_chains
from lendata.engines.identity import model_name
from lendata.lengths import WordCounter, count_words, length_score
from lendata.methods.shared.budget import budget_for, language_of, measure_tokens_per_word
from lendata.methods.shared.continuation import check_attempts, continue_cut
from lendata.methods.shared.inputs import InstructionInput
from lendata.methods.shared.quality_gate import JudgeGate
from lendata.methods.shared.sft import SFT_SCHEMA, row_id

log = logging.getLogger("lendata.direct")


@dataclass
class Settings(InstructionInput, JudgeGate):
    temperature: float = 0.5  # LongBench-Write's generation setting
    top_p: float = 0.95  # nucleus sampling
    seed: int = 42  # row i is sampled with seed + i
    word_counter: WordCounter = "longwriter"  # longwriter | longen | ruler
    min_ratio: float = 0.85  # min_tokens = target words x tokens/word x min_ratio
    max_ratio: float = 1.3  # max_tokens = target words x tokens/word x max_ratio
    continue_attempts: int = 0  # a row cut at max_tokens is continued from where it stopped (0: one call)

    def __post_init__(self) -> None:
        check_attempts(self.continue_attempts)
        super().__post_init__()


def direct(
    rows: Sequence[dict[str, Any]],
    engine: Engine,
    s: Settings | None = None,
    *,
    first_index: int = 0,
    on_result: OnResult | None = None,
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """(SFT table, quarantine records for rows the engine failed on). Each row needs `instruction`, `target`.

    Row i is sampled with seed `seed + first_index + i`: a shard passes its first row's place in the whole
    input, so its rows get the seeds they would have had in one unsharded run."""
    s = s or Settings()
    temperature, top_p, seed, counter = s.temperature, s.top_p, s.seed, s.word_counter
    min_ratio, max_ratio = s.min_ratio, s.max_ratio
    tpw = measure_tokens_per_word(engine, counter)
    chats = [({"role": "user", "content": r["instruction"]},) for r in rows]
    prompt_tokens = estimate_prompt_tokens(engine, chats)
    budgets, requests = [], []
    for i, (row, chat, ptoks) in enumerate(zip(rows, chats, prompt_tokens, strict=True)):
        b = budget_for(
            int(row["target"]),
            ptoks,
            engine.context_window,
            tpw[language_of(row["instruction"])],
            min_ratio,
            max_ratio,
        )
        budgets.append(b)
        requests.append(
            Request(
                messages=chat,
                max_tokens=b.max_tokens,
                min_tokens=b.min_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed + first_index + i,
            )
        )
    attempts = s.continue_attempts
    if attempts and not continues_prefill(engine):
        log.warning("direct: the %s engine does not continue a prefilled assistant turn (a server that answers it "
                    "with a new turn would glue a fresh answer onto the cut text): rows cut at max_tokens are "
                    "kept as cut", engine.name)
    # a continuation ends at the first sentence end where the engine can enforce it, else at a paragraph break
    ending = {"end_at_sentence": enforces(engine, "end_at_sentence")}
    # a row whose budget the window set has no room to continue in
    answered = run_chains(engine, [_answer(i, q, engine, 0 if b.window_limited else attempts, ending, on_result)
                                   for i, (q, b) in enumerate(zip(requests, budgets, strict=True))])
    results = [r for r, _ in answered]
    ok_texts = [r.text.strip() for r in results]
    # counted with the tokenizer of the model that wrote them (a server may report no usage)
    tokens = engine.count_tokens(ok_texts) if ok_texts else []
    appended = [a for _, a in answered]
    added = dict(zip([i for i, a in enumerate(appended) if a], engine.count_tokens([a for a in appended if a]),
                     strict=True)) if any(appended) else {}
    out, quarantine = [], []
    for k, (row, b, res, text, ntok) in enumerate(zip(rows, budgets, results, ok_texts, tokens, strict=True)):
        rid = row_id(row["instruction"], b.requested_words, seed)
        if not res.ok:
            quarantine.append(
                {"id": rid, "stage": "generate", "reason": res.error, "source": row.get("source", ""),
                 "record": row["instruction"]}
            )
            continue
        words = count_words(text, counter)
        out.append(
            {
                "id": rid,
                "messages": [
                    {"role": "user", "content": row["instruction"]},
                    {"role": "assistant", "content": text},
                ],
                "instruction": row["instruction"],
                "language": language_of(row["instruction"]),
                "requested_words": b.requested_words,
                "target_words": b.target_words,
                "capped": b.capped,
                "min_tokens": b.min_tokens,
                "max_tokens": b.max_tokens,
                "response_words": words,
                "response_chars": len(text),
                "response_tokens": ntok,
                "window_limited": b.window_limited,
                # LongWrite-Ruler reads a text that ran to the window's end as the window's length, not the model's
                # a continued row was stopped by its budget: the continuation ended it, not the model
                "stopped_by": "model" if res.finish_reason == "stop" and appended[k] is None else (
                    "window" if b.window_limited else "max_tokens"),
                "continued_tokens": added.get(k, 0),
                # against the length asked for, not the target a small context window capped it to
                "length_score": length_score(b.requested_words, words),
                "goal_score": length_score(b.target_words, words),
                "finish_reason": res.finish_reason,
                "engine": engine.name,
                "model": model_name(engine.model_id),
                "source": row.get("source", ""),
            }
        )
    return pa.Table.from_pylist(out, schema=SFT_SCHEMA), quarantine


def _answer(i: int, req: Request, engine: Engine, attempts: int, ending: dict[str, bool],
            on_result: OnResult | None) -> Chain[tuple[Result, str | None]]:
    """Row `i`'s call and, when it was cut at max_tokens, its continuations: (the final result, the text the
    continuations appended, None when none was answered). `on_result` hears of the row once, when it is done."""
    cut = res = yield req
    if attempts and res.ok and res.finish_reason == "length":
        res = yield from continue_cut(req, res, engine, attempts, **ending)
    if on_result:
        on_result(i, res)
    return res, None if res is cut else res.text[len(cut.text):]
