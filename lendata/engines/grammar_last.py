"""Grammar-constrained sampling that checks the grammar on the sampled token first (llama.cpp's own way).

llama-cpp-python puts the grammar sampler in the chain before top-k, so every token of a JSON plan runs the
grammar over the whole vocabulary (49,152 tokens for SmolLM2): measured here, plans decoded at ~22 tok/s
against ~50 tok/s for free text. llama.cpp's `common_sampler_sample` does it the other way round: sample with
the chain, check the one sampled token against the grammar, and only when the grammar rejects it apply the
grammar to the whole vocabulary and sample again. `GrammarLast` does that with llama-cpp-python's own chains:

- `free`: the chain without the grammar (logits processors, penalties, top-k, ..., dist) samples first;
- `check`: a grammar sampler applied to that one token;
- `full`: the stock chain with the grammar in llama-cpp-python's place samples again when `check` rejects.

Every accepted token is accepted by all three, so the penalties and the grammar state stay in step (state a
sampler changes while sampling, as mirostat's, would not: lendata never turns mirostat on). When the grammar and
the logits processors together leave no finite token, the request fails with an error instead of handing
llama.cpp a token it aborts on.
Deviation from the stock sampler, deliberate: the distribution over valid tokens differs (a token the chain
picks and the grammar allows is kept; the stock chain renormalises over valid tokens before top-k). Greedy
decoding (temperature 0) picks the same tokens as the stock chain: the most likely token is either valid, and
then also the most likely valid token, or rejected, and then `full` picks the most likely valid token.
The engine names this sampler in its identity (`base.JSON_SAMPLING`), which enters the cache keys of JSON
requests only, so cached plans of the stock sampler are not replayed and cached free text keeps its keys.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

import numpy as np

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarLast:
    """Duck-types llama-cpp-python's `LlamaSampler` (`sample(ctx, idx)`), which is all `Llama.sample` calls."""

    def __init__(self, free: Any, full: Any, vocab: Any, grammar: Any, n_vocab: int, stats: dict[str, int]):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.free, self.full = free, full  # LlamaSampler objects: they own their chains and custom samplers
        self.check = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self.check:
            raise ValueError("llama.cpp could not parse the grammar")
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._all = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        # running totals the engine reports: tokens sampled, and how many of them the grammar rejected (those
        # were sampled again over the whole vocabulary)
        self.stats = stats

    def _array(self, buf: np.ndarray) -> Any:
        lc = self._llama_cpp
        return lc.llama_token_data_array(
            data=buf.ctypes.data_as(lc.llama_token_data_p), size=len(buf), selected=-1, sorted=False)

    def _sample_with(self, chain: Any, logits: np.ndarray) -> tuple[int, float]:
        """(the token `chain` picks, its logit after the chain)."""
        self._all["id"] = self._ids
        self._all["logit"] = logits
        self._all["p"] = 0.0
        arr = self._array(self._all)
        self._llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError("llama.cpp's sampler chain selected no token")
        chosen = arr.data[arr.selected]  # samplers sort in place: read through the array, not the ids
        return int(chosen.id), float(chosen.logit)

    def _allowed(self, token: int, logit: float) -> bool:
        self._one["id"], self._one["logit"], self._one["p"] = token, logit, 0.0
        arr = self._array(self._one)
        self._llama_cpp.llama_sampler_apply(self.check, ctypes.byref(arr))
        return bool(np.isfinite(self._one["logit"][0]))

    def sample(self, ctx: Any, idx: int = -1) -> int:
        lc = self._llama_cpp
        ptr = lc.llama_get_logits_ith(ctx.ctx, idx)
        if not ptr:
            raise RuntimeError(f"llama.cpp has no logits at index {idx}")
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        token, _ = self._sample_with(self.free, logits)
        self.stats["sampled"] += 1
        if not self._allowed(token, float(logits[token])):
            self.stats["resampled"] += 1
            token, logit = self._sample_with(self.full, logits)
            if not np.isfinite(logit):  # accepting it would abort the process in llama.cpp: a row's error
                raise RuntimeError("the grammar and the logits processors leave no token to sample")
        for sampler in (self.free.sampler, self.full.sampler, self.check):
            lc.llama_sampler_accept(sampler, token)
        return token

    def close(self) -> None:
        check, self.check = getattr(self, "check", None), None
        if check:
            self._llama_cpp.llama_sampler_free(check)

    def __del__(self) -> None:  # at interpreter exit the bindings may be gone already
        with contextlib.suppress(Exception):
            self.close()


def llama_class() -> type:
    """llama-cpp-python's `Llama`, with `GrammarLast` in place of its chain whenever a grammar is given."""
    from llama_cpp import Llama

    class GrammarLastLlama(Llama):
        def __init__(self, *args: Any, **kwargs: Any):
            self.grammar_stats = {"sampled": 0, "resampled": 0}
            super().__init__(*args, **kwargs)

        def _init_sampler(self, *args: Any, grammar: Any = None, **kwargs: Any) -> Any:
            if grammar is None:
                return super()._init_sampler(*args, **kwargs)
            free = super()._init_sampler(*args, grammar=None, **kwargs)
            full = super()._init_sampler(*args, grammar=grammar, **kwargs)
            return GrammarLast(free, full, self._model.vocab, grammar, self._n_vocab, self.grammar_stats)

    return GrammarLastLlama
