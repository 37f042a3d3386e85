"""End a generation at the first sentence end once its `min_tokens` are out (`Request.end_at_sentence`).

A budgeted step of a small model rarely emits end-of-sequence inside its [min_tokens, max_tokens] window: it runs
to the limit and is cut mid-sentence, then trimmed. Ending at the first sentence end after the minimum gives a
whole sentence and a natural `finish_reason = stop`; the terminator stays in the text.

A "." is no sentence end after a digit ("3.5" would be cut), a single letter ("A. B. Smith") or a common
abbreviation ("e.g.", "Dr."), the same rules as `checks.trim_to_sentence`.
"""

from __future__ import annotations

import re

_END = re.compile(r"(?:[.!?]|[。！？])[\"'”’)\]»」』）】]*$")
_WORD_BEFORE = re.compile(r"(\w+)\.[\"'”’)\]»」』）】]*$")
_ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "st", "prof", "no", "fig", "approx"}


def ends_sentence(text: str) -> bool:
    """True when `text` ends with a sentence terminator that is not part of a number, initial or abbreviation."""
    if not _END.search(text):
        return False
    m = _WORD_BEFORE.search(text)
    if m:
        word = m.group(1)
        if word[-1].isdigit() or len(word) == 1 or word.lower() in _ABBREVIATIONS:
            return False
        if text[: m.end(1)].lower().endswith(("e.g", "i.e")):
            return False
    return True
