"""The long-output SFT tables every SFT method shares: chat messages, and the response's lengths, score and
provenance as the last columns of every row."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.large_string())])

# the response's lengths, score and provenance: the last columns of every long-output SFT table
RESPONSE_FIELDS = [
    ("response_words", pa.int32()),
    ("response_chars", pa.int32()),
    ("response_tokens", pa.int32()),
    ("length_score", pa.float64()),  # S_l against the length the instruction states (LongBench-Write's l)
    ("goal_score", pa.float64()),  # S_l against the length the method aimed at (target_words)
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
        ("window_limited", pa.bool_()),  # max_tokens is what the context window left
        ("stopped_by", pa.string()),  # model (it ended), window (it ran to the window's end) or max_tokens
        ("continued_tokens", pa.int32()),  # tokens continuations added after max_tokens cut it (0: none)
        *RESPONSE_FIELDS,
    ]
)


def row_id(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]
