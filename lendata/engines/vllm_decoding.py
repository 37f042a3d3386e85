"""`no_repeat_ngram` and `end_at_sentence` inside vLLM: one logits processor of vLLM's V1 interface that runs,
on each row that asks, the rules the llama.cpp engine runs (engines/no_repeat.py: the word-key n-gram ban;
engines/sentence_end.py: end at the first sentence end after the minimum).

vLLM loads it by name in its engine process (`LLM(logits_processors=[FQCN])`, set by the vllm engine); a
request carries its options in `SamplingParams.extra_args["lendata"]` (`decoding_args`). The vocabulary's
bytes come from the model's `tokenizers` file, read once per engine process on the first row that asks
(no_repeat.vocabulary_bytes: byte for byte what llama.cpp detokenizes for the bundled model).

Deviation from the llama.cpp engine: vLLM hands a processor the prompt's token ids as vLLM rendered them, so the
"all" scope indexes exactly what the model saw; the "output" scope of a continuation starts `prefill_tokens`
before the end of the prompt, the prefill tokenized on its own (the same approximation the llama.cpp engine
makes).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from lendata.engines.base import Request
from lendata.engines.no_repeat import NoRepeatNgram, vocabulary_bytes, word_keys
from lendata.engines.sentence_end import SentenceReader

EXTRA_ARGS_KEY = "lendata"
FQCN = f"{__name__}:LendataDecoding"


def decoding_args(req: Request, prefill_tokens: int) -> dict[str, Any] | None:
    """What a request's row needs from the processor (None: nothing; the row then costs nothing)."""
    if not req.no_repeat_ngram and not req.end_at_sentence:
        return None
    return {EXTRA_ARGS_KEY: {
        "no_repeat_ngram": req.no_repeat_ngram, "output_only": req.no_repeat_scope == "output",
        "prefill_tokens": prefill_tokens, "end_at_sentence": req.end_at_sentence, "min_tokens": req.min_tokens,
        "prefill": req.prefill or "",
    }}


class LendataDecoding(AdapterLogitsProcessor):
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        self._model_config = vllm_config.model_config
        self._vocabulary: tuple[list[bytes], Any, dict[int, list[int]]] | None = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """At admission, so a malformed request fails alone instead of inside the engine's step."""
        opts = (sampling_params.extra_args or {}).get(EXTRA_ARGS_KEY)
        if opts is None:
            return
        if not isinstance(opts, dict) or int(opts.get("no_repeat_ngram") or 0) < 0:
            raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] must be lendata's decoding arguments, got {opts!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # both rules change which token is likeliest

    def vocabulary(self) -> tuple[list[bytes], Any, dict[int, list[int]]]:
        if self._vocabulary is None:
            from transformers import AutoTokenizer

            cfg = self._model_config
            tok = AutoTokenizer.from_pretrained(cfg.tokenizer, revision=cfg.tokenizer_revision,
                                                trust_remote_code=cfg.trust_remote_code)
            if not hasattr(tok, "backend_tokenizer"):
                raise RuntimeError(f"no_repeat_ngram/end_at_sentence on vLLM need a fast (tokenizers) tokenizer; "
                                   f"{cfg.tokenizer} has none")
            pieces = vocabulary_bytes(tok.backend_tokenizer)
            self._vocabulary = (pieces, *word_keys(pieces))
        return self._vocabulary

    def new_req_logits_processor(self, params: Any) -> Any:
        opts = (params.extra_args or {}).get(EXTRA_ARGS_KEY)
        if not opts:
            return None
        return _Row(opts, *self.vocabulary(), sorted(params.all_stop_token_ids))


class _Row:
    """One request's rules over its logits row; vLLM calls it before each sampled token with the prompt's ids
    and the live list of output ids."""

    def __init__(self, opts: dict[str, Any], pieces: list[bytes], keys: Any, members: dict[int, list[int]],
                 stop_ids: list[int]):
        n = int(opts.get("no_repeat_ngram") or 0)
        self.ban = NoRepeatNgram(n, keys, members) if n else None
        self.output_only, self.prefill_tokens = bool(opts.get("output_only")), int(opts.get("prefill_tokens") or 0)
        self.reader = (SentenceReader(int(opts.get("min_tokens") or 0), opts.get("prefill") or "")
                       if opts.get("end_at_sentence") else None)
        self.pieces = pieces
        # llama.cpp's processor leaves only its end-of-sequence token; vLLM stops on any of the request's stop
        # tokens (end of turn, end of text), so all of them stay possible
        self.stop = stop_ids
        self.read: int | None = None  # output ids consumed so far (None: the prompt is not indexed yet)

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self.read is None:
            if self.ban is not None:
                start = max(0, len(prompt_ids) - self.prefill_tokens) if self.output_only else 0
                self.ban.extend(prompt_ids[start:])
            self.read = 0
        new = list(output_ids[self.read:])
        if -1 in new:  # a placeholder of a token not sampled yet (async scheduling): read up to it
            new = new[:new.index(-1)]
        self.read += len(new)
        # ids past the tokenizer (a model's padded vocabulary) have no text: no word key, nothing to read
        known = [t for t in new if t < len(self.pieces)]
        if self.ban is not None:
            self.ban.extend(known)
            banned = [t for t in self.ban.following() if t < logits.shape[-1]]
            if banned:
                kept = logits[banned].clone()
                logits[banned] = -float("inf")
                if not torch.isfinite(logits).any():  # a grammar allowed only banned tokens: a repeat, not NaN
                    logits[banned] = kept
        if self.reader is not None:
            for t in known:
                self.reader.add(self.pieces[t])
            if self.stop and self.reader.due(self.read):
                stop = logits[self.stop].clone()
                logits.fill_(-float("inf"))
                logits[self.stop] = torch.where(torch.isfinite(stop), stop, torch.zeros_like(stop))
        return logits
