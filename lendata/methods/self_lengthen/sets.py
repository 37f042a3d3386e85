"""Self-Lengthen outputs: the kept responses, the two training sets and length-constrained queries.

- `responses`: instruction, initial and extended response, their lengths, iteration (after drop_short);
- `gen_sft`: instruction -> extended response (trains the Generator to answer longer);
- `ext_sft`: extend prompt over the initial response with each line kept with p=0.8 -> extended response
  (trains the Extender to expand);
- `queries`: LonGen-style length-constrained queries whose constraint the response actually satisfies.

Training sets carry both shapes: `messages` (chat) and Alpaca `instruction`/`input`/`output`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lendata.engines.identity import model_name
from lendata.lengths import count_words, longen_interval
from lendata.methods.self_lengthen.steps import Response, Settings, extend_chat, rejection, words
from lendata.methods.shared import checks
from lendata.methods.shared.constraints import TYPES, Constraint, constrain
from lendata.methods.shared.sft import MESSAGE, row_id

INSTRUCTIONS_SCHEMA = pa.schema([
    ("id", pa.string()), ("instruction", pa.large_string()), ("language", pa.string()), ("iteration", pa.int32()),
])
RESPONSES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("instruction_id", pa.string()),
    ("instruction", pa.large_string()),
    ("language", pa.string()),
    ("iteration", pa.int32()),
    ("sample", pa.int32()),
    ("initial_response", pa.large_string()),
    ("extended_response", pa.large_string()),
    ("initial_words", pa.int32()),
    ("extended_words", pa.int32()),
    ("initial_tokens", pa.int32()),
    ("extended_tokens", pa.int32()),
    ("growth", pa.float64()),
    ("generate_attempts", pa.int32()),
    ("extend_attempts", pa.int32()),
    ("rounds_accepted", pa.int32()),
    ("engine", pa.string()),
    ("model", pa.string()),
])
PAIR_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("iteration", pa.int32()),
    ("language", pa.string()),
    ("messages", pa.list_(MESSAGE)),
    ("instruction", pa.large_string()),
    ("input", pa.large_string()),
    ("output", pa.large_string()),
    ("output_words", pa.int32()),
    ("output_tokens", pa.int32()),
])
QUERIES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("iteration", pa.int32()),
    ("language", pa.string()),
    ("query", pa.large_string()),
    ("instruction", pa.large_string()),
    ("constraint_type", pa.string()),
    ("constraint_low", pa.int32()),
    ("constraint_high", pa.int32()),
    ("response_words", pa.int32()),
    ("response_tokens", pa.int32()),
    ("messages", pa.list_(MESSAGE)),
])


def keep_long(responses: Sequence[Response], s: Settings, iteration: int) -> tuple[list[Response], list[dict]]:
    """drop_short over the extended responses (by characters, seeded); the dropped ones as rejections."""
    done = sorted((r for r in responses if r.extended is not None), key=lambda r: r.id)
    if not s.drop_short or not done:
        return done, []
    keep = checks.drop_short([len(r.extended or "") for r in done], random.Random(s.seed * 1000 + iteration))
    dropped = [rejection("drop_short", f"drop_short: {len(r.extended or '')} characters, among the shorter ones",
                         {"instruction": r.instruction, "extended_response": r.extended}, r.id)
               for r, k in zip(done, keep, strict=True) if not k]
    return [r for r, k in zip(done, keep, strict=True) if k], dropped


def failures(responses: Sequence[Response]) -> list[dict[str, Any]]:
    """Responses that never passed generation or extension, with their reason."""
    return [rejection(r.failed.split(":")[0], r.failed,
                      {"instruction": r.instruction, "iteration": r.iteration, "initial_response": r.initial}, r.id)
            for r in responses if r.failed]


def count_tokens(kept: Sequence[Response], generator: Any, extender: Any) -> None:
    """Each text's tokens by the tokenizer of the model that wrote it: the Generator's for the initial
    response, the Extender's for the extended one."""
    for r, n in zip(kept, generator.count_tokens([r.initial for r in kept]) if kept else [], strict=True):
        r.initial_tokens = n
    for r, n in zip(kept, extender.count_tokens([r.extended or "" for r in kept]) if kept else [], strict=True):
        r.extended_tokens = n


def responses_table(kept: Sequence[Response], s: Settings, engine: str, model: str) -> pa.Table:
    rows = []
    for r in kept:
        a, b = words(r.initial, s), words(r.extended or "", s)
        rows.append({"id": r.id, "instruction_id": r.instruction_id, "instruction": r.instruction,
                     "language": r.language, "iteration": r.iteration, "sample": r.sample,
                     "initial_response": r.initial, "extended_response": r.extended, "initial_words": a,
                     "extended_words": b, "initial_tokens": r.initial_tokens, "extended_tokens": r.extended_tokens,
                     "growth": round(b / a, 4) if a else None,
                     "generate_attempts": r.gen_attempts, "extend_attempts": r.extend_attempts,
                     "rounds_accepted": r.rounds_accepted, "engine": engine, "model": model_name(model)})
    return pa.Table.from_pylist(rows, schema=RESPONSES_SCHEMA)


def _pair(rid: str, r: Response, prompt: str, s: Settings) -> dict[str, Any]:
    out = r.extended or ""
    return {"id": rid, "iteration": r.iteration, "language": r.language,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": out}],
            "instruction": prompt, "input": "", "output": out, "output_words": words(out, s),
            "output_tokens": r.extended_tokens}


def drop_lines(text: str, keep: float, rng: random.Random) -> str:
    """The corrupted input of ext_sft: each line kept with probability `keep`, rejoined by blank lines."""
    return "\n\n".join(line for line in text.split("\n") if rng.random() < keep)


def sft_tables(kept: Sequence[Response], s: Settings) -> tuple[pa.Table, pa.Table]:
    gen, ext = [], []
    for r in kept:
        gen.append(_pair(row_id("gen_sft", r.id), r, r.instruction, s))
        rng = random.Random(f"{s.seed}|ext_sft|{r.id}")
        corrupted = drop_lines(r.initial, s.line_keep, rng)
        ext.append(_pair(row_id("ext_sft", r.id), r, extend_chat(r.instruction, corrupted, r.language)[0]["content"],
                         s))
    return pa.Table.from_pylist(gen, schema=PAIR_SCHEMA), pa.Table.from_pylist(ext, schema=PAIR_SCHEMA)


# --- length-constrained queries ---------------------------------------------------------------------------

_ZH_DIGITS = "零一两三四五六七八九"


def zh_number(n: int) -> str:
    """A multiple of 1,000 in Chinese numerals: 2000 -> 两千, 12000 -> 一万两千."""
    if n <= 0 or n % 1000 or n >= 100_000:
        return str(n)
    wan, qian = divmod(n // 1000, 10)
    return (f"{_ZH_DIGITS[wan]}万" if wan else "") + (f"{_ZH_DIGITS[qian]}千" if qian else "")


def fit_constraint(ctype: str, n: int, granularity: int) -> Constraint | None:
    """A constraint of this type, on this granularity, that a text of `n` words satisfies (LonGen interval)."""
    g = granularity
    lo, hi, near = math.floor(n / g) * g, math.ceil(n / g) * g, round(n / g) * g
    candidates = {
        "about": [Constraint("about", x) for x in dict.fromkeys((near, lo, hi))],
        "range": [Constraint("range", lo, lo + g)],
        "above": [Constraint("above", lo)],
        "below": [Constraint("below", hi)],
    }[ctype]
    for c in candidates:
        if c.low > 0:
            a, b = longen_interval(c.ctype, c.low, c.high)
            if a <= n <= b:
                return c
    return None


def length_query(
    instruction: str, n: int, lang: str, rng: random.Random, types: Sequence[str] = TYPES,
    p1000: float = 0.8, zh_numerals: bool = False,
) -> tuple[str, Constraint] | None:
    """The instruction with a stated length constraint that a response of `n` words satisfies, or None."""
    ctype = rng.choice(list(types))
    first = 1000 if rng.random() < p1000 else 2000
    for g in (first, 1000):  # a coarse granularity may leave no satisfied constraint; the fine one then does
        c = fit_constraint(ctype, n, g)
        if c is not None:
            break
    else:
        return None
    if lang == "zh" and zh_numerals:
        templates = {"about": "字数大约{lo}字。", "range": "字数在{lo}到{hi}字之间。", "above": "字数不少于{lo}字。",
                     "below": "字数不超过{lo}字。"}
        hi = zh_number(c.high) if c.high else ""
        return instruction.rstrip() + templates[c.ctype].format(lo=zh_number(c.low), hi=hi), c
    return constrain(instruction, c, lang), c


def queries_table(
    kept: Sequence[Response], s: Settings, min_words: int = 2000, max_words: int = 8000,
    types: Sequence[str] = TYPES, p1000: float = 0.8, zh_numerals: bool = False,
) -> pa.Table:
    """Queries from responses with min_words <= words < max_words (LonGen counting)."""
    rows = []
    for r in kept:
        text = r.extended or ""
        n = count_words(text, "longen")
        if not min_words <= n < max_words:
            continue
        made = length_query(r.instruction, n, r.language, random.Random(f"{s.seed}|query|{r.id}"), types, p1000,
                            zh_numerals)
        if made is None:
            continue
        query, c = made
        rows.append({"id": row_id("query", r.id), "iteration": r.iteration, "language": r.language, "query": query,
                     "instruction": r.instruction, "constraint_type": c.ctype, "constraint_low": c.low,
                     "constraint_high": c.high, "response_words": n, "response_tokens": r.extended_tokens,
                     "messages": [{"role": "user", "content": query}, {"role": "assistant", "content": text}]})
    return pa.Table.from_pylist(rows, schema=QUERIES_SCHEMA)
