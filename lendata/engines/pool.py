"""The engines of one build (or of one shard), and what they were used for.

Roles or steps that name the same engine and options share one loaded engine and one response cache. `Usage`
is the one value a build report counts: calls sent, cache hits, tokens generated, summed over every engine of
the build and over shards that ran elsewhere with engines of their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lendata.engines.cache import CachedEngine


def _joined(*names: str) -> str:
    return "+".join(dict.fromkeys(part for name in names for part in name.split("+") if part))


@dataclass
class Usage:
    name: str = ""  # engine names, joined with "+" when a build used several
    model_id: str = ""
    calls: int = 0  # requests sent to an engine (not replayed from the cache)
    hits: int = 0  # requests replayed from the cache
    tokens: int = 0  # completion tokens generated
    tokenizer: str = ""  # what the engines count tokens with (their `tokenizer` identities, joined with "+")

    def __add__(self, other: Usage) -> Usage:
        return Usage(_joined(self.name, other.name), _joined(self.model_id, other.model_id), self.calls + other.calls,
                     self.hits + other.hits, self.tokens + other.tokens, _joined(self.tokenizer, other.tokenizer))

    @classmethod
    def of(cls, engine: CachedEngine) -> Usage:
        return cls(engine.name, engine.model_id, engine.calls, engine.hits, engine.tokens, engine.tokenizer)


class EnginePool:
    """Engines opened on first use by `opener(engine, options)`. `threads`: llama.cpp gets this many threads
    unless its options say otherwise (a shard on Ray uses the CPUs it was given, not every core of the node)."""

    def __init__(self, opener: Callable[[str, dict[str, Any]], CachedEngine], engine: str,
                 options: dict[str, Any] | None = None, threads: int | None = None):
        self.opener, self.threads = opener, threads
        self.default = (engine, dict(options or {}))
        self._open: dict[str, CachedEngine] = {}

    def get(self, engine: str | None = None, options: dict[str, Any] | None = None) -> CachedEngine:
        """The engine named with its options (default: the recipe's engine and `engine_options`)."""
        if engine is None:
            engine, options = self.default[0], self.default[1] if options is None else options
        options = dict(options or {})
        if self.threads and engine == "llamacpp":
            options = {"n_threads": self.threads, **options}
        key = json.dumps([engine, options], sort_keys=True, default=str)
        if key not in self._open:
            self._open[key] = self.opener(engine, options)
        return self._open[key]

    def usage(self) -> Usage:
        total = Usage()
        for engine in self._open.values():
            total = total + Usage.of(engine)
        return total

    def close(self) -> None:
        for engine in self._open.values():
            engine.close()
        self._open.clear()
