"""End a generation at the first sentence end once its `min_tokens` are out (`Request.end_at_sentence`).

A budgeted step of a small model rarely emits end-of-sequence inside its [min_tokens, max_tokens] window: it runs
to the limit and is cut mid-sentence, then trimmed. Ending at the first sentence end after the minimum gives a
whole sentence and a natural `finish_reason = stop`; the terminator stays in the text.

A "." is no sentence end after a digit ("3.5" would be cut), a single letter ("A. B. Smith") or a common
abbreviation ("e.g.", "Dr.", "Inc.", "et al."), as in `checks.trim_to_sentence`; nor is any terminator while
a quotation or bracket the output opened is still open. Straight double quotes have no direction: an odd count
is an open quotation only when the last one opens (white space or a bracket before it, a character after it), so
a stray closing quote or an inch mark does not keep a step from ever ending. The engine checks the output
generated so far, so a quotation opened in a prefilled part is not seen (a continuation's first sentence end
may fall inside it).

`ABBREVIATIONS` is the one list of abbreviations: `methods.shared.checks` trims with it too.
"""

from __future__ import annotations

import re

_END = re.compile(r"(?:[.!?]|[。！？])[\"'”’)\]»」』）】]*$")
_WORD_BEFORE = re.compile(r"(\w+)\.[\"'”’)\]»」』）】]*$")
ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "st", "prof", "no", "fig", "approx",
                  "inc", "ltd", "jr", "sr", "co", "al", "vol", "ch", "sec", "pp", "p", "u.s", "u.k", "mt", "ft"}
# pairs whose opening half, left open, means the sentence goes on inside a quotation or bracket
_PAIRS = (("“", "”"), ("‘", "’"), ("「", "」"), ("『", "』"), ("（", "）"), ("(", ")"), ("«", "»"))


def ends_sentence(text: str) -> bool:
    """True when `text` ends with a sentence terminator that is not part of a number, initial or abbreviation,
    and closes every quotation it opened (an end inside "He said “go." would drop the closing quote)."""
    if not _END.search(text):
        return False
    if _open_straight_quote(text) or any(text.count(a) > text.count(b) for a, b in _PAIRS):
        return False
    m = _WORD_BEFORE.search(text)
    if m:
        word = m.group(1)
        if word[-1].isdigit() or len(word) == 1 or word.lower() in ABBREVIATIONS:
            return False
        if text[: m.end(1)].lower().endswith(("e.g", "i.e", "u.s", "u.k")):
            return False
    return True


_OPENING = re.compile(r'(?:^|[\s(\[{])"(?=\S)')


def _open_straight_quote(text: str) -> bool:
    """An odd number of '"' whose last one opens a quotation (a closing one or an inch mark does not)."""
    if text.count('"') % 2 == 0:
        return False
    last = text.rfind('"')
    return bool(_OPENING.match(text, max(0, last - 1))) if last else text[1:2].strip() != ""
