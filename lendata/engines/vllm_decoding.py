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

On vLLM's CPU build the same processor also applies each row's repetition penalty and top-k/top-p (the engine
then sends vLLM neutral values, so vLLM's sampler skips them). vLLM's CPU sampler sorts the whole vocabulary
of every row at every step for top-p and rebuilds prompt and output masks over the vocabulary for the penalty:
on this machine top-p 0.95 alone took decoding from about 170 to 100 tokens/s (16 rows of the bundled model),
a repetition penalty of 1.2 on top to 70-80. Here the nucleus is cut from a `topk` of the row (widened once,
then a sort of the row when the row is flat) and the penalty touches only the ids the row has seen.

Deviation from vLLM's sampler: the same rule, the same penalized values (vLLM's float operations) and the same
number of kept tokens, tested against vLLM's own ops; but which members of a group of equal logits survive at
the nucleus's edge is an order vLLM's unstable sort leaves open, and with bf16 logits such groups are common in
the tail. vLLM's seeded draw then picks the same token unless it lands on such an edge token (rare: edge tokens
hold the least mass), or on the edge token of a flat row, where vLLM's float32 sum of up to the whole
vocabulary's masses (from the bottom) and this float64 sum of the kept ones (from the top) can round to different
sides of top_p.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from lendata.engines.base import Request
from lendata.engines.no_repeat import NoRepeatNgram, vocabulary_bytes, word_keys
from lendata.engines.sentence_end import SentenceReader

EXTRA_ARGS_KEY = "lendata"
FQCN = f"{__name__}:LendataDecoding"


# vLLM's _SAMPLING_EPS: a row below it is decoded greedily, without top-k/top-p. vLLM raises any temperature in
# (0, 0.01) to 0.01 before this, so only 0 is greedy; the processor reads the temperature vLLM settled on
GREEDY = 1e-5


def sampling_moved(req: Request, sampling: bool = True, window: bool = True) -> bool:
    """Whether the processor has sampling work for this row: a penalty wherever the processor runs (`window`;
    vLLM's own counts the prompt and all the output, where Request.repetition_window asks for the last tokens
    written), and with `sampling` (the CPU build) a top-p cut of a sampled row."""
    return (window and req.repetition_penalty != 1.0) or (sampling and req.top_p < 1.0 and req.temperature > 0)


def _moves_top_p(req: Request, sampling: bool) -> bool:
    """Whether top-k/top-p go to the processor: on the CPU build (`sampling`), for a row that cuts a nucleus
    or a greedy row (vLLM ignores both for it anyway)."""
    return sampling and (req.top_p < 1.0 or req.temperature == 0)


def decoding_args(req: Request, prefill_tokens: int, sampling: bool = False,
                  window: bool = True) -> dict[str, Any] | None:
    """What a request's row needs from the processor (None: nothing; the row then costs nothing): the
    no-repeat and sentence-end rules, the row's repetition penalty over its window (`window`: the processor
    runs), and with `sampling` its top-k/top-p; vLLM then gets neutral values (`vllm_sampling_params`)."""
    sampling = sampling and window  # top-p comes here only where the penalty does too: vLLM's order
    moved = sampling_moved(req, sampling, window)
    if not req.no_repeat_ngram and not req.end_at_sentence and not moved:
        return None
    top_p = _moves_top_p(req, sampling) and req.top_p < 1.0
    return {EXTRA_ARGS_KEY: {
        "no_repeat_ngram": req.no_repeat_ngram, "output_only": req.no_repeat_scope == "output",
        "prefill_tokens": prefill_tokens, "end_at_sentence": req.end_at_sentence, "min_tokens": req.min_tokens,
        "prefill": req.prefill or "",
        **({"sampling": {"top_p": req.top_p if top_p else 1.0,
                         # top-k stays with vLLM unless top-p comes here (vLLM cuts top-p within the top-k)
                         "top_k": int(req.top_k or 0) if top_p else 0,
                         "repetition_penalty": req.repetition_penalty if window else 1.0,
                         "repetition_window": req.repetition_window}} if moved else {}),
    }}


def vllm_sampling_params(req: Request, sampling: bool, window: bool = True) -> dict[str, Any]:
    """vLLM's own top_p/top_k/repetition_penalty for the row: neutral where the processor applies them (the
    penalty wherever the processor runs, `window`: vLLM's has no window)."""
    sampling = sampling and window  # as in decoding_args
    own = {"top_p": req.top_p, "repetition_penalty": 1.0 if window else req.repetition_penalty,
           **({"top_k": req.top_k} if req.top_k is not None else {})}  # 0 = off, as in vLLM
    if sampling_moved(req, sampling, window) and _moves_top_p(req, sampling):
        own.update(top_p=1.0, top_k=0)
    return own


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """vLLM's repetition penalty on the ids in `seen`, in place, with vLLM's float operations (a positive logit
    times the penalty's reciprocal, a negative one times the penalty), so the values are vLLM's bit for bit."""
    if penalty == 1.0 or seen.numel() == 0:
        return
    pen = torch.tensor(penalty, dtype=logits.dtype)
    values = logits[seen]
    logits[seen] = values * torch.where(values > 0, 1.0 / pen, pen)


def filter_row(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The row with every token vLLM's top-k/top-p would drop set to -inf (vLLM applies the temperature and draws
    afterwards). vLLM's rule: at `temperature`, keep the top_k likeliest (ties at the k-th value too), then
    from the likeliest down every token while the mass before it is under top_p (the first always)."""
    vocab = logits.shape[-1]
    if temperature < GREEDY or (top_p >= 1.0 and not 0 < top_k < vocab):
        return logits
    scaled = logits / torch.tensor(temperature, dtype=logits.dtype)
    finite = int(torch.isfinite(scaled).sum())
    if finite == 0:
        return logits
    if 0 < top_k < finite:
        kth = torch.topk(scaled, top_k).values[-1]
        ids = (scaled >= kth).nonzero().squeeze(1)  # ties at the k-th value stay, as in vLLM
        values, order = scaled[ids].sort(descending=True)
        ids, probs = ids[order], torch.softmax(values.double(), 0)
    elif top_p >= 1.0:  # a top-k at or past the finite tokens (a grammar's mask) and no top-p: all of them
        return logits
    else:  # (a top-k at or past the finite tokens keeps them all: vLLM's cut is then -inf)
        # float64: a float32 sum of a flat row's 37,000 kept masses erred by 7e-5 at the edge
        total = torch.logsumexp(scaled.double(), 0)
        for width in (256, 2048, finite):  # the likeliest first; a flat row: one sort of its finite tokens
            values, ids = torch.topk(scaled, min(finite, width))
            probs = torch.exp(values.double() - total)
            if width >= finite or float(probs.sum()) >= top_p:
                break
    if top_p < 1.0:
        before = torch.cumsum(probs, 0) - probs
        keep = (1 - before) > (1 - top_p)  # vLLM's comparison, from the top
        keep[0] = True
        ids = ids[keep]
    out = torch.full_like(logits, -float("inf"))
    out[ids] = logits[ids]
    return out


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
        sampling = opts.get("sampling")
        if sampling is not None and not _valid_sampling(sampling):
            raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}]['sampling'] must hold 0 < top_p <= 1, an integer "
                             f"top_k >= 0, a finite repetition_penalty > 0 and an integer repetition_window >= 1, "
                             f"got {sampling!r}")

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
        # a row that only samples here needs no vocabulary (and no tokenizer load)
        rules = opts.get("no_repeat_ngram") or opts.get("end_at_sentence")
        return _Row(opts, *(self.vocabulary() if rules else ([], None, {})), sorted(params.all_stop_token_ids),
                    params.temperature)  # as vLLM settled it (a temperature under 0.01 is raised to 0.01)


def _valid_sampling(sampling: Any) -> bool:
    if not isinstance(sampling, dict):
        return False
    top_p, top_k, penalty = sampling.get("top_p"), sampling.get("top_k"), sampling.get("repetition_penalty")
    window = sampling.get("repetition_window", 64)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (top_p, penalty))
    return (numbers and 0 < top_p <= 1 and math.isfinite(penalty) and penalty > 0
            and all(isinstance(v, int) and not isinstance(v, bool) for v in (top_k, window))
            and top_k >= 0 and window >= 1)


class _Row:
    """One request's rules over its logits row; vLLM calls it before each sampled token with the prompt's ids
    and the live list of output ids."""

    def __init__(self, opts: dict[str, Any], pieces: list[bytes], keys: Any, members: dict[int, list[int]],
                 stop_ids: list[int], temperature: float = 0.0):
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
        sampling = opts.get("sampling") or {}
        self.temperature, self.top_p = float(temperature), float(sampling.get("top_p", 1))
        self.top_k, self.penalty = int(sampling.get("top_k", 0)), float(sampling.get("repetition_penalty", 1))
        # the penalty's window: the last `window` output ids (Request.repetition_window), with their counts
        self.window = max(1, int(sampling.get("repetition_window", 64)))
        self.recent: deque[int] = deque()
        self.in_window: Counter[int] = Counter()
        self.seen_ids = torch.empty(0, dtype=torch.long)

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
        self._see(new, logits.shape[-1])
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
        # vLLM's order: processors, then the penalty, then the temperature and top-k/top-p
        penalize(logits, self.seen_ids, self.penalty)
        return filter_row(logits, self.temperature, self.top_k, self.top_p)

    def _see(self, ids: list[int], vocab: int) -> None:
        """Slide the penalty's window over the new output ids."""
        if self.penalty == 1.0 or not ids:
            return
        for t in ids:
            self.recent.append(t)
            self.in_window[t] += 1
            if len(self.recent) > self.window:
                old = self.recent.popleft()
                self.in_window[old] -= 1
                if not self.in_window[old]:
                    del self.in_window[old]
        self.seen_ids = torch.tensor(sorted(t for t in self.in_window if 0 <= t < vocab), dtype=torch.long)
