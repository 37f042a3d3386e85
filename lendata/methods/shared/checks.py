"""Response checks shared by the long-output methods: sentence endings, repeated n-grams, meta words."""

from __future__ import annotations

import re
from collections import Counter

from lendata.engines.sentence_end import ABBREVIATIONS  # the one list: engines end steps with it

# zh endings include ASCII .!? (the Self-Lengthen reference omits them, rejecting valid zh text)
_END_EN = ".!?\"')]}*`»”’"
_END_ZH = "。！？…”’」』）】.!?\"')"
_WORD = re.compile(r"[A-Za-z0-9']+")
# zh: every non-ASCII character is a unit and a run of ASCII characters is one unit (Self-Lengthen)
_ZH_UNIT = re.compile(r"[\x00-\x7f]+|[^\x00-\x7f]")


def ends_sentence(text: str, lang: str = "en") -> bool:
    t = text.rstrip()
    return bool(t) and t[-1] in (_END_ZH if lang == "zh" else _END_EN)


def units(text: str, lang: str = "en") -> list[str]:
    """Lower-cased words for en; single non-ASCII characters and ASCII runs for zh."""
    return _ZH_UNIT.findall(text) if lang == "zh" else [w.lower() for w in _WORD.findall(text)]


def max_ngram_repeats(text: str, n: int, lang: str = "en") -> tuple[int, str]:
    """(how often the most frequent n-gram occurs, that n-gram)."""
    u = units(text, lang)
    if len(u) < n:
        return 0, ""
    counts = Counter(tuple(u[i : i + n]) for i in range(len(u) - n + 1))
    gram, k = counts.most_common(1)[0]
    return k, ("" if lang == "zh" else " ").join(gram)


def new_text_repeats(before: str, new: str, n: int, lang: str = "en") -> int:
    """How often the new text's most repeated n-gram occurs in `before` + `new` (1 = no repeat at all)."""
    grams = lambda u: [tuple(u[i : i + n]) for i in range(len(u) - n + 1)]  # noqa: E731
    fresh = Counter(grams(units(new, lang)))
    if not fresh:
        return 0
    seen = Counter(grams(units(before, lang)))
    return max(k + seen[g] for g, k in fresh.items())


def default_n(lang: str) -> int:
    """10-gram over words for en, 13-gram over characters/ASCII runs for zh (Self-Lengthen)."""
    return 13 if lang == "zh" else 10


def trim_to_sentence(text: str, lang: str = "en", keep_at_least: float = 0.5) -> str:
    """Cut a text that stopped mid-sentence back to its last sentence end (if that keeps enough of it).

    A sentence end is a terminator, with the closing quotes and brackets after it, followed by white space (en) or
    by anything (zh, after a full-width terminator). A "." is no sentence end after a number ("3.5", "1.2.3"), a
    list number at the start of a line ("2."), a single letter ("A. B. Smith") or a common abbreviation ("e.g.",
    "Dr."), so a cut never leaves such a fragment as if it were a whole sentence."""
    t = text.rstrip()
    if ends_sentence(t, lang):
        return t
    ends = [m.end() for m in _SENTENCE_END.finditer(t) if not _false_end(t, m.start())]
    if lang == "zh":
        ends += [m.end() for m in _ZH_END.finditer(t)]
    cut = max(ends, default=0)
    if cut and cut >= keep_at_least * len(t):
        return t[:cut].rstrip()
    return t


def _false_end(text: str, at: int) -> bool:
    """Whether the "." at `at` ends a word that is not a sentence's last: a single letter, an abbreviation, or a
    list number that opens its line."""
    if text[at] != ".":
        return False
    start = at
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:at].strip("\"'([{“‘").lower()
    if len(word) == 1 and word.isalpha() or word in ABBREVIATIONS:
        return True
    line_start = text.rfind("\n", 0, start) + 1
    return word.isdigit() and not text[line_start:start].strip()


# a terminator (and closing quotes/brackets) followed by whitespace: the end of a sentence inside a text
_SENTENCE_END = re.compile(r"[.!?。！？]+[\"')\]}»”’」』）】]*(?=\s)")
_ZH_END = re.compile(r"[。！？]+[”’」』）】\"')]*")

# A label is a label word, a number (digits, upper-case Roman numerals) and a separator (":", ".", "-", "—",
# "–", the end of a bold run, or the end of the line) followed by white space. The number is matched atomically,
# so "Section 2.3 explains" cannot give up ".3" to find a separator, and the white space after the separator
# keeps "Part 3:30 pm", "Part I-beams", "Step 1 **bold**" and "Part X-ray" whole. "Part of...", "Stepping
# back...", "Particularly..." have no number and are text, not labels.
_NUM = r"(?>\d+(?:\.\d+)*|(?-i:(?=[IVX])X{0,3}(?:IX|IV|V?I{0,3})))"  # Roman numerals I..XXXIX only
_LABEL_EN = re.compile(
    r"(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*(?:paragraph|step|part|section)[ \t]+" + _NUM
    + r"(?:[ \t]*[:.\-—–](?:\*\*|__)?(?=\s)|[ \t]*(?:\*\*|__)[ \t]*[:.\-—–]?(?=\s)|[ \t]*(?=\n))[ \t]*",
    re.I,
)
_ZH_NUM = r"[0-9一二三四五六七八九十百]+"
# zh labels end in a colon (full-width or not) or the end of the line; "、" enumerates ("第一步、第二步") and "."
# ends sentences, so neither makes a label
_LABEL_ZH = re.compile(
    r"(?:#{1,6}[ \t]*)?(?:\*\*)?(?:第" + _ZH_NUM + r"(?:段|部分|步)|段落" + _ZH_NUM + r")"
    + r"(?:\*\*)?(?:(?:：|:(?![0-9]))(?:\*\*)?|(?=\n))[ \t]*"
)


def strip_step_label(text: str) -> str:
    """Remove a leading "Paragraph 2:" / "**Step 3** -" / "Part IV." / "第3段：" label the model adds.

    A text that does not start with a label comes back unchanged, character for character; a label is removed
    whole, with the blank space after it, and never part of a word (tests/test_text_edits.py)."""
    body = text.lstrip()
    for label in (_LABEL_EN, _LABEL_ZH):
        m = label.match(body)
        if m:
            rest = body[m.end():].lstrip()
            # "**Step 1: Gather materials**": the label opened a bold run that its title closes; keep the title
            # bold instead of leaving a stray "**"
            for mark in ("**", "__"):
                if m.group(0).count(mark) % 2 and mark in rest.split("\n", 1)[0]:
                    rest = mark + rest
            return rest
    return text


META_WORDS = ("revised", "version", "paragraph", "rewrite", "rewritten", "expanded", "word count", "here is")


def meta_word_lines(text: str, first: int = 2, last: int = 3) -> list[str]:
    """Lines among the first/last few that talk about the text instead of being it (en)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    picked = lines[:first] + lines[-last:] if len(lines) > first + last else lines
    return [ln for ln in picked if any(w in ln.lower() for w in META_WORDS)]


def response_check(text: str, lang: str = "en", n: int | None = None) -> str | None:
    """Self-Lengthen's response check: None when the text passes, else the reason it is rejected.

    It must end a sentence, repeat no n-gram (10 words for en, 13 units for zh) and, for en, not talk about
    itself ("revised", "version", "paragraph"...) in its first 2 or last 3 lines.
    """
    if not text.strip():
        return "empty response"
    if not ends_sentence(text, lang):
        return f"no sentence ending: ends with {text.rstrip()[-20:]!r}"
    n = n or default_n(lang)
    reps, gram = max_ngram_repeats(text, n, lang)
    if reps > 1:
        return f"repeated {n}-gram ({reps}x): {gram[:80]!r}"
    if lang != "zh":
        meta = meta_word_lines(text)
        if meta:
            return f"meta words: {meta[0][:80]!r}"
    return None


def drop_short(lengths: list[int], rng) -> list[bool]:
    """Self-Lengthen's drop_short: which items to keep, favouring long ones.

    rank = 1 - (index of the item's length in the ascending order) / N; keep when random() > 2 rank^3. The
    shortest ~20.6% are always dropped (2 rank^3 >= 1) and ~59.5% are kept overall.
    """
    order = sorted(lengths)
    first = {}
    for i, n in enumerate(order):
        first.setdefault(n, i)  # ties share the rank of their first occurrence, as in the reference
    return [rng.random() > 2 * (1 - first[n] / len(order)) ** 3 for n in lengths]
