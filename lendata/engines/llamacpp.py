"""The default engine: llama.cpp in-process on the CPU, with the bundled SmolLM2-135M.

llama.cpp runs one sequence at a time here, so a batch is a loop; what it adds over a plain call is the
contract: JSON-schema output through llama.cpp grammars (checked on the sampled token first, grammar_last.py),
`min_tokens` by suppressing end-of-sequence until
reached, and a prompt that does not fit the context window coming back as an error result.

LoRA adapters per request: a request's `lora` is a peft adapter folder (converted once to llama.cpp's LoRA GGUF
against this engine's weights, `lendata.training.gguf_lora`) or a LoRA GGUF file. Each adapter is loaded once
and set on the context before the requests that name it; the KV cache is cleared when the adapter changes, so
no prompt is continued from keys computed under another adapter.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lendata.engines.base import (
    DECODING_OPTIONS,
    JSON_SAMPLING,
    PENALTY_RULE,
    WINDOW_RULE,
    AdapterError,
    OnResult,
    Request,
    Result,
)
from lendata.engines.grammar_last import llama_class
from lendata.engines.kv_states import CHUNK, AlignedPrefill, KVStates, default_ram_mb
from lendata.engines.no_repeat import NoRepeatNgram, word_keys
from lendata.engines.sentence_end import SentenceReader
from lendata.models import BUNDLED_MODEL_ID, bundled_gguf_path, gguf_tokenizer_path


class _MinTokens:
    """Logits processor: end-of-sequence is impossible until `n` new tokens exist."""

    def __init__(self, n: int, eos_ids: Sequence[int]):
        self.n = n
        self.eos = list(eos_ids)
        self.start: int | None = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.start is None:
            self.start = len(input_ids)
        if len(input_ids) - self.start < self.n:
            scores[self.eos] = -np.inf
        return scores


class _NoRepeat:
    """Logits processor: the tokens that would repeat a word-key n-gram of the prompt and output so far (with
    `output_only`: of the assistant turn's text, a prefill and what is generated) are impossible (no_repeat.py:
    case, spaces and punctuation do not make a copy new)."""

    def __init__(self, n: int, keys: np.ndarray, members: dict[int, list[int]], output_only: bool = False,
                 prefill_tokens: int = 0):
        self.index = NoRepeatNgram(n, keys, members)
        self.output_only = output_only
        # the assistant turn's own text is the prefill (a continuation) and what is generated after it
        self.prefill_tokens = prefill_tokens
        self.start: int | None = None  # where the assistant turn's text begins

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.start is None:
            self.start = max(0, len(input_ids) - self.prefill_tokens) if self.output_only else 0
        banned = self.index.banned(input_ids[self.start:])
        if banned:
            scores[banned] = -np.inf
        return scores


class _EndAtSentence:
    """Logits processor: once `n` tokens are out and the output ends a sentence, only end-of-sequence remains
    (sentence_end.SentenceReader; one token detokenized per call, not the whole output again)."""

    def __init__(self, n: int, eos: int, detokenize, prefill: str = ""):
        self.eos, self.detokenize = eos, detokenize
        self.reader = SentenceReader(n, prefill)
        self.start: int | None = None
        self.seen = 0

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.start is None:
            self.start = self.seen = len(input_ids)
        new = [int(t) for t in input_ids[self.seen:]]
        self.seen = len(input_ids)
        if new:
            self.reader.add(self.detokenize(new))
        if self.reader.due(len(input_ids) - self.start):
            eos = scores[self.eos]
            scores[:] = -np.inf
            scores[self.eos] = eos if np.isfinite(eos) else 0.0
        return scores


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(
        self,
        model_path: str | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        model_id: str | None = None,
        tokenizer: str | None = None,
        kv_cache_mb: float | None = None,
        kv_disk_mb: float = 0,
        kv_disk_dir: str | None = None,
    ):
        path = Path(model_path) if model_path else bundled_gguf_path()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {path}")
        self.model_path = path
        self.model_id = model_id or (BUNDLED_MODEL_ID if model_path is None else path.name)
        # llama.cpp prints its load log to stderr from C; keep the console for lendata's own progress
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            self._llm = llama_class()(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads or os.cpu_count() or 2,
                verbose=False,
            )
        self.context_window = self._llm.n_ctx()
        self._eos = sorted({self._llm.token_eos(), *self._end_of_turn_ids()})
        self._tokenizer_path = tokenizer
        self._formatter = None
        self.n_ctx = n_ctx
        # prompts are evaluated in aligned chunks and their KV prefixes kept (kv_states.py): deterministic reuse
        self.kv_states = KVStates(default_ram_mb() if kv_cache_mb is None else kv_cache_mb, kv_disk_mb, kv_disk_dir)
        self._prefill = AlignedPrefill(self._llm, self.kv_states)
        self._word_keys: tuple[np.ndarray, dict[int, list[int]]] | None = None
        self._adapters: dict[str, Any] = {}  # lora path -> loaded llama.cpp adapter
        self._active_lora: str | None = None

    def identity(self) -> dict[str, Any]:
        """The weights by content (two GGUF files of one name are two models) and the options that change
        outputs: the context size (where long generations stop) and the chunking of prompt evaluation (which
        sets the last bits of the logits; the KV cache budget does not change outputs)."""
        from lendata.engines.identity import content_identity

        return {"engine": self.name, "weights": content_identity(self.model_path), "n_ctx": self.context_window,
                "prefill_chunk": CHUNK, JSON_SAMPLING: "sampled-token-first", PENALTY_RULE: WINDOW_RULE}

    @property
    def grammar_tokens(self) -> dict[str, int]:
        """Running totals of grammar-constrained sampling: tokens sampled, and how many of them the grammar
        rejected and were sampled again over the whole vocabulary (grammar_last.py)."""
        return dict(self._llm.grammar_stats)

    @property
    def word_keys(self) -> tuple[np.ndarray, dict[int, list[int]]]:
        """The vocabulary's word keys for `no_repeat_ngram` (no_repeat.word_keys), built on first use."""
        if self._word_keys is None:
            llm = self._llm
            self._word_keys = word_keys([llm.detokenize([t]) for t in range(llm.n_vocab())])
        return self._word_keys

    def _end_of_turn_ids(self) -> list[int]:
        ids = []
        for marker in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
            toks = self._llm.tokenize(marker.encode(), add_bos=False, special=True)
            if len(toks) == 1:
                ids.append(toks[0])
        return ids

    def _one(self, req: Request) -> Result:
        from llama_cpp import LogitsProcessorList

        try:
            switched = self._use_lora(req.lora)
        except Exception as e:
            raise AdapterError(f"LoRA adapter {req.lora} cannot be applied to {self.model_path.name}: "
                               f"{type(e).__name__}: {e}") from e
        kwargs = {}
        if req.json_schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": req.json_schema}
        processors = ([_MinTokens(req.min_tokens, self._eos)] if req.min_tokens > 0 else []) + (
            [_NoRepeat(req.no_repeat_ngram, *self.word_keys, output_only=req.no_repeat_scope == "output",
                       prefill_tokens=self._prefill_tokens(req))]
            if req.no_repeat_ngram else []) + (
            [_EndAtSentence(req.min_tokens, self._llm.token_eos(), self._llm.detokenize, req.prefill or "")]
            if req.end_at_sentence else [])
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        sampling = dict(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            **({"top_k": req.top_k} if req.top_k is not None else {}),  # llama.cpp reads 0 as off
            repeat_penalty=req.repetition_penalty,
            seed=req.seed if req.seed is not None else 0,
            stop=list(req.stop) or None,
            **kwargs,
        )
        # the penalty's window (Request.repetition_window): llama-cpp-python reads it when it builds each call's
        # sampler, whose penalty sees only the tokens this call samples, never the prompt
        # (past the context window the window is the whole output: no larger buffer is allocated)
        self._llm.last_n_tokens_size = min(req.repetition_window, self.context_window)
        reused_before = self.kv_states.reused_tokens
        if switched:  # keys computed under another adapter are never continued
            self._prefill.forget_live()
            self._prefill.lora = req.lora
        try:
            if req.prefill is not None:
                if req.json_schema is not None:
                    return Result.failed("a prefill request cannot also ask for JSON output")
                out = self._llm.create_completion(prompt=self._prefill_prompt(req), **sampling)
                out["choices"][0]["message"] = {"content": out["choices"][0]["text"]}
            else:
                out = self._llm.create_chat_completion(messages=list(req.messages), **sampling)
        except ValueError as e:  # llama-cpp-python raises ValueError when the prompt exceeds n_ctx
            return Result.failed(f"prompt does not fit the context window: {e}")
        except Exception as e:  # a per-row failure must not sink the batch
            return Result.failed(f"{type(e).__name__}: {e}")
        choice = out["choices"][0]
        reason = choice.get("finish_reason") or "stop"
        return Result(
            text=choice["message"].get("content") or "",
            prompt_tokens=out["usage"]["prompt_tokens"],
            completion_tokens=out["usage"]["completion_tokens"],
            finish_reason="length" if reason == "length" else "stop",
            prompt_cached_tokens=self.kv_states.reused_tokens - reused_before,  # a kept KV prefix (kv_states.py)
        )

    def _prefill_tokens(self, req: Request) -> int:
        """How many of the prompt's last tokens are the prefilled assistant text, for an output-scoped ban (the
        prompt is tokenized with special tokens read, as llama-cpp-python does; 0 when nothing needs it)."""
        if req.no_repeat_scope != "output" or not req.prefill:
            return 0
        return len(self._llm.tokenize(req.prefill.encode(), add_bos=False, special=True))

    def _use_lora(self, lora: str | None) -> bool:
        """Set `lora` (or none) on the context; True when that changed the adapter."""
        import llama_cpp

        if lora == self._active_lora:
            return False
        if lora and lora not in self._adapters:
            path = Path(lora)
            if path.is_dir():
                from lendata.models import lora_gguf

                path = lora_gguf(path, self.model_path)
            elif not path.is_file():
                raise FileNotFoundError(f"no LoRA adapter at {lora} (a peft adapter folder or a LoRA GGUF)")
            adapter = llama_cpp.llama_adapter_lora_init(self._llm._model.model, str(path).encode())
            if not adapter:
                raise RuntimeError(f"llama.cpp could not load {path} as a LoRA adapter of {self.model_path.name}")
            self._adapters[lora] = adapter
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[lora]) if lora else None
        scales = (ctypes.c_float * 1)(1.0) if lora else None
        if llama_cpp.llama_set_adapters_lora(self._llm._ctx.ctx, adapters, 1 if lora else 0, scales):
            raise RuntimeError(f"llama.cpp could not set LoRA adapter {lora}")
        self._active_lora = lora
        return True

    supports_lora = True  # peft folders (converted) or LoRA GGUFs, per request
    decoding_options = frozenset(DECODING_OPTIONS)  # logits processors above
    continues_prefill = True  # a chat ending on an assistant turn is rendered open and continued

    def training_base(self) -> Path:
        """The Hugging Face checkpoint the built-in LoRA trainer trains on: this engine's GGUF, dequantized."""
        from lendata.models import hf_checkpoint

        return hf_checkpoint(self.model_path)

    def _prefill_prompt(self, req: Request) -> str:
        """The chat template up to the assistant turn, then the prefill text the model is to continue."""
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            template = self._llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise RuntimeError(f"{self.model_path.name} has no chat template to continue a message in")
            text = self._llm._model.token_get_text  # the special tokens' spelling, as llama-cpp-python does
            self._formatter = Jinja2ChatFormatter(
                template, eos_token=text(self._llm.token_eos()), bos_token=text(self._llm.token_bos())
            )
        return self._formatter(messages=list(req.messages[:-1])).prompt + (req.prefill or "")

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]:
        results = []
        for i, req in enumerate(requests):
            res = self._one(req)
            results.append(res)
            if on_result:
                on_result(i, res)
        return results

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        from lendata.lengths import count_tokens

        tok = self._tokenizer_path or str(gguf_tokenizer_path(self.model_path))
        return count_tokens(texts, tok)

    @property
    def tokenizer(self) -> str:
        """What `count_tokens` counts with: the GGUF's own vocabulary (by the weights' content), or a file."""
        from lendata.engines.identity import content_identity, tokenizer_file

        if self._tokenizer_path:
            return tokenizer_file(self._tokenizer_path)
        return f"gguf:{Path(self.model_path).name}@sha256:{content_identity(self.model_path)[:16]}"

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        adapters, self._adapters = getattr(self, "_adapters", {}), {}
        states = getattr(self, "kv_states", None)
        if states is not None:
            states.clear()
        if llm is not None and adapters:  # adapters are freed before the model they belong to
            import llama_cpp

            with contextlib.suppress(Exception):
                llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
                for adapter in adapters.values():
                    llama_cpp.llama_adapter_lora_free(adapter)
        if llm is not None:
            with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
                llm.close()

    def __del__(self) -> None:  # llama-cpp-python's own __del__ raises at interpreter exit
        self.close()
