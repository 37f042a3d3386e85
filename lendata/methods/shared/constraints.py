"""Length constraints in instructions: extract them (en and zh), synthesise them (LonGen types, Ruler levels).

A constraint is (type, low, high): `about` N, `range` N..M, `above` N (at least), `below` N (at most).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

CType = Literal["about", "range", "above", "below"]
TYPES: tuple[CType, ...] = ("about", "range", "above", "below")


@dataclass(frozen=True)
class Constraint:
    ctype: CType
    low: int
    high: int | None = None  # only for range

    def required(self) -> int:
        """The length LongBench-Write scores against (S_l's l): the stated number; a range's upper bound (its
        data give "300到400字" length 400, "100至200字" 200)."""
        return int(self.high or self.low) if self.ctype == "range" else self.low

    def goal(self, margin: float = 0.1) -> int:
        """The length to aim for: the target, a range's midpoint, or the bound plus/minus a margin."""
        if self.ctype == "range":
            return round((self.low + (self.high or self.low)) / 2)
        if self.ctype == "above":
            return round(self.low * (1 + margin))
        if self.ctype == "below":
            return round(self.low * (1 - margin))
        return self.low


_NUM = r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?\s*[kK]?)"
_WORDS = r"[\s-]*(?:words?|word-long|-word)"


def _n(s: str) -> int:
    s = s.replace(",", "").strip()
    if s[-1:] in "kK":
        return int(float(s[:-1]) * 1000)
    return int(float(s))


# order matters: ranges and bounded forms before the bare "N words"
_EN = [
    ("range", re.compile(rf"(?:between\s+)?{_NUM}\s*(?:-|–|to|and)\s*{_NUM}{_WORDS}", re.I)),
    ("below", re.compile(rf"(?:within\s+(?:a|an|the)\s+)?{_NUM}{_WORDS}\s+(?:limit|maximum|max|cap)", re.I)),
    ("below", re.compile(rf"(?:at\s+most|no\s+more\s+than|not\s+more\s+than|(?<!no )(?<!not )less\s+than|"
                         rf"(?<!no )(?<!not )fewer\s+than|under|"
                         rf"within|maximum\s+of|a\s+maximum\s+of|not\s+exceed(?:ing)?|up\s+to|"
                         rf"shorter\s+than)\s+{_NUM}{_WORDS}", re.I)),
    ("above", re.compile(rf"(?:at\s+least|no\s+(?:less|fewer)\s+than|not\s+(?:less|fewer)\s+than|"
                         rf"(?<!no )(?<!not )more\s+than|over|minimum\s+of|a\s+minimum\s+of|exceed(?:s|ing)?|"
                         rf"extends?\s+beyond|beyond|in\s+excess\s+of|longer\s+than)\s+{_NUM}{_WORDS}", re.I)),
    ("about", re.compile(rf"(?:about|approximately|around|roughly|approx\.?|some|~)\s*{_NUM}{_WORDS}", re.I)),
    ("about", re.compile(rf"{_NUM}{_WORDS}", re.I)),
]

_ZNUM = r"(\d+(?:\.\d+)?\s*[万千]?|[一二两三四五六七八九十百千万]+)"
_ZDIGITS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZUNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}


def _zn(s: str) -> int:
    s = s.strip()
    if s[0].isdigit():
        if s.endswith("万"):
            return int(float(s[:-1]) * 10000)
        if s.endswith("千"):
            return int(float(s[:-1]) * 1000)
        return int(float(s))
    total, digit = 0, 0  # Chinese numerals: 四千, 两千五百, 一万
    for ch in s:
        if ch in _ZDIGITS:
            digit = _ZDIGITS[ch]
        else:
            total += (digit or 1) * _ZUNITS[ch]
            digit = 0
    return total + digit


_ZH = [
    ("range", re.compile(rf"{_ZNUM}\s*个?字?\s*(?:到|至|-|–|~|～)\s*{_ZNUM}\s*个?字")),
    ("above", re.compile(rf"(?:不少于|不低于|不小于|不得少于|至少|最少|多于|大于|(?<![不得能可])超过)"
                         rf"\s*{_ZNUM}\s*个?字")),
    ("below", re.compile(rf"{_ZNUM}\s*个?字?(?:以内|以下|之内)")),
    ("below", re.compile(rf"(?:不超过|不得超过|不能超过|不可超过|不多于|不大于|不要超过|(?<!不)少于|小于|最多|至多)"
                         rf"\s*{_ZNUM}\s*个?字")),
    ("above", re.compile(rf"{_ZNUM}\s*个?字(?:以上)")),
    ("about", re.compile(rf"(?:大约|大概|约|左右)\s*{_ZNUM}\s*个?字")),
    ("about", re.compile(rf"{_ZNUM}\s*个?字")),
]


def extract(text: str) -> Constraint | None:
    """The first length constraint stated in an instruction, or None."""
    for ctype, pat in _ZH:
        m = pat.search(text)
        if m:
            return _make(ctype, [_zn(g) for g in m.groups()])
    for ctype, pat in _EN:
        m = pat.search(text)
        if m:
            return _make(ctype, [_n(g) for g in m.groups()])
    return None


def _make(ctype: str, nums: list[int]) -> Constraint | None:
    if any(n <= 0 for n in nums):
        return None
    if ctype == "range":
        lo, hi = sorted(nums[:2])
        return Constraint("range", lo, hi) if lo < hi else Constraint("about", lo)
    return Constraint(ctype, nums[0])  # type: ignore[arg-type]


_EN_TEMPLATES = {
    "about": "Please write about {lo} words.",
    "range": "The response should be between {lo} and {hi} words.",
    "above": "Write at least {lo} words.",
    "below": "Write no more than {lo} words.",
}
# the "below" template takes the upper bound and "above" the lower one (the reference swaps them for zh)
_ZH_TEMPLATES = {
    "about": "字数大约{lo}字。",
    "range": "字数在{lo}到{hi}字之间。",
    "above": "字数不少于{lo}字。",
    "below": "字数不超过{lo}字。",
}


def phrase(c: Constraint, lang: str = "en") -> str:
    templates = _ZH_TEMPLATES if lang == "zh" else _EN_TEMPLATES
    return templates[c.ctype].format(lo=c.low, hi=c.high)


def constrain(instruction: str, c: Constraint, lang: str = "en") -> str:
    """Append a stated length constraint to a plain instruction."""
    sep = "" if lang == "zh" else " "
    return instruction.rstrip() + sep + phrase(c, lang)


def draw(
    rng: random.Random,
    low: int = 500,
    high: int = 3000,
    types: tuple[str, ...] = ("about",),
    granularity: int = 100,
) -> Constraint:
    """A random constraint: a log-uniform length in [low, high] rounded to `granularity`, a type from `types`."""
    import math

    n = math.exp(rng.uniform(math.log(low), math.log(high)))
    n = max(granularity, round(n / granularity) * granularity)
    ctype = rng.choice(list(types))
    if ctype == "range":
        return Constraint("range", n, n + max(granularity, round(n * 0.5 / granularity) * granularity))
    return Constraint(ctype, n)  # type: ignore[arg-type]


RULER_LEVELS = (10, 30, 50, 80, 150, 300, 500, 700, 1000)


def ruler_instruction(instruction: str, level: int) -> str:
    """Ruler's target-length instruction (METHODS §2): "The response should have a word count of {N} words.";
    the open level (>800, any level above 800) reads "more than 800"."""
    n = "more than 800" if level > 800 else str(level)
    return f"{instruction.rstrip()} The response should have a word count of {n} words."


_LEAD_EN = re.compile(r"(?:,?\s*(?:aiming|aim|targeting|target|with|in|of|for|using|keeping|keep it|that is|"
                      r"which is|and|the (?:response|answer|article|essay|story|text) should be|"
                      r"(?:it|this) should be|please|ensure|make sure|limit(?:ed)? (?:it )?to|"
                      r"(?:the )?(?:total )?(?:length|word count)(?: should be| is| of)?)\s*)+$", re.I)
_SENTENCE = re.compile(r"[^。！？.!?]*[。！？.!?]?")


def strip_constraint(text: str) -> str:
    """The instruction without its stated length.

    A later sentence that states a length is dropped whole ("Ensure the response is about 2000 words."); in
    the first sentence only the length phrase and the words leading into it are cut ("Write a 2000-word story
    about X" -> "Write a story about X").
    """
    out: list[str] = []
    for sent in (m.group(0) for m in _SENTENCE.finditer(text) if m.group(0)):
        span = _span(sent)
        if span is None:
            out.append(sent)
            continue
        before, after = sent[: span[0]], sent[span[1]:]
        if out or len(re.sub(r"[\W\d_]+", "", before + after)) < 12:
            continue
        before = _LEAD_EN.sub("", before.rstrip()) if not _is_zh(sent) else re.sub(
            r"(?:[，,]?\s*(?:建议|请|全文|字数|篇幅|长度|控制在|要求|在)\s*)+$", "", before)
        after = re.sub(r"^\s*(?:左右|以上|以内|之间)", "", after)
        gap = " " if before.strip() and (after[:1].isspace() or after[:1].isalnum()) else ""
        joined = before.rstrip(" ,，") + gap + after.lstrip()
        out.append(re.sub(r"\s{2,}", " ", joined).replace(" .", ".").replace(" ,", ","))
    text = "".join(out).strip()
    text = re.sub(r"[（(]\s*(?:总字数|字数|提交内容|内容)?\s*(?:需|要求|为)?\s*[）)]", "", text)  # "（）", "（需）"
    return re.sub(r"(?<=[\u4e00-\u9fff]) (?=[\u4e00-\u9fff])", "", text)


def _is_zh(text: str) -> bool:
    return bool(re.search(r"[\u4e00-\u9fff]", text))


def _span(text: str) -> tuple[int, int] | None:
    for _, pat in _ZH + _EN:
        m = pat.search(text)
        if m:
            return m.span()
    return None
