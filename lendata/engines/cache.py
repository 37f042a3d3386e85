"""Content-addressed response cache in SQLite.

Responses are stored under `request_key`: what produced them (a server's URL and served model, or the weights'
content hash, and the output-changing engine options), sampling, messages, schema, sample index. Parsing and
filtering happen after the cache, so changing a filter never calls the model again, and a crashed build loses
at most the calls that were in flight. Errors and empty texts are not cached: a rerun retries them. The one
exception is an empty answer to a chat that ends on an assistant turn (a continuation that ended at once): that
is the model's answer, and replaying it keeps a rerun from calling again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lendata.engines.base import Engine, OnResult, Request, Result, request_key
from lendata.engines.chains import Chain, OnChainResult, run_chains
from lendata.engines.identity import producer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit; WAL lets a reader (another build, a report) in while a build writes
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, Result]:
        out: dict[str, Result] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                marks = ",".join("?" * len(chunk))
                for key, blob in self._db.execute(
                    f"SELECT key, result FROM responses WHERE key IN ({marks})", chunk
                ):
                    out[key] = Result(**json.loads(blob), cached=True)
        return out

    def put(self, key: str, engine: str, model: str, result: Result, empty_ok: bool = False) -> None:
        """Store a successful result; an empty text only with `empty_ok` (a continuation that ended at once is
        an answer, a fresh question answered with nothing is not)."""
        if not result.ok or not (result.text or empty_ok):
            return
        blob = json.dumps(
            {
                "text": result.text,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "finish_reason": result.finish_reason,
            },
            ensure_ascii=False,
        )
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, engine, model, result, created) VALUES (?, ?, ?, ?, ?)",
                (key, engine, model, blob, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedEngine:
    """Wraps an engine: replays cached responses, sends only the misses, stores what comes back."""

    def __init__(self, engine: Engine, cache: ResponseCache):
        self.engine = engine
        self.cache = cache
        self.name = engine.name
        self.model_id = engine.model_id
        self.context_window = engine.context_window
        self.calls = 0  # requests actually sent to the engine
        self.hits = 0
        self.tokens = 0  # completion tokens the engine generated (not replayed)
        self.producer = producer(engine)

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]:
        keys = [request_key(self.producer, r) for r in requests]
        found = self.cache.get_many(keys)
        results: list[Result | None] = [found.get(k) for k in keys]
        misses = [i for i, r in enumerate(results) if r is None]
        self.hits += len(requests) - len(misses)
        if on_result:
            for i, r in enumerate(results):
                if r is not None:
                    on_result(i, r)
        if misses:
            self.calls += len(misses)

            stored: set[int] = set()

            def store(j: int, res: Result) -> None:
                # stored as each row finishes, so a crash mid-batch keeps the finished ones
                i = misses[j]
                stored.add(i)
                self.tokens += res.completion_tokens
                self.cache.put(keys[i], self.name, self.model_id, res, empty_ok=requests[i].prefill is not None)
                if on_result:
                    on_result(i, res)

            fresh = self.engine.generate([requests[i] for i in misses], on_result=store)
            for i, res in zip(misses, fresh, strict=True):
                results[i] = res
                if i not in stored:
                    store(misses.index(i), res)
        return [r for r in results if r is not None]

    def generate_chains(self, chains: Sequence[Chain[Any]], on_result: OnChainResult | None = None) -> list[Any]:
        """Drive chains through the cache: a hit goes straight back to its chain, only misses reach the wrapped
        engine (continuously when it can), and each is stored the moment it finishes."""
        return run_chains(self.engine, [self._through_cache(i, c, on_result) for i, c in enumerate(chains)],
                          on_result)

    def _through_cache(self, index: int, chain: Chain[Any], on_result: OnChainResult | None) -> Chain[Any]:
        """`chain` with its cached calls answered here (and reported to `on_result` as the driver reports the
        misses)."""
        try:
            req = next(chain)
            while True:
                key = request_key(self.producer, req)
                res = self.cache.get_many([key]).get(key)
                if res is not None:
                    self.hits += 1
                    if on_result:
                        on_result(index, res)
                else:
                    res = yield req
                    self.calls += 1  # counted once answered: a request the drive never sent is no call
                    self.tokens += res.completion_tokens
                    self.cache.put(key, self.name, self.model_id, res, empty_ok=req.prefill is not None)
                req = chain.send(res)
        except StopIteration as done:
            return done.value
        finally:  # a drive that ends early closes this wrapper: the method's chain is closed with it
            chain.close()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.engine.count_tokens(texts)

    @property
    def tokenizer(self) -> str:
        """The wrapped engine's tokenizer identity ("" for an engine that does not name one)."""
        return getattr(self.engine, "tokenizer", "")

    @property
    def continuous_batching(self) -> bool:
        """Whether chains run continuously: the wrapped engine's say (the cache itself answers in no time)."""
        return bool(getattr(self.engine, "continuous_batching", False))

    @property
    def supports_lora(self) -> bool:
        return bool(getattr(self.engine, "supports_lora", False))

    @property
    def continues_prefill(self) -> bool:
        return bool(getattr(self.engine, "continues_prefill", False))

    @property
    def decoding_options(self) -> frozenset[str]:
        return frozenset(getattr(self.engine, "decoding_options", ()))

    @property
    def max_lora_rank(self) -> int | None:
        return getattr(self.engine, "max_lora_rank", None)

    def training_base(self) -> Path:
        """The local Hugging Face checkpoint of the wrapped engine's weights, for the built-in LoRA trainer."""
        from lendata.training.lora import TrainingUnsupported

        base = getattr(self.engine, "training_base", None)
        if base is None:
            raise TrainingUnsupported(f"the {self.name} engine ({self.model_id}) has no local weights to train a "
                                      "LoRA adapter on; set lora.base to a local checkpoint of the same model")
        return base()

    def close(self) -> None:
        self.engine.close()
