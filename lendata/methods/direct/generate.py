"""`direct`: answer each length-constrained instruction in one call, with a token budget per row.

The baseline that AgentWrite improves on, and the simplest recipe that exercises the whole toolkit: per-row
`min_tokens`/`max_tokens` from the word target and the tokenizer's measured tokens per word, targets capped
to what the context window holds, and every row scored with S_l against its target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lendata.engines.base import Engine, OnResult, Request, estimate_prompt_tokens
from lendata.engines.identity import model_name
from lendata.lengths import WordCounter, count_words, length_score
from lendata.methods.shared.budget import budget_for, language_of, measure_tokens_per_word
from lendata.methods.shared.inputs import InstructionInput
from lendata.methods.shared.quality_gate import JudgeGate
from lendata.methods.shared.sft import SFT_SCHEMA, row_id


@dataclass
class Settings(InstructionInput, JudgeGate):
    temperature: float = 0.5  # LongBench-Write's generation setting
    top_p: float = 0.95  # nucleus sampling
    seed: int = 42  # row i is sampled with seed + i
    word_counter: WordCounter = "longwriter"  # longwriter | longen | ruler
    min_ratio: float = 0.85  # min_tokens = target words x tokens/word x min_ratio
    max_ratio: float = 1.3  # max_tokens = target words x tokens/word x max_ratio


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
    results = engine.generate(requests, on_result=on_result)
    ok_texts = [r.text.strip() for r in results]
    tokens = engine.count_tokens(ok_texts) if ok_texts else []  # the tokenizer of the model that wrote them
    out, quarantine = [], []
    for row, b, res, text, ntok in zip(rows, budgets, results, ok_texts, tokens, strict=True):
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
                "stopped_by": "model" if res.finish_reason == "stop" else ("window" if b.window_limited
                                                                           else "max_tokens"),
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
