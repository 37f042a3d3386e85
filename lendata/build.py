"""The one build path, for every method: load → run → validate every split → quarantine → threshold →
publish atomically → one report with one engine usage. Without Prefect; flows/ runs the same path as a flow.

A method's `run` gets a `BuildRun` (the `Build` of `lendata/methods/base.py`). Whole splits it hands over with
`add` are validated when the method returns; batches it `stream`s are validated as they are written into the
staged version. Either way a row failing its split's pandera schema goes to `quarantine` with the failed
checks, and the build fails when quarantined rows pass `max_quarantine_share` of the counted rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from lendata import faults
from lendata import store as st
from lendata.atomic import sha256_file
from lendata.engines import CachedEngine, ResponseCache, make_engine
from lendata.engines.pool import EnginePool, Usage
from lendata.methods.base import Split, quarantine_table
from lendata.paths import work_dir
from lendata.progress import GenerationProgress
from lendata.recipes import Recipe
from lendata.remote import default_offline


class BuildFailed(RuntimeError):
    pass


@dataclass
class BuildReport:
    dataset: str
    version: str
    path: str
    rows: int
    quarantined: int
    engine_calls: int
    cache_hits: int
    seconds: float
    unchanged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict())


def configure_prefect(store: Path, verbose: bool = False) -> None:
    """The Prefect client's settings: its home (profiles, result storage) under the store's work dir, unless the
    user runs a server. The API server itself is the one builds share (flows/_server.py).

    Prefect's own logs are off unless `verbose`: lendata reports build errors itself, once, clearly.
    """
    home = work_dir(store) / "prefect"
    home.mkdir(parents=True, exist_ok=True)  # prefect creates only the last path component
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a plain path here is read as a block name and fails; the env setting is a path (ENVIRONMENT.md)
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "results"))
    os.environ["PREFECT_LOGGING_LEVEL"] = "INFO" if verbose else os.environ.get("PREFECT_LOGGING_LEVEL", "CRITICAL")
    default_offline()


# --- engines --------------------------------------------------------------------------------------------


def open_engine(recipe: Recipe, store: Path, engine: str, options: dict[str, Any],
                cache_file: str = "responses.sqlite") -> CachedEngine:
    cache = ResponseCache(work_dir(store) / recipe.dataset / cache_file)
    return CachedEngine(make_engine(engine, **options), cache)


def engine_pool(recipe: Recipe, store: Path, cache_file: str = "responses.sqlite",
                threads: int | None = None) -> EnginePool:
    def opener(engine: str, options: dict[str, Any]) -> CachedEngine:
        return open_engine(recipe, store, engine, options, cache_file)

    return EnginePool(opener, recipe.run.engine, recipe.run.engine_options, threads)


# --- shards ---------------------------------------------------------------------------------------------


def cut(items: Sequence[Any], shards: int) -> list[tuple[int, list[Any]]]:
    """(offset of its first item, items) for at most `shards` contiguous, near-equal, non-empty pieces."""
    n = len(items)
    shards = max(1, min(shards, n))
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    return [(a, list(items[a:b])) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


class LocalRunner:
    """Runs a build in this process: stages are plain calls, shards run one after another on the build's
    engines. flows/ subclasses it to make stages Prefect tasks and send shards to Ray."""

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def map(self, build: BuildRun, step: Callable[..., Any], items: Sequence[Any], label: str,
            *extra: Any, total: int | None = None) -> list[Any]:
        pieces = cut(items, build.recipe.run.shards)
        results = []
        for i, (offset, piece) in enumerate(pieces):
            name = label if len(pieces) == 1 else f"{label} {i + 1}/{len(pieces)}"
            started = time.monotonic()
            result = self.step(name, step, build.settings, piece, offset, build.engines, build.progress_for(name),
                               *extra)
            results.append(result)
            build.shards.append({"label": label, "offset": offset, "rows": len(piece), "runner": "local",
                                 "host": socket.gethostname(), "pid": os.getpid(),
                                 "seconds": round(time.monotonic() - started, 2), **shard_accounting(result)})
        return results


def shard_accounting(result: Any) -> dict[str, Any]:
    """What a shard's result says about its work for the manifest (`accounting()`: documents, tokens...)."""
    account = getattr(result, "accounting", None)
    return account() if callable(account) else {}


# --- the build ------------------------------------------------------------------------------------------


class _CheckedWriter:
    """A split's shard writer that validates each batch first (see BuildRun.stream): failing rows go to the
    owner's quarantine (the build's, or a shard's `ShardOutput`), counted rows to its `counted_rows`."""

    def __init__(self, owner: BuildRun | ShardOutput, declared: Split, writer: st.ShardWriter):
        self.owner, self.declared, self.writer = owner, declared, writer

    def write(self, batch: pa.RecordBatch | pa.Table) -> pa.Table | pa.RecordBatch:
        """Write the batch's valid rows; return what was written."""
        if self.declared.contract is not None and batch.num_rows:
            from schemas import check_rows

            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            keep, failed = check_rows(table, self.declared.contract, self.declared.unchecked)
            if failed:
                self.owner.quarantine(failed)
                batch = table.take(pa.array(keep, type=pa.int64()))
        self.writer.write(batch)
        if self.declared.counted:
            self.owner.counted_rows += batch.num_rows
        return batch

    def close(self) -> None:
        self.writer.close()


class ShardOutput:
    """Where a shard's step writes rows: straight into the staged version's folder, from this process or from a
    Ray worker sharing the store's file system. It travels to the worker by pickling (a path and the split
    declarations); what it wrote comes back in `result()` and joins the version with `BuildRun.merge`.
    Each batch is validated on the worker, as `BuildRun.stream` does."""

    def __init__(self, stage_path: Path, declared: dict[str, Split]):
        self.stage_path, self.declared = stage_path, declared
        self._detached: st.DetachedStage | None = None
        self._quarantine: list[dict[str, Any]] = []
        self.counted_rows = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"stage_path": self.stage_path, "declared": self.declared}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["stage_path"], state["declared"])  # type: ignore[misc]

    def stream(self, split: str, schema: pa.Schema, partition: str | None = None, rows_per_shard: int = 10_000,
               name: str | None = None) -> _CheckedWriter:
        if split not in self.declared:
            raise ValueError(f"a shard wrote split {split!r}, which its method does not declare")
        if self._detached is None:
            self._detached = st.DetachedStage(self.stage_path)
        return _CheckedWriter(self, self.declared[split],
                              self._detached.writer(split, schema, partition, rows_per_shard, name))

    def quarantine(self, records: Sequence[dict[str, Any]]) -> None:
        self._quarantine.extend(records)

    def result(self) -> dict[str, Any]:
        """What was written since the last `result()` (a local runner hands one output to every shard)."""
        d = self._detached
        out = {"splits": d.splits if d else {}, "schemas": d.schemas if d else {}, "quarantine": self._quarantine,
               "counted": self.counted_rows}
        self.__init__(self.stage_path, self.declared)  # type: ignore[misc]
        return out


# manifest entries the build and the store write; a method's `build.meta` must not replace them
RESERVED_META = {"recipe", "method", "recipe_settings", "inputs", "engine", "model", "tokenizer", "shards",
                 "dataset", "version", "created", "lendata_version", "content_hash", "same_content_as", "splits",
                 "schema"}


class BuildRun:
    """One build of one recipe: what a method's `run` sees (lendata.methods.base.Build)."""

    def __init__(self, recipe: Recipe, store: Path, progress: bool = True, runner: LocalRunner | None = None,
                 engines: EnginePool | None = None):
        self.recipe, self.store, self.show_progress = recipe, store, progress
        self.method = recipe.method
        self.dataset = recipe.dataset
        self.settings = recipe.settings
        self.declared: dict[str, Split] = self.method.splits(recipe.settings)
        self.runner = runner or LocalRunner()
        self.engines = engines or engine_pool(recipe, store)
        self.remote_usage = Usage()  # engines of shards that ran elsewhere
        self.meta: dict[str, Any] = {}
        self.shards: list[dict[str, Any]] = []
        self.scratch = work_dir(store) / recipe.dataset
        self.counted_rows = 0
        self._quarantine: list[dict[str, Any]] = []
        self._parts: dict[str, list[pa.Table]] = {}
        self._exit = contextlib.ExitStack()
        self._stage: st.Stage | None = None

    # what a method calls
    def progress(self, total: int | None, label: str) -> GenerationProgress:
        return GenerationProgress(total, label, enabled=self.show_progress)

    def progress_for(self, shard: str) -> Callable[[int, str], GenerationProgress]:
        """The progress factory a shard's step gets: bars named after the shard."""
        return lambda total, what: self.progress(total, f"{shard}: {what}" if what else shard)

    def path(self, value: str) -> Path:
        return self.recipe.path(value)

    def version_files(self, ref: str, split: str = "train") -> tuple[str, list[Path]]:
        from lendata.inputs import InputError

        try:
            version = st.open_version(self.store, ref)
        except (st.StoreError, ValueError) as e:
            raise InputError(f"{ref!r} is neither a file nor a version of this store: {e}") from None
        if split not in version.splits:
            raise InputError(f"{version.dataset}@{version.version} has no split {split!r} "
                             f"(splits: {', '.join(version.splits)})")
        return f"{version.dataset}@{version.version}:{split}", version.files(split)

    def version_splits(self, ref: str) -> list[str]:
        from lendata.inputs import InputError

        try:
            version = st.open_version(self.store, ref)
        except (st.StoreError, ValueError) as e:
            raise InputError(f"{ref!r} is not a version of this store: {e}") from None
        return [name for name in version.splits if name not in st.AUDIT_SPLITS]

    def quarantine(self, records: Sequence[dict[str, Any]]) -> None:
        self._quarantine.extend(records)

    def _declared(self, split: str) -> Split:
        if split not in self.declared:
            raise ValueError(f"method {self.method.name} wrote split {split!r}, which it does not declare "
                             f"(its splits: {', '.join(self.declared)})")
        return self.declared[split]

    def add(self, split: str, table: pa.Table) -> None:
        self._declared(split)
        if self._stage is not None and split in self._stage.splits:
            raise ValueError(f"method {self.method.name} adds rows to split {split!r}, which it streams")
        self._parts.setdefault(split, []).append(table)

    def stream(self, split: str, schema: pa.Schema, partition: str | None = None,
               rows_per_shard: int = 10_000) -> _CheckedWriter:
        declared = self._declared(split)
        if split in self._parts:
            raise ValueError(f"method {self.method.name} streams split {split!r}, which it adds whole")
        return _CheckedWriter(self, declared, self.stage().writer(split, schema, partition, rows_per_shard))

    def check_share(self, bad: int, total: int, what: str) -> None:
        self._check_share(bad, total, what)

    def output(self) -> ShardOutput:
        return ShardOutput(self.stage().path, self.declared)

    def merge(self, written: dict[str, Any]) -> None:
        self.stage().adopt(written["splits"], written["schemas"])
        self.quarantine(written["quarantine"])
        self.counted_rows += written["counted"]

    def map(self, step: Callable[..., Any], items: Sequence[Any], label: str, *extra: Any,
            total: int | None = None) -> list[Any]:
        return self.runner.map(self, step, items, label, *extra, total=total)

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return self.runner.step(name, fn, *args)

    # the build's own part
    def stage(self) -> st.Stage:
        """The staged version, opened on first use: a streaming method writes into it as it goes; a method
        that hands over whole splits holds the dataset's lock only while they are written."""
        if self._stage is None:
            self._stage = self._exit.enter_context(st.Stage(self.store, self.recipe.dataset))
        return self._stage

    def usage(self) -> Usage:
        return self.engines.usage() + self.remote_usage

    def valid_rows(self, table: pa.Table, declared: Split) -> pa.Table:
        """The rows of `table` its split's pandera schema accepts (the table itself when all pass); the others
        are quarantined with the failed checks."""
        from schemas import check_rows

        keep, failed = check_rows(table, declared.contract, declared.unchecked)
        if not failed:
            return table
        self.quarantine(failed)
        return table.take(pa.array(keep, type=pa.int64()))

    def publish(self, overwrite: bool, started: float) -> BuildReport:
        faults.point("generated")
        valid: dict[str, pa.Table] = {}
        for split, declared in self.declared.items():
            parts = self._parts.get(split)
            if parts is None:
                if declared.arrow is None or (self._stage is not None and split in self._stage.splits):
                    continue  # streamed, or written only when the method has rows for it
                parts = [declared.arrow.empty_table()]
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            if declared.contract is not None and table.num_rows:
                table = self.valid_rows(table, declared)
            valid[split] = table
            if declared.counted:
                self.counted_rows += table.num_rows
        self._check_share(len(self._quarantine), self.counted_rows + len(self._quarantine), "rows")
        stage = self.stage()
        for split, table in valid.items():
            stage.add_table(split, table)
        stage.add_table("quarantine", quarantine_table(self._quarantine))  # always, so it can be queried
        usage = self.usage()
        clash = set(self.meta) & RESERVED_META
        if clash:
            raise ValueError(f"method {self.method.name} sets manifest entries the build owns: {sorted(clash)}")
        meta = {
            "recipe": self.recipe.name,
            "method": self.method.name,
            "recipe_settings": self.recipe.resolved(),
            "inputs": input_identity(self.recipe),
            "engine": usage.name or None,
            "model": usage.model_id or None,
            "tokenizer": usage.tokenizer or None,  # what every *_tokens column was counted with
            **self.meta,
        }
        if any(s["runner"] == "ray" for s in self.shards) or len({(s["label"], s["offset"]) for s in self.shards}) > \
                len({s["label"] for s in self.shards}):
            meta["shards"] = self.shards
        version = stage.publish(self.recipe.run.version, overwrite, meta)
        main = self.method.main_split
        return BuildReport(dataset=version.dataset, version=version.version, path=str(version.path),
                           rows=version.rows(main) if main else version.rows(),
                           quarantined=version.rows("quarantine"), engine_calls=usage.calls,
                           cache_hits=usage.hits, seconds=round(time.monotonic() - started, 2),
                           unchanged=version.unchanged)

    def _check_share(self, quarantined: int, total: int, what: str) -> None:
        limit = self.recipe.run.max_quarantine_share
        if total == 0:
            raise BuildFailed(f"the build produced no {what} at all: check the input file and `n`")
        share = quarantined / total
        if share > limit:
            reasons = Counter(str(q["reason"]).split(":")[0] for q in self._quarantine).most_common(5)
            raise BuildFailed(
                f"{quarantined} of {total} {what} quarantined ({share:.0%} > max_quarantine_share {limit:.0%}); "
                f"top reasons: {'; '.join(f'{r} ({n})' for r, n in reasons)}")

    def close(self) -> None:
        try:
            self.engines.close()
        finally:
            self._exit.close()  # the staged folder and the dataset's lock, whatever closing an engine did


def run(recipe: Recipe, store: Path, overwrite: bool = False, progress: bool = True,
        runner: LocalRunner | None = None, engines: EnginePool | None = None) -> BuildReport:
    """Build a recipe: its method runs, then every split is validated, and the version published.
    `engines`: the engines to use instead of the recipe's (a test's scripted engine)."""
    started = time.monotonic()
    build = BuildRun(recipe, store, progress, runner, engines)
    try:
        build.method.run(build.settings, build)
        return build.step("validate and publish", build.publish, overwrite, started)
    finally:
        build.close()


# --- what the card may say about the inputs -------------------------------------------------------------


def input_identity(recipe: Recipe) -> list[dict[str, Any]]:
    """What the recipe read (the settings its method names in `inputs`), as a dataset card may publish it: each
    input's file name and sha256 (never its path). A folder is identified by its name, file count and the
    sha256 of its listing (relative path and size of each file matching the method's `glob` setting, if it has
    one), not of every byte; a built-in source (`@stdlib`) by the Python version."""
    settings = asdict(recipe.settings)
    out: list[dict[str, Any]] = []
    for key in recipe.method.inputs:
        value = settings.get(key)
        if not value:
            continue
        if str(value).startswith("@"):
            out.append({"setting": key, "name": str(value), "python": platform.python_version()})
            continue
        from lendata.remote import is_url

        if is_url(str(value)):  # an object store: its scheme and last name, never the bucket or credentials
            out.append({"setting": key, "name": str(value).split("?")[0].rstrip("/").rsplit("/", 1)[-1],
                        "scheme": str(value).split("://", 1)[0]})
            continue
        path = recipe.path(str(value))
        if path.is_file():
            out.append({"setting": key, "name": path.name, "files": 1, "sha256": sha256_file(path)})
        elif path.is_dir():
            files = sorted(p for p in path.glob(str(settings.get("glob") or "**/*")) if p.is_file())
            h = hashlib.sha256()
            for p in files:
                h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\n".encode())
            out.append({"setting": key, "name": path.name, "files": len(files), "sha256": h.hexdigest(),
                        "identity": "listing"})
    return out
