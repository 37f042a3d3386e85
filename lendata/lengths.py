"""Length counting and length-following metrics (METHODS.md §1-2).

Every count has its own function because the published benchmarks disagree on what a "word" is; a corpus
keeps each count as its own column and never mixes them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal

_CJK = re.compile(r"[\u4e00-\u9fff]")
_EN_WORD = re.compile(r"\b[a-zA-Z]+\b")
# LonGen counts CJK ideographs, CJK punctuation and full-width forms one each
_LONGEN_WIDE = re.compile(r"[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]")
_RULER_WORD = re.compile(r"\w+")

WordCounter = Literal["longwriter", "longen", "ruler"]


def longwriter_words(text: str) -> int:
    """LongWriter: CJK ideographs plus runs of ASCII letters ("it's" is 2, "GPT-4o" is 1)."""
    return len(_CJK.findall(text)) + len(_EN_WORD.findall(text))


def longen_words(text: str) -> int:
    """LonGen (Self-Lengthen eval): wide characters count one each, the rest splits on whitespace."""
    wide = len(_LONGEN_WIDE.findall(text))
    return wide + len(_LONGEN_WIDE.sub(" ", text).split())


def ruler_words(text: str) -> int:
    """Ruler: number of \\w+ tokens (nltk RegexpTokenizer(r"\\w+"))."""
    return len(_RULER_WORD.findall(text))


WORD_COUNTERS = {"longwriter": longwriter_words, "longen": longen_words, "ruler": ruler_words}


def count_words(text: str, counter: WordCounter = "longwriter") -> int:
    try:
        return WORD_COUNTERS[counter](text)
    except KeyError:
        raise ValueError(f"unknown word counter {counter!r}; choose from {sorted(WORD_COUNTERS)}") from None


def count_chars(text: str) -> int:
    return len(text)


def is_chinese(text: str, threshold: float = 0.2) -> bool:
    """True when CJK ideographs make up at least `threshold` of the non-space characters."""
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and len(_CJK.findall(text)) / len(chars) >= threshold


@lru_cache(maxsize=8)
def load_tokenizer(path: str | None = None):
    """A `tokenizers.Tokenizer` from a JSON file; the bundled model's tokenizer when `path` is None."""
    from tokenizers import Tokenizer

    if path is None:
        from lendata.models import bundled_tokenizer_path

        path = str(bundled_tokenizer_path())
    return Tokenizer.from_file(str(path))


def count_tokens(texts: Sequence[str], tokenizer_path: str | None = None, batch_size: int = 1024) -> list[int]:
    """Token counts without special tokens, encoded in parallel batches by `tokenizers`."""
    tok = load_tokenizer(tokenizer_path)
    out: list[int] = []
    for i in range(0, len(texts), batch_size):
        enc = tok.encode_batch_fast(list(texts[i : i + batch_size]), add_special_tokens=False)
        out.extend(len(e.ids) for e in enc)
    return out


def tokens_per_word(
    texts: Iterable[str], token_counts: Sequence[int], counter: WordCounter = "longwriter"
) -> float:
    """Measured tokens per word over a sample: total tokens / total words."""
    words = sum(count_words(t, counter) for t in texts)
    if words == 0:
        raise ValueError("cannot measure tokens per word on texts with no words")
    return sum(token_counts) / words


# --- metrics --------------------------------------------------------------------------------------------


def length_score(required: float, produced: float) -> float:
    """LongBench-Write S_l in [0, 100]. An empty response scores 0 (the reference divides by zero)."""
    if required <= 0:
        raise ValueError(f"required length must be positive, got {required}")
    if produced <= 0:
        return 0.0
    if produced > required:
        return 100.0 * max(0.0, 1.0 - (produced / required - 1.0) / 3.0)
    return 100.0 * max(0.0, 1.0 - (required / produced - 1.0) / 2.0)


ConstraintType = Literal["about", "range", "above", "below"]


def longen_interval(
    ctype: ConstraintType, target: float, upper: float | None = None
) -> tuple[float, float]:
    """The [a, b] interval a LonGen constraint accepts."""
    if ctype == "about":
        return 0.8 * target, 1.2 * target
    if ctype == "range":
        if upper is None:
            raise ValueError("a range constraint needs an upper bound")
        return float(target), float(upper)
    if ctype == "above":
        return float(target), 1.5 * target
    if ctype == "below":
        return 0.5 * target, float(target)
    raise ValueError(f"unknown constraint type {ctype!r}; choose from about, range, above, below")


def longen_score(ctype: ConstraintType, target: float, produced: float, upper: float | None = None) -> float:
    """LonGen length-following score in [0, 1]: 1 inside [a, b], linear fall-off outside."""
    a, b = longen_interval(ctype, target, upper)
    if produced < a:
        return max(0.0, 2.0 * produced / a - 1.0)
    if produced > b:
        return max(0.0, 3.0 - 2.0 * produced / b)
    return 1.0


# Ruler windows (lo, hi]: target -> (PM window, FM window); ">800" is open above
RULER_WINDOWS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "10": ((0, 20), (0, 20)),
    "30": ((20, 40), (20, 40)),
    "50": ((40, 60), (40, 60)),
    "80": ((70, 90), (60, 100)),
    "150": ((130, 170), (100, 200)),
    "300": ((280, 320), (200, 400)),
    "500": ((450, 550), (400, 600)),
    "700": ((630, 770), (600, 800)),
    ">800": ((800, math.inf), (800, math.inf)),
}


def ruler_level(target: int | str) -> str:
    key = str(target).strip()
    if key in RULER_WINDOWS:
        return key
    if key.isdigit() and int(key) > 800:
        return ">800"
    raise ValueError(f"{target!r} is not a Ruler level; choose from {list(RULER_WINDOWS)}")


def ruler_hit(target: int | str, words: int, mode: Literal["pm", "fm"] = "pm") -> bool:
    pm, fm = RULER_WINDOWS[ruler_level(target)]
    lo, hi = pm if mode == "pm" else fm
    return lo < words <= hi


def ruler_score(targets: Sequence[int | str], words: Sequence[int], mode: Literal["pm", "fm"] = "pm") -> float:
    """Ruler PM (precise match) or FM (flexible match): hits / total x 100."""
    if len(targets) != len(words):
        raise ValueError("targets and word counts differ in length")
    if not targets:
        return 0.0
    return 100.0 * sum(ruler_hit(t, w, mode) for t, w in zip(targets, words, strict=True)) / len(targets)


# Ruler's levels: Level 0 = short, 1 = medium, 2 = long targets (PM/FM are reported per level and overall)
RULER_GROUPS = {"10": "Level 0", "30": "Level 0", "50": "Level 0", "80": "Level 0", "150": "Level 1",
                "300": "Level 1", "500": "Level 1", "700": "Level 2", ">800": "Level 2"}


def ruler_group(target: int | str) -> str:
    """Level 0 (10, 30, 50, 80), Level 1 (150, 300, 500) or Level 2 (700, >800) of a Ruler target."""
    return RULER_GROUPS[ruler_level(target)]


# Meta Length Tokens (Ruler's MetaLengthToken, METHODS §2): a training response gets the tag whose window
# (lo, hi] holds its word count, lower bound exclusive; a response in no window is dropped
MLT_WINDOWS: dict[str, tuple[float, float]] = {
    "10": (5, 15), "30": (25, 35), "50": (45, 55), "80": (75, 85), "150": (135, 155), "300": (295, 305),
    "500": (495, 505), "700": (695, 705), ">800": (800, math.inf),
}


def meta_length_token(words: int) -> str | None:
    """The `[MLT:...]` tag for a training response of `words` words, or None (the row is dropped)."""
    return next((f"[MLT:{level}]" for level, (lo, hi) in MLT_WINDOWS.items() if lo < words <= hi), None)
