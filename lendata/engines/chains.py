"""Chains: a sample's calls as one sequence, so that an engine with continuous batching never waits for a round.

A *chain* is a generator that yields a `Request`, receives its `Result` (`result = yield request`) and returns
a value when the sample is done: AgentWrite's plan, then each step with its resamples and continuations, is one
chain per sample. `run_chains` drives many chains at once:

- an engine with `continuous_batching` (vLLM and the `openai` engine, unless their option turns it off) has
  `generate_chains`: it submits a chain's next request the moment its previous one finishes, so the batch (or
  the server's concurrency) stays full while samples are at different steps. In rounds every step waited for
  the slowest sample of the round, and on the vLLM CPU build a batch of 8 decoded 66 tok/s against 108 for a
  batch of 16 (measured 2026-11-28, 180 tokens each);
- llama.cpp, which decodes one row at a time, gets rounds: the current request of every live chain in one
  `generate` call, which is what the methods did before chains.

Nothing a chain sends depends on other chains or on timing, so on an engine whose seeded results depend on the
request alone (llama.cpp, which decodes one row at a time) any order of finishing gives the same outputs. vLLM's
kernels are not batch-invariant (a seeded request alone and beside others diverge): there a text depends on
what else was running, in rounds as in chains, and the response cache is what makes a rerun replay it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from lendata.engines.base import Request, Result

T = TypeVar("T")
Chain = Generator[Request, Result, T]
# called once per result a chain receives: (the chain's index, the result)
OnChainResult = Callable[[int, Result], None]


class Chains:
    """The bookkeeping shared by both drivers: start chains, hand results in, collect return values, and close
    every chain when the drive ends early (an exception, a kill), so none is left suspended."""

    def __init__(self, chains: Sequence[Chain[Any]], on_result: OnChainResult | None = None):
        self.chains = list(chains)
        self.values: list[Any] = [None] * len(self.chains)
        self.on_result = on_result
        self.pending: dict[int, Request] = {}  # chain index -> the request it waits on
        self._lock = threading.Lock()  # an engine may report finished rows from another thread

    def start(self) -> dict[int, Request]:
        """Every chain's first request (a chain that makes no call is done at once)."""
        for i, chain in enumerate(self.chains):
            self._next(i, lambda chain=chain: next(chain))
        return dict(self.pending)

    def send(self, i: int, result: Result) -> Request | None:
        """Hand chain `i` its result; its next request, or None when it is done."""
        with self._lock:
            del self.pending[i]
            if self.on_result:
                self.on_result(i, result)
            self._next(i, lambda: self.chains[i].send(result))
            return self.pending.get(i)

    def close(self) -> None:
        """Close every chain; one whose own clean-up fails does not keep the others open or hide the error
        the drive ended with."""
        with self._lock:
            for chain in self.chains:
                try:
                    chain.close()
                except Exception:  # noqa: S110 - the drive's own error is the one to report
                    pass

    def _next(self, i: int, step: Callable[[], Request]) -> None:
        try:
            req = step()
        except StopIteration as done:
            self.values[i] = done.value
            return
        if not isinstance(req, Request):
            raise TypeError(f"a chain yields Request objects, chain {i} yielded {type(req).__name__}")
        self.pending[i] = req


def in_rounds(engine: Any, chains: Sequence[Chain[T]], on_result: OnChainResult | None = None) -> list[T]:
    """Drive `chains` with `engine.generate`: each call holds the current request of every live chain. A row is
    handed to its chain the moment the engine reports it finished (so a response cache in the chain stores it
    then: a kill loses only the rows in flight); the chain's next request waits for the next round."""
    state = Chains(chains, on_result)
    try:
        state.start()
        while state.pending:
            order = list(state.pending)
            handed: set[int] = set()

            def finished(j: int, res: Result, order: list[int] = order, handed: set[int] = handed) -> None:
                if j not in handed:
                    handed.add(j)
                    state.send(order[j], res)

            results = engine.generate([state.pending[i] for i in order], on_result=finished)
            if len(results) != len(order):  # a chain left without its answer would be sent again forever
                raise RuntimeError(f"the {getattr(engine, 'name', 'engine')} engine answered {len(results)} of "
                                   f"{len(order)} requests")
            for j, res in enumerate(results):
                finished(j, res)
    finally:
        state.close()
    return state.values


def run_chains(engine: Any, chains: Sequence[Chain[T]], on_result: OnChainResult | None = None) -> list[T]:
    """Drive every chain to its end and return their values in order: continuously on an engine that says
    `continuous_batching` (its `generate_chains`), else in rounds."""
    if getattr(engine, "continuous_batching", False):
        return engine.generate_chains(chains, on_result)
    return in_rounds(engine, chains, on_result)


def one_call(request: Request) -> Chain[Result]:
    """A chain of one request, returning its result (a plain batch as chains)."""
    return (yield request)
