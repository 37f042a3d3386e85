"""Ruler (Li et al. 2024, "Ruler: A Model-Agnostic Method to Control Generated Length"): Meta Length Tokens on
training responses, and target-length generation (TLG) instructions to evaluate with.

- A training response of w words (Ruler's counting: \\w+ runs) gets the tag whose window (lo, hi] holds w
  (METHODS §2; `lendata.lengths.MLT_WINDOWS`); the tag is prepended to the assistant turn, with no separator,
  since it is one token of the tagged model's vocabulary. Rows in no window are dropped, as in Ruler.
- TLG: each distinct instruction of the input, its stated length removed, with Ruler's target-length sentence
  for a level drawn with a seed per instruction (Ruler samples the levels it evaluates the same way).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lendata.lengths import MLT_WINDOWS, meta_length_token, ruler_group, ruler_words
from lendata.methods.shared.constraints import ruler_instruction, strip_constraint
from lendata.methods.shared.sft import MESSAGE, row_id

LEVELS = tuple(MLT_WINDOWS)  # 10, 30, 50, 80, 150, 300, 500, 700, >800

TRAIN_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(MESSAGE)),
    ("mlt", pa.string()),
    ("response_words", pa.int32()),
    ("source", pa.string()),
])
TLG_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("instruction", pa.large_string()),
    ("target", pa.string()),  # the Ruler level: 10 .. 700, >800
    ("target_words", pa.int32()),  # the same as a number (>800 as 1000): `lendata score --metric ruler` reads it
    ("level", pa.string()),
    ("source", pa.string()),
])


@dataclass
class Tagged:
    train: list[dict[str, Any]]
    tlg: list[dict[str, Any]]
    bad: list[dict[str, Any]]  # quarantine records: rows with no user and assistant turn
    dropped: int  # rows whose response is in no window


def _turns(record: dict[str, Any], field: str) -> tuple[str, str] | None:
    """(the last user turn, the last assistant turn) of a chat record."""
    messages = record.get(field)
    if not isinstance(messages, list):
        return None
    user = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    reply = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not user or not reply or not isinstance(user[-1], str) or not isinstance(reply[-1], str):
        return None
    return user[-1], reply[-1]


def tag(records: Iterable[tuple[str, dict[str, Any]]], field: str, levels: tuple[str, ...], per_instruction: int,
        seed: int) -> Tagged:
    """Tag every (source, chat record) and make the TLG set from their instructions."""
    out = Tagged([], [], [], 0)
    instructions: dict[str, str] = {}  # stripped instruction -> the source of its first row
    for source, record in records:
        turns = _turns(record, field)
        if turns is None:
            out.bad.append({"id": None, "stage": "input", "source": source, "record": str(record)[:500],
                            "reason": f"no user and assistant turn in `{field}`"})
            continue
        user, reply = turns
        instructions.setdefault(strip_constraint(user).strip() or user, source)
        words = ruler_words(reply)
        mlt = meta_length_token(words)
        if mlt is None:
            out.dropped += 1
            continue
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": f"{mlt}{reply}"}]
        out.train.append({"id": row_id("ruler", user, reply), "messages": messages, "mlt": mlt,
                          "response_words": words, "source": source})
    for text, source in instructions.items():
        rng = random.Random(f"{seed}|tlg|{text}")
        for k in range(per_instruction):
            level = rng.choice(levels)
            n = 1000 if level == ">800" else int(level)
            out.tlg.append({"id": row_id("tlg", text, k, level), "instruction": ruler_instruction(text, n),
                            "target": level, "target_words": n, "level": ruler_group(level), "source": source})
    return out
