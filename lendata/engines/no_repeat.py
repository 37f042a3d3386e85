"""No-repeat-n-gram decoding: a token that would complete an n-gram already present in the prompt or the output
is never sampled (Hugging Face's `no_repeat_ngram_size`, over prompt and output as there).

Small models fall into loops in long text; detecting a loop afterwards costs a resample of the whole paragraph,
often several. Banning the loop while decoding costs one dictionary lookup per token. The prompt counts because
AgentWrite's prompt holds the text written so far: a paragraph that copies an earlier one is a loop too.
"""

from __future__ import annotations

from collections.abc import Sequence


class NoRepeatNgram:
    """Incremental index of a growing token sequence: `banned(tokens)` -> the tokens that may not come next."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"no_repeat_ngram must be >= 1, got {n}")
        self.n = n
        self._seen: dict[tuple[int, ...], set[int]] = {}
        self._indexed = 0  # the n-grams ending before this position are in `_seen`

    def banned(self, tokens: Sequence[int]) -> list[int]:
        """`tokens`: the whole sequence so far, which only grows between calls (one instance per request)."""
        n = self.n
        seq = [int(t) for t in tokens[max(0, self._indexed - n) :]]
        offset = max(0, self._indexed - n)
        for end in range(max(self._indexed, n), offset + len(seq) + 1):
            self._seen.setdefault(tuple(seq[end - n - offset : end - 1 - offset]), set()).add(seq[end - 1 - offset])
        self._indexed = offset + len(seq)
        if self._indexed < n - 1:
            return []
        return sorted(self._seen.get(tuple(seq[len(seq) - n + 1 :]) if n > 1 else (), ()))
