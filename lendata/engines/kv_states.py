"""Deterministic KV prefix reuse for the embedded llama.cpp engine.

AgentWrite's step k+1 prompt is step k's prompt up to the text written so far, plus the new paragraph and the
next step's directive; re-evaluating that shared prefix from a clean context for every step cost most of a
build (174k prompt tokens evaluated for 49k generated). llama-cpp-python's own prefix reuse keeps the KV of the
previous call, but that KV was computed in whatever batches the previous calls happened to use (the prompt in
one batch, generated tokens one at a time), and logits computed from differently batched KV differ in the last
bits: a seeded request then depends on what ran before it.

Here every prompt is evaluated in chunks of `CHUNK` tokens aligned to absolute positions (0, CHUNK, 2·CHUNK,
...), and only the KV at aligned boundaries is kept. The KV of positions [0, m·CHUNK) is then a function of
those tokens alone, whether it was computed just now, restored from a saved state, or truncated from a longer
one (attention is causal: later chunks never change earlier keys). The tail after the last full chunk and the
generated tokens are evaluated the same way on every path. So a request gives the same text with or without a
cache hit, in any order, which the tests check.

States are kept per token prefix within a RAM budget (least recently used first out), spilled to a disk
directory within a disk budget when one is given, and otherwise dropped: a dropped state is recomputed, never
wrong.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 64  # prompt tokens per aligned evaluation chunk (part of the engine's identity: it sets the numerics)


@dataclass
class _Entry:
    tokens: np.ndarray  # the prefix this state holds (a multiple of CHUNK tokens)
    data: bytes | None  # the sequence's KV, in RAM
    path: Path | None = None  # ...or on disk
    size: int = 0


class KVStates:
    """Saved sequence states by token prefix, with the live context as one more candidate."""

    def __init__(self, ram_mb: float = 1024, disk_mb: float = 0, disk_dir: str | None = None):
        self.ram_budget = int(ram_mb * 2**20)
        self.disk_budget = int(disk_mb * 2**20)
        self._disk_dir = Path(disk_dir) if disk_dir else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._entries: OrderedDict[tuple[str | None, int], _Entry] = OrderedDict()  # LRU order, newest last
        self._next = 0
        self.ram_bytes = 0
        self.disk_bytes = 0
        # counters for benchmarks and tests
        self.reused_tokens = 0
        self.evaluated_tokens = 0
        self.restores = 0

    @property
    def enabled(self) -> bool:
        return self.ram_budget > 0 or self.disk_budget > 0

    def best(self, lora: str | None, tokens: Sequence[int]) -> tuple[tuple[str | None, int] | None, int]:
        """(key of the saved state sharing the most aligned tokens with `tokens`, how many)."""
        want = np.asarray(tokens, dtype=np.int64)
        best_key, best_n = None, 0
        for key, e in self._entries.items():
            if key[0] != lora:
                continue
            n = aligned_common(e.tokens, want)
            if n > best_n:
                best_key, best_n = key, n
        return best_key, best_n

    def load(self, key: tuple[str | None, int]) -> bytes:
        e = self._entries[key]
        self._entries.move_to_end(key)
        if e.data is not None:
            return e.data
        assert e.path is not None
        return e.path.read_bytes()

    def drop(self, key: tuple[str | None, int]) -> None:
        """Forget one state (one that could not be read back or restored)."""
        if key in self._entries:
            self._drop(key)

    def save(self, lora: str | None, tokens: Sequence[int], data: bytes) -> None:
        arr = np.asarray(tokens, dtype=np.int64)
        # a state the new one covers but for its last two chunks is superseded: truncating the new one gives all
        # of it back except the tail of the step's own closing instruction (AgentWrite's step k+1 shares step k's
        # prompt up to that instruction), which only a retry of the same step could have used
        for key in [k for k, e in self._entries.items() if k[0] == lora and len(e.tokens) <= len(arr)
                    and _covers(aligned_common(e.tokens, arr), len(e.tokens))]:
            self._drop(key)
        if len(data) > max(self.ram_budget, self.disk_budget):
            return
        self._next += 1
        self._entries[(lora, self._next)] = _Entry(arr, data, size=len(data))
        self.ram_bytes += len(data)
        self._fit()

    def _fit(self) -> None:
        for key in list(self._entries):
            if self.ram_bytes <= self.ram_budget:
                break
            e = self._entries.get(key)
            if e is None or e.data is None:  # already dropped to make room on disk, or already on disk
                continue
            self.ram_bytes -= e.size
            while self.disk_bytes + e.size > self.disk_budget:
                victim = next((k for k, x in self._entries.items() if x.path is not None), None)
                if victim is None:
                    break
                self._drop(victim)
            if self.disk_bytes + e.size <= self.disk_budget:
                # unique per process and cache: two engines given one kv_disk_dir never read each other's files
                fd, name = tempfile.mkstemp(suffix=".kv", prefix=f"{os.getpid()}-", dir=self._spill_dir())
                with os.fdopen(fd, "wb") as f:
                    f.write(e.data)
                e.path, e.data = Path(name), None
                self.disk_bytes += e.size
            else:
                del self._entries[key]

    def _drop(self, key: tuple[str | None, int]) -> None:
        e = self._entries.pop(key)
        if e.data is not None:
            self.ram_bytes -= e.size
        elif e.path is not None:
            self.disk_bytes -= e.size
            e.path.unlink(missing_ok=True)

    def _spill_dir(self) -> Path:
        if self._disk_dir is not None:
            self._disk_dir.mkdir(parents=True, exist_ok=True)
            return self._disk_dir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lendata-kv-")
        return Path(self._tmp.name)

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _covers(common: int, length: int) -> bool:
    """A new state sharing `common` aligned tokens with an old one of `length` tokens makes the old one
    redundant: all of it, or all but its last two chunks and at least half of it."""
    return common > 0 and common >= length - 2 * CHUNK and 2 * common >= length


def aligned_common(a: np.ndarray, b: np.ndarray) -> int:
    """The common prefix of two token arrays, rounded down to a whole number of chunks."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    common = int(diff[0]) if len(diff) else n
    return common // CHUNK * CHUNK


class AlignedPrefill:
    """Wraps a `llama_cpp.Llama`'s `generate` so that every prompt is positioned through aligned chunks and the
    aligned prefix of each prompt is kept in `states` (see the module docstring)."""

    def __init__(self, llm: Any, states: KVStates):
        self.llm = llm
        self.states = states
        self._generate = llm.generate
        self.lora: str | None = None
        # the aligned prefix the live context holds, computed through aligned chunks only
        self._live = np.zeros(0, dtype=np.int64)
        llm.generate = self.generate  # create_completion calls self.generate: every path comes through here

    def forget_live(self) -> None:
        """The live context no longer holds a reusable prefix (an adapter change, a reset)."""
        self._live = np.zeros(0, dtype=np.int64)

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        if getattr(self.llm, "_is_recurrent", False) or getattr(self.llm, "_is_hybrid", False):
            self.llm.reset()  # a recurrent state cannot be truncated to a prefix: every request starts clean
            return self._generate(tokens, *args, **kwargs)
        self.position(list(tokens))
        return self._generate(tokens, *args, **kwargs)

    def position(self, tokens: list[int]) -> None:
        """Leave the context holding exactly the KV of `tokens[:m]`, m the last chunk boundary before the last
        token (so at least one token is left for llama-cpp-python to evaluate and sample from)."""
        import llama_cpp

        llm = self.llm
        target = (len(tokens) - 1) // CHUNK * CHUNK
        want = np.asarray(tokens, dtype=np.int64)
        live_n = min(aligned_common(self._live, want), target)
        key, saved_n = self.states.best(self.lora, tokens) if self.states.enabled else (None, 0)
        saved_n = min(saved_n, target)
        have = live_n
        if key is not None and saved_n > live_n:
            self._live = np.zeros(0, dtype=np.int64)  # about to be overwritten
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            have = 0
            try:
                data = self.states.load(key)
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                restored = llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buf, len(data), 0) != 0
            except OSError:
                restored = False
            if restored:
                self.states.restores += 1
                have = saved_n
            else:  # a state that cannot be read back is forgotten and the prefix evaluated again: same bits
                self.states.drop(key)
                llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm._ctx.kv_cache_seq_rm(-1, have, -1)
        llm.input_ids[:have] = want[:have]
        llm.n_tokens = have
        llm._requires_eval = True
        self.states.reused_tokens += have
        for start in range(have, target, CHUNK):
            llm.eval(tokens[start : start + CHUNK])
        self.states.evaluated_tokens += target - have
        self._live = want[:target].copy()
        if target > have and self.states.enabled:
            size = llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0)
            buf = (ctypes.c_uint8 * size)()
            n = llama_cpp.llama_state_seq_get_data(llm._ctx.ctx, buf, size, 0)
            # one copy of the bytes written (slicing a ctypes array would build a list of ints first)
            self.states.save(self.lora, want[:target], ctypes.string_at(buf, n))


def default_ram_mb() -> float:
    """An eighth of the machine's memory, at most 1 GiB (per engine, so per shard process): a round of eight
    2,000-word samples of the bundled model needs about 600 MB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return 512
    return min(1024, total / 8)
