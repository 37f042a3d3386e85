"""The method contract: what a method declares, and the one object it runs against.

A method is a package under `lendata/methods/` whose `METHOD` is a `Method`. It declares

- `settings`: a dataclass of its typed settings. Together with the run settings (`lendata.recipes.RunSettings`:
  dataset, version, engine, runner, shards, ...) it is the schema of its recipe YAML: unknown keys, wrong types
  and `--set` values are checked against its fields, and the manifest records every resolved field;
- `splits(settings)`: its output splits, each with an Arrow schema and a pandera schema (`Split`);
- `sharded`: whether its work can be cut into shards (`runner: ray`, `shards: N`);
- `card_tasks` and `card_tags` for the Hub card, `inputs` (settings naming files it reads, identified on
  the card by name and sha256) and `local_settings` (settings naming local things, withheld from the card),
  `main_split` for the report's row count, `metrics` it adds to `lendata score`, and an optional
  `report(manifest, folder)` hook for `lendata report`;
- `run(settings, build)`: the method itself, plain Python over its inputs and engines.

`run` talks to the build only through `Build` (below): it reads inputs with `build.path`, asks for engines,
cuts work into shards with `build.map`, names its stages with `build.step`, and hands its rows to `build.add`
(a whole table) or `build.stream` (batches written as they come). The build (`lendata/build.py`) does the rest
for every method the same way: validate every split with its pandera schema, quarantine failing rows with the
reason, enforce `max_quarantine_share`, publish the version atomically, report one engine usage. Prefect only
supplies a different `map` and `step` (flows/); a method never imports Prefect, the store, the build or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from lendata.engines.base import OnResult

# quarantined (or rejected-candidate) records: why a row is not in the data, and where it came from
QUARANTINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.large_string()),
        ("source", pa.string()),
        ("record", pa.large_string()),
    ]
)


def quarantine_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Quarantine (or rejected-candidate) records as a table of QUARANTINE_SCHEMA; missing keys are null."""
    return pa.Table.from_pylist([{k: r.get(k) for k in QUARANTINE_SCHEMA.names} for r in rows],
                                schema=QUARANTINE_SCHEMA)


@dataclass(frozen=True)
class Split:
    """One output split. `contract` is its pandera schema (a DataFrameModel from `schemas/`), or None for an
    audit split the method fills with records of QUARANTINE_SCHEMA (e.g. `rejected`).

    `counted`: its rows count toward `max_quarantine_share` (quarantined / (counted rows + quarantined)).
    `unchecked`: columns left out of validation because copying them into polars costs more than it checks
    (long contexts, token lists); the pandera schema must not name them."""

    arrow: pa.Schema | None
    contract: Any = None
    counted: bool = True
    unchecked: tuple[str, ...] = ()


@dataclass
class ReportSection:
    """What a method adds to `lendata report`: figures under `name` in the JSON, PNGs, and what to print."""

    name: str
    data: dict[str, Any]
    plots: list[str] = field(default_factory=list)
    table: tuple[tuple[str, ...], list[tuple[str, ...]]] | None = None  # (header, rows) to print
    lines: list[str] = field(default_factory=list)


class Bar(Protocol):
    def update(self, index: int, result: Any) -> None:
        """One row done with this engine result."""

    def advance(self, rows: int, tokens: int) -> None:
        """`rows` more done, with `tokens` tokens."""


Progress = Callable[[int | None, str], AbstractContextManager[Bar]]  # (total or None if unknown, label)


class Engines(Protocol):
    """The engines of a build (or of one shard): opened on first use, each with the build's response cache."""

    default: tuple[str, dict[str, Any]]  # the recipe's `engine` and `engine_options`

    def get(self, engine: str | None = None, options: dict[str, Any] | None = None) -> Any:
        """The engine named (default: the recipe's `engine` with its `engine_options`)."""


# a shard's work: step(settings, items, offset, engines, progress, *extra) -> result. It must be a module-level
# function: under `runner: ray` it runs on another machine with engines of its own. `offset` is the place of
# its first item in the whole input, so per-row seeds do not depend on the sharding.
ShardStep = Callable[..., Any]


class Writer(Protocol):
    def write(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
        """Write the batch's valid rows (the others are quarantined); return what was written."""

    def close(self) -> None: ...


class Build(Protocol):
    """What a method's `run` gets from the build."""

    dataset: str  # the dataset being built (LV-Eval names its records' `dataset` after it)
    engines: Engines
    meta: dict[str, Any]  # method-specific manifest entries (statistics, roles, ...)
    progress: Progress  # a progress bar: `with build.progress(total, label) as bar: ... bar.update(i, result)`
    scratch: Path  # a folder of the build's own (work files that are not data: trainer adapters)

    def path(self, value: str) -> Path:
        """An input setting as a path: relative to the recipe file, or to the working directory."""

    def version_files(self, ref: str, split: str = "train") -> tuple[str, list[Path]]:
        """A built version as an input: ("DATASET@VERSION:split", its Parquet shards). `ref` is DATASET (the
        latest version) or DATASET@VERSION of the build's store."""

    def version_splits(self, ref: str) -> list[str]:
        """The data splits (not quarantine or rejected) of a built version of the build's store."""

    def quarantine(self, records: Sequence[dict[str, Any]]) -> None:
        """Rows that are not in the data, with their reason (QUARANTINE_SCHEMA keys)."""

    def add(self, split: str, table: pa.Table) -> None:
        """A whole split (or one more part of it, concatenated in call order); validated at the end."""

    def stream(self, split: str, schema: pa.Schema, partition: str | None = None,
               rows_per_shard: int = 10_000) -> Writer:
        """A writer for a split too large to hold: each batch is validated, its failing rows quarantined,
        the rest written to shards of the staged version. `partition` is a hive partition (`bucket=8`)."""

    def map(self, step: ShardStep, items: Sequence[Any], label: str, *extra: Any,
            total: int | None = None) -> list[Any]:
        """`step` over the items cut into the recipe's shards (on Ray with `runner: ray`); results in order.
        A result with `progress() -> (rows, tokens)` moves the driver's bar by those (out of `total`, default
        the item count); one with `accounting() -> dict` adds it to the shard's manifest record. A step with
        the attribute `live_progress = True` promises that its `progress` bars count exactly what its result's
        `progress()` totals: on Ray those bars then move the driver's bar while the shard runs."""

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, recorded as a named stage (a Prefect task when the build runs as a flow)."""

    def output(self) -> Any:
        """A handle a shard step writes splits through, on any worker sharing the store's file system:
        `out.stream(split, schema, partition, rows_per_shard, name)` (shards named `part-NAME-*`: give each
        piece of work its own name), `out.quarantine(records)`, and `out.result()`, which the step returns for
        the driver to hand to `merge`."""

    def merge(self, written: Any) -> None:
        """Add what a shard wrote through `output()` (its `result()`) to the version."""

    def check_share(self, bad: int, total: int, what: str) -> None:
        """Fail now when `bad` of `total` input units are unusable beyond `max_quarantine_share` (a method's
        early check, in its own unit, before it spends engine calls; the build checks its rows at the end)."""


class Method:
    """Base of every method's `METHOD`; see the module docstring."""

    name: ClassVar[str]
    settings: ClassVar[type]
    sharded: ClassVar[bool] = False
    card_tasks: ClassVar[tuple[str, ...]] = ("text-generation",)
    card_tags: ClassVar[tuple[str, ...]] = ()
    main_split: ClassVar[str | None] = None  # the report's row count; None: every data split
    inputs: ClassVar[tuple[str, ...]] = ("input",)  # settings naming what it reads: identified on the card
    local_settings: ClassVar[tuple[str, ...]] = ()  # settings naming local things, withheld from the card
    # metrics `lendata score --metric NAME` offers: scorer(records, response_field, response, skipped,
    # best_of_answers) -> (rows of {source, target, words, score, ...}, summary entries), where records are
    # (file:line, record) and response(record) its response
    metrics: ClassVar[dict[str, Callable[..., list[dict[str, Any]]]]] = {}

    def splits(self, settings: Any) -> dict[str, Split]:
        raise NotImplementedError

    def run(self, settings: Any, build: Build) -> None:
        raise NotImplementedError

    def report(self, manifest: dict[str, Any], folder: Path) -> ReportSection | None:
        """Extra figures for `lendata report` of a version it built, plots written into `folder` (None: the
        generic report only)."""
        return None


def no_progress(total: int, label: str) -> AbstractContextManager[Bar]:
    """A progress factory that draws nothing (a shard on a Ray worker; the driver draws)."""
    import contextlib

    class _Quiet:
        def update(self, index: int, result: Any) -> None:
            pass

        def advance(self, rows: int, tokens: int) -> None:
            pass

    return contextlib.nullcontext(_Quiet())


__all__ = ["QUARANTINE_SCHEMA", "Bar", "Build", "Engines", "Method", "OnResult", "Progress", "ReportSection",
           "ShardStep", "Split", "Writer", "no_progress", "quarantine_table"]
