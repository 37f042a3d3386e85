"""LonGen-style length-constrained queries from Self-Lengthen's responses, as the reference builds them
(QwenLM/Self-Lengthen eval/add_length_control.py, qwen/collect_data.py; METHODS §4).

- Sources: initial and extended responses of every iteration (and of an optional final collection round),
  kept when min_words <= words < max_words (2,000 and 8,000, LonGen words).
- Granularity 2,000 with p = 0.2, else 1,000; bounds clamped to [min_words, max_words].
- Constraint type drawn 0.40 about / 0.25 range / 0.10 above / 0.25 below; zh lengths in Chinese numerals
  with p = 0.5.
- An LLM rewrites each query so that the constraint is phrased and placed naturally (the reference's
  instruction, in lendata's own words). lendata reads the constraint back from the rewrite; when it is not
  exactly the one intended (or the rewrite is empty or runs away), the fixed template is used and the row's
  `phrasing` says so, with the reason.

Deliberate deviations: the reference states `about` round(n), `range` floor..ceil, `above` floor and `below`
ceil without checking them against the response under LonGen's scoring; here the constraint of the drawn type
is the first of those candidates the response satisfies (trying the fine granularity when the coarse one
leaves none), so every query's constraint is met by its response. The reference's zh templates fill "less
than" with the minimum and "more than" with the maximum, producing constraints the response violates; here
"less than" takes the maximum and "more than" the minimum, as in English.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from lendata.engines.base import Engine, Request
from lendata.lengths import count_words, longen_interval
from lendata.methods.shared.constraints import Constraint, constrain, extract, strip_constraint
from lendata.methods.shared.sft import MESSAGE, row_id

TYPE_MIX = {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}
KEEP_SHARE = 0.8  # of the request's words a rewrite must keep (it may add a few of its own around the length)


@dataclass
class QuerySettings:
    """LonGen-style length-constrained queries made from the responses."""

    __pydantic_config__ = {"extra": "forbid"}

    min_words: int = 2000  # from responses with min_words <= words < max_words (LonGen words)
    max_words: int = 8000  # (exclusive); also the bounds constraints are clamped to
    type_mix: dict[str, float] = field(default_factory=lambda: dict(TYPE_MIX))  # constraint type shares
    p1000: float = 0.8  # granularity 1000 with this probability, else 2000
    zh_numerals: float = 0.5  # probability of writing a zh length in Chinese numerals (两千)
    rewrite: bool = True  # an LLM (the base model) phrases and places each constraint; checked, else template
    sources: tuple[str, ...] = ("initial", "extended")  # which responses feed queries
    final_round: bool = False  # one more round with the last iteration's trained models, for queries only

    def __post_init__(self) -> None:
        unknown = set(self.type_mix) - set(TYPE_MIX)
        if unknown or not self.type_mix or any(v < 0 for v in self.type_mix.values()) \
                or sum(self.type_mix.values()) <= 0:
            raise ValueError(f"queries.type_mix needs non-negative shares of {list(TYPE_MIX)}, got {self.type_mix}")
        if set(self.sources) - {"initial", "extended"}:
            raise ValueError(f"queries.sources are initial and/or extended, got {list(self.sources)}")
        if not (0 <= self.p1000 <= 1 and 0 <= self.zh_numerals <= 1):
            raise ValueError(f"queries.p1000 and queries.zh_numerals are probabilities in [0, 1], got "
                             f"{self.p1000} and {self.zh_numerals}")
        if not 0 < self.min_words < self.max_words:
            raise ValueError(f"queries needs 0 < min_words < max_words, got {self.min_words} and {self.max_words}")


QUERIES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("iteration", pa.int32()),
    ("language", pa.string()),
    ("source", pa.string()),  # initial | extended: which response the query pairs with
    ("query", pa.large_string()),
    ("instruction", pa.large_string()),
    ("constraint_type", pa.string()),
    ("constraint_low", pa.int32()),
    ("constraint_high", pa.int32()),
    ("phrasing", pa.string()),  # rewritten (by the LLM, checked) | template
    ("rewrite_note", pa.large_string()),  # why the rewrite was not used, when it was not
    ("response_words", pa.int32()),
    ("response_tokens", pa.int32()),
    ("messages", pa.list_(MESSAGE)),
])

_ZH_DIGITS = "零一两三四五六七八九"

# the length requirement as the rewrite prompt states it (the reference's phrases; zh bounds the right way round)
_PHRASES = {
    "en": {"about": "around {lo} words", "range": "{lo}-{hi} words", "above": "more than {lo} words",
           "below": "less than {lo} words"},
    "zh": {"about": "大约{lo}字", "range": "{lo}字至{hi}字", "above": "大于{lo}字", "below": "小于{lo}字"},
}
_ZH_TEMPLATES = {"about": "字数大约{lo}字。", "range": "字数在{lo}到{hi}字之间。", "above": "字数不少于{lo}字。",
                 "below": "字数不超过{lo}字。"}
REWRITE = {
    "en": ("Add the length requirement \"{phrase}\" to the user's request below and change nothing else in it. "
           "If the request already states a length, replace it with this one. Vary the wording and the place of "
           "the requirement so that it reads naturally rather than like a fixed formula. Reply with the "
           "rewritten request only, without any other text or formatting.\n\nRequest:\n{query}"),
    "zh": ("请在下面用户的原始请求中加入字数要求“{phrase}”，不要修改请求的其他部分。如果请求中已有字数要求，"
           "就把它改成上述要求。加入要求时请变换措辞和位置，使其自然而不生硬。直接返回改写后的请求，不要任何其他内容"
           "或格式。\n\n请求：\n{query}"),
}


def zh_number(n: int) -> str:
    """A multiple of 1,000 in Chinese numerals: 2000 -> 两千, 12000 -> 一万两千."""
    if n <= 0 or n % 1000 or n >= 100_000:
        return str(n)
    wan, qian = divmod(n // 1000, 10)
    return (f"{_ZH_DIGITS[wan]}万" if wan else "") + (f"{_ZH_DIGITS[qian]}千" if qian else "")


def draw_type(rng: random.Random, mix: dict[str, float]) -> str:
    """A constraint type with probability proportional to its share in `mix`."""
    total, x = sum(mix.values()), rng.random()
    acc = 0.0
    for ctype, share in mix.items():
        acc += share / total
        if x < acc:
            return ctype
    return next(c for c, share in reversed(mix.items()) if share > 0)


def fit_constraint(ctype: str, n: int, granularity: int, lowest: int = 0, highest: int | None = None
                   ) -> Constraint | None:
    """A constraint of this type, on this granularity and within [lowest, highest], that a text of `n` words
    satisfies under LonGen's scoring."""
    g = granularity
    lo, hi, near = math.floor(n / g) * g, math.ceil(n / g) * g, round(n / g) * g
    lo = max(lo, lowest)
    if highest is not None:
        hi = min(hi, highest)
    candidates = {
        "about": [Constraint("about", x) for x in dict.fromkeys((near, lo, hi))],
        # a length on a multiple of g has floor == ceil: the range is the step above it, or below it at the top
        "range": [Constraint("range", a, b) for a, b in ((lo, hi), (lo, lo + g), (hi - g, hi))
                  if lowest <= a < b and (highest is None or b <= highest)][:1],
        "above": [Constraint("above", lo)],
        "below": [Constraint("below", hi)],
    }[ctype]
    for c in candidates:
        if c.low > 0:
            a, b = longen_interval(c.ctype, c.low, c.high)
            if a <= n <= b:
                return c
    return None


def length_constraint(n: int, rng: random.Random, q: QuerySettings) -> Constraint | None:
    """The constraint a response of `n` words gets: type from the mix, granularity 1,000 (p = p1000) or
    2,000, the first satisfied candidate; the fine granularity when the coarse one leaves none."""
    ctype = draw_type(rng, q.type_mix)
    first = 1000 if rng.random() < q.p1000 else 2000
    for g in dict.fromkeys((first, 1000)):
        c = fit_constraint(ctype, n, g, q.min_words, q.max_words)
        if c is not None:
            return c
    return None


def _number(n: int | None, numerals: bool) -> str:
    return zh_number(n) if numerals and n else str(n)


def template_query(instruction: str, c: Constraint, lang: str, numerals: bool) -> str:
    """The fixed template: the instruction with the constraint appended."""
    if lang == "zh" and numerals:
        return instruction.rstrip() + _ZH_TEMPLATES[c.ctype].format(lo=zh_number(c.low), hi=_number(c.high, True))
    return constrain(instruction, c, lang)


def rewrite_prompt(instruction: str, c: Constraint, lang: str, numerals: bool) -> str:
    lang = "zh" if lang == "zh" else "en"
    phrase = _PHRASES[lang][c.ctype].format(lo=_number(c.low, numerals), hi=_number(c.high, numerals))
    return REWRITE[lang].format(phrase=phrase, query=instruction.strip())


def _units(text: str) -> list[str]:
    """Words for en (lower-cased), characters for zh: what a rewrite must keep of the request."""
    return [c for c in text if "\u4e00" <= c <= "\u9fff"] or re.findall(r"[a-z0-9]+", text.lower())


def check_rewrite(text: str, intended: Constraint, instruction: str, truncated: bool = False) -> str | None:
    """Why a rewritten query cannot be used, or None: it must be complete, keep the request (at least
    `KEEP_SHARE` of its words, zh characters) and state exactly the intended constraint."""
    text = text.strip()
    if truncated:
        return "rewrite cut off at max_tokens"
    if not text:
        return "empty rewrite"
    if len(text) > 3 * len(instruction) + 200:
        return f"rewrite runs away ({len(text)} characters for a {len(instruction)}-character request)"
    got = extract(text)
    if got != intended:
        return f"rewrite states {got} instead of {intended}" if got else "rewrite states no length"
    want, have = Counter(_units(strip_constraint(instruction))), Counter(_units(strip_constraint(text)))
    kept = sum((want & have).values()) / max(1, sum(want.values()))
    if kept < KEEP_SHARE:
        return f"rewrite keeps {kept:.0%} of the request's words (needs {KEEP_SHARE:.0%})"
    return None


@dataclass
class Source:
    """One response a query can be made from."""

    id: str
    iteration: int
    language: str
    instruction: str
    text: str
    kind: str  # initial | extended
    tokens: int | None = None


def queries_table(sources: Sequence[Source], q: QuerySettings, seed: int, engine: Engine | None = None,
                  temperature: float = 0.7, top_p: float = 0.8, top_k: int | None = 20) -> pa.Table:
    """One query per source of min_words <= words < max_words whose drawn constraint it satisfies; the
    constraint phrased by `engine` when `q.rewrite` (checked), else by the template."""
    picked = []
    for src in sources:
        if src.kind not in q.sources:
            continue
        n = count_words(src.text, "longen")
        if not q.min_words <= n < q.max_words:
            continue
        rng = random.Random(f"{seed}|query|{src.id}")
        c = length_constraint(n, rng, q)
        if c is None:
            continue
        numerals = src.language == "zh" and rng.random() < q.zh_numerals
        picked.append((src, n, c, numerals))
    rewrites: list[tuple[str, bool] | None] = [None] * len(picked)
    if q.rewrite and engine is not None and picked:
        reqs = [Request(messages=({"role": "user", "content": rewrite_prompt(src.instruction, c, src.language,
                                                                            numerals)},),
                        max_tokens=len(src.instruction) + 96, temperature=temperature,  # chars bound tokens
                        top_p=top_p, top_k=top_k, seed=int(row_id("rewrite", src.id)[:8], 16))
                for src, _, c, numerals in picked]
        rewrites = [(res.text, res.finish_reason == "length") if res.ok else None for res in engine.generate(reqs)]
    rows = []
    for (src, n, c, numerals), rewritten in zip(picked, rewrites, strict=True):
        note = None
        if rewritten is None:
            note = "rewrite off" if not q.rewrite or engine is None else "rewrite failed (engine error)"
        else:
            note = check_rewrite(rewritten[0], c, src.instruction, truncated=rewritten[1])
        query = rewritten[0].strip() if rewritten is not None and note is None else \
            template_query(src.instruction, c, src.language, numerals)
        rows.append({"id": row_id("query", src.id, src.kind), "iteration": src.iteration, "language": src.language,
                     "source": src.kind, "query": query, "instruction": src.instruction, "constraint_type": c.ctype,
                     "constraint_low": c.low, "constraint_high": c.high,
                     "phrasing": "template" if note else "rewritten", "rewrite_note": note,
                     "response_words": n, "response_tokens": src.tokens,
                     "messages": [{"role": "user", "content": query}, {"role": "assistant", "content": src.text}]})
    return pa.Table.from_pylist(rows, schema=QUERIES_SCHEMA)
