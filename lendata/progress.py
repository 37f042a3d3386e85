"""A rich progress bar for generation: rows done, tokens per second, time left. Drawn on stderr."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lendata.engines.base import Result


class GenerationProgress:
    def __init__(self, total: int | None, description: str = "generating", enabled: bool = True):
        self.total = total
        self.tokens = 0
        self.started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[rate]:>7.1f} tok/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total, rate=0.0)

    def __enter__(self) -> GenerationProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, _index: int, result: Result) -> None:
        if not result.cached:
            self.tokens += result.completion_tokens
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self._progress.update(self._task, advance=1, rate=self.tokens / elapsed)

    def advance(self, rows: int, tokens: int) -> None:
        """`rows` and their `tokens` finished elsewhere (a shard on a Ray worker)."""
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self._progress.update(self._task, advance=rows, rate=self.tokens / elapsed)
