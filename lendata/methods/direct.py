"""`direct`: answer each length-constrained instruction in one call, with a token budget per row.

The baseline that AgentWrite improves on, and the simplest recipe that exercises the whole toolkit: per-row
`min_tokens`/`max_tokens` from the word target and the tokenizer's measured tokens per word, targets capped
to what the context window holds, and every row scored with S_l against its target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lendata.engines.base import Engine, OnResult, Request, estimate_prompt_tokens
from lendata.engines.identity import model_name
from lendata.lengths import WordCounter, count_tokens, count_words, length_score
from lendata.methods.budget import budget_for, language_of, measure_tokens_per_word

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.large_string())])

# the response's lengths, score and provenance: the last columns of every long-output SFT table
RESPONSE_FIELDS = [
    ("response_words", pa.int32()),
    ("response_chars", pa.int32()),
    ("response_tokens", pa.int32()),
    ("length_score", pa.float64()),
    ("finish_reason", pa.string()),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("source", pa.string()),
]

SFT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(MESSAGE)),
        ("instruction", pa.large_string()),
        ("language", pa.string()),
        ("requested_words", pa.int32()),
        ("target_words", pa.int32()),
        ("capped", pa.bool_()),
        ("min_tokens", pa.int32()),
        ("max_tokens", pa.int32()),
        *RESPONSE_FIELDS,
    ]
)


def row_id(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def direct(
    rows: Sequence[dict[str, Any]],
    engine: Engine,
    *,
    temperature: float = 0.5,
    top_p: float = 0.95,
    seed: int = 42,
    first_index: int = 0,
    counter: WordCounter = "longwriter",
    min_ratio: float = 0.85,
    max_ratio: float = 1.3,
    on_result: OnResult | None = None,
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """(SFT table, quarantine records for rows the engine failed on). Each row needs `instruction`, `target`.

    Row i is sampled with seed `seed + first_index + i`: a shard passes its first row's place in the whole
    input, so its rows get the seeds they would have had in one unsharded run."""
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
    tokens = count_tokens(ok_texts) if ok_texts else []
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
                "length_score": length_score(b.target_words, words),
                "finish_reason": res.finish_reason,
                "engine": engine.name,
                "model": model_name(engine.model_id),
                "source": row.get("source", ""),
            }
        )
    return pa.Table.from_pylist(out, schema=SFT_SCHEMA), quarantine
