"""Token budgets from word targets: measured tokens per word, min/max ratios, context-window capping."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

from lendata.engines.base import Engine
from lendata.lengths import WordCounter, is_chinese, tokens_per_word


@cache
def _calibration_texts() -> dict[str, tuple[str, ...]]:
    """Real en and zh prose written outside this project (LonGen queries), by language."""
    by_lang: dict[str, list[str]] = {"en": [], "zh": []}
    with resources.files("lendata.data").joinpath("longen.jsonl").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            by_lang[rec["language"]].append(rec["query"])
    return {k: tuple(v) for k, v in by_lang.items()}


def measure_tokens_per_word(engine: Engine, counter: WordCounter = "longwriter") -> dict[str, float]:
    """The engine tokenizer's tokens per word for en and zh, measured on the calibration texts."""
    out = {}
    for lang, texts in _calibration_texts().items():
        out[lang] = tokens_per_word(texts, engine.count_tokens(list(texts)), counter)
    return out


@dataclass(frozen=True)
class Budget:
    requested_words: int
    target_words: int  # requested, or what the context window can hold
    min_tokens: int
    max_tokens: int
    capped: bool
    window_limited: bool = False  # max_tokens is what the window leaves, not what the ratio asked for


def budget_for(
    target_words: int,
    prompt_tokens: int,
    context_window: int,
    tokens_per_word: float,
    min_ratio: float = 0.85,
    max_ratio: float = 1.3,
) -> Budget:
    """min/max new tokens for a word target; a target the window cannot hold is lowered and flagged."""
    room = context_window - prompt_tokens
    if room < 8:
        raise ValueError(f"prompt of {prompt_tokens} tokens leaves no room in a {context_window}-token window")
    target = target_words
    capped = False
    # a target is capped only when the target itself does not fit; max_ratio is headroom, capped below
    if math.ceil(target * tokens_per_word * min(1.0, max_ratio)) > room:
        target = max(1, math.floor(room / (tokens_per_word * min(1.0, max_ratio))))
        capped = True
    asked = math.ceil(target * tokens_per_word * max_ratio)
    max_tokens = min(room, asked)
    min_tokens = min(max_tokens, math.floor(target * tokens_per_word * min_ratio))
    return Budget(target_words, target, min_tokens, max_tokens, capped, window_limited=room < asked)


def language_of(text: str) -> str:
    return "zh" if is_chinese(text) else "en"
