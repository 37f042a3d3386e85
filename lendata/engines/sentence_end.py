"""End a generation at the first sentence end once its `min_tokens` are out (`Request.end_at_sentence`).

A budgeted step of a small model rarely emits end-of-sequence inside its [min_tokens, max_tokens] window: it runs
to the limit and is cut mid-sentence, then trimmed. Ending at the first sentence end after the minimum gives a
whole sentence and a natural `finish_reason = stop`; the terminator stays in the text.

A "." is no sentence end after a digit ("3.5" would be cut), a single letter ("A. B. Smith") or a common
abbreviation ("e.g.", "Dr.", "Inc.", "et al."), as in `checks.trim_to_sentence`; nor is any terminator while
a quotation or bracket the output opened is still open. Straight double quotes have no direction: an odd count
is an open quotation unless the last one closes (right after a Latin word, a digit or a clause's end), so a stray
closing quote or an inch mark does not keep a step from ever ending. The engine checks the prefilled text and the output
together, so a continuation does not end inside a quotation opened before the cut, nor on the "." after a cut
"3" (of "3.5").

`SENTENCE_RULE` versions this rule: it is part of a request's cache key, so text made under an older rule is
not replayed as if made under this one.

`ABBREVIATIONS` is the one list of abbreviations: `methods.shared.checks` trims with it too.
"""

from __future__ import annotations

import re

_TERMINATORS = ".!?。！？"
_CLOSERS = "\"'”’)]»」』）】"  # quotes and brackets that may follow a terminator
# the last character of any text `ends_sentence` accepts (an engine skips the rule after any other token)
ENDING_CHARS = _TERMINATORS + _CLOSERS
_END = re.compile(f"[{re.escape(_TERMINATORS)}][{re.escape(_CLOSERS)}]*$")
_WORD_BEFORE = re.compile(f"(\\w+)\\.[{re.escape(_CLOSERS)}]*$")
SENTENCE_RULE = 2  # 2: straight quotes by direction, the prefill counts (issue 19, second pass)
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


# what a closing straight quote follows: the end of a word, a number (an inch mark) or a clause
_CLOSES_AFTER = set(".,!?;…)]}’”'")


def _open_straight_quote(text: str) -> bool:
    """An odd number of '"' whose last one opens a quotation. A quote closes only right after a Latin word
    character, a digit or a clause's end; after white space, ":", a dash, a CJK character or at the start it
    opens (Chinese puts no space before its quotes)."""
    if text.count('"') % 2 == 0:
        return False
    last = text.rfind('"')
    before = text[last - 1] if last else ""
    closes = before.isascii() and before.isalnum() or before in _CLOSES_AFTER
    return not closes


class SentenceReader:
    """An output read as it is generated, for `end_at_sentence` in any engine's logits processor: `add` each new
    token's bytes; `due(generated)` says whether only end-of-sequence may follow (at least `min_tokens` and one
    token generated, and the text ends a sentence). A continuation's sentence began in its prefilled text: "3"
    + "." is no end, nor is a quotation the prefill left open. The rule itself runs only after a byte that can
    end a sentence."""

    _ENDERS = tuple(c.encode() for c in ENDING_CHARS)

    def __init__(self, min_tokens: int, prefill: str = ""):
        self.min_tokens = max(1, min_tokens)
        self.out = bytearray(prefill.encode())

    def add(self, piece: bytes) -> None:
        self.out += piece

    def due(self, generated: int) -> bool:
        return (generated >= self.min_tokens and self.out.rstrip().endswith(self._ENDERS)
                # the whole output so far: quotation marks opened early must be closed before the end
                and ends_sentence(self.out.decode("utf-8", errors="ignore")))
