"""What every recipe build shares, without Prefect: engine + cache, inputs, validation, commit, report."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from lendata import faults
from lendata import store as st
from lendata.atomic import sha256_file
from lendata.engines import CachedEngine, ResponseCache, make_engine
from lendata.inputs import Loaded, read_instructions
from lendata.paths import check_name, work_dir
from lendata.recipes import resolve_input

QUARANTINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.large_string()),
        ("source", pa.string()),
        ("record", pa.large_string()),
    ]
)


def quarantine_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Quarantine (or rejected-candidate) records as a table of QUARANTINE_SCHEMA; missing keys are null."""
    return pa.Table.from_pylist([{k: r.get(k) for k in QUARANTINE_SCHEMA.names} for r in rows],
                                schema=QUARANTINE_SCHEMA)


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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def open_engine(recipe: dict[str, Any], store: Path, cache_file: str = "responses.sqlite") -> CachedEngine:
    dataset = check_name(recipe["dataset"], "dataset")
    cache = ResponseCache(work_dir(store) / dataset / cache_file)
    engine = make_engine(recipe.get("engine", "llamacpp"), **(recipe.get("engine_options") or {}))
    return CachedEngine(engine, cache)


class RoleEngines:
    """Engines for named roles (Self-Lengthen's Generator and Extender): roles with the same engine and
    options share one loaded engine and one response cache; calls and hits are summed for the report."""

    def __init__(self, recipe: dict[str, Any], store: Path, cache_file: str = "responses.sqlite"):
        self.recipe, self.store, self.cache_file = recipe, store, cache_file
        self._open: dict[str, CachedEngine] = {}

    def get(self, engine: str, options: dict[str, Any] | None = None) -> CachedEngine:
        key = json.dumps([engine, options or {}], sort_keys=True, default=str)
        if key not in self._open:
            self._open[key] = open_engine({**self.recipe, "engine": engine, "engine_options": options or {}},
                                          self.store, self.cache_file)
        return self._open[key]

    @property
    def first(self) -> CachedEngine | None:
        return next(iter(self._open.values()), None)

    @property
    def name(self) -> str:
        return "+".join(dict.fromkeys(e.name for e in self._open.values()))

    @property
    def model_id(self) -> str:
        return "+".join(dict.fromkeys(e.model_id for e in self._open.values()))

    @property
    def calls(self) -> int:
        return sum(e.calls for e in self._open.values())

    @property
    def hits(self) -> int:
        return sum(e.hits for e in self._open.values())

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self._open.values())

    def close(self) -> None:
        for e in self._open.values():
            e.close()


def input_identity(recipe: dict[str, Any], keys: tuple[str, ...] = ("input", "distractors", "tokenizer")
                   ) -> list[dict[str, Any]]:
    """What the recipe read, as a dataset card may publish it: each input's file name and sha256 (never its
    path). A folder is identified by its name, file count and the sha256 of its listing (relative path and size
    of each file matching `glob`), not of every byte; a built-in source (`@stdlib`) by the Python version."""
    import hashlib
    import platform

    out: list[dict[str, Any]] = []
    for key in keys:
        value = recipe.get(key)
        if not value:
            continue
        if str(value).startswith("@"):
            out.append({"setting": key, "name": str(value), "python": platform.python_version()})
            continue
        path = resolve_input(recipe, str(value))
        if path.is_file():
            out.append({"setting": key, "name": path.name, "files": 1, "sha256": sha256_file(path)})
        elif path.is_dir():
            files = sorted(p for p in path.glob(str(recipe.get("glob") or "**/*")) if p.is_file())
            h = hashlib.sha256()
            for p in files:
                h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\n".encode())
            out.append({"setting": key, "name": path.name, "files": len(files), "sha256": h.hexdigest(),
                        "identity": "listing"})
    return out


def load_inputs(recipe: dict[str, Any]) -> Loaded:
    return read_instructions(
        resolve_input(recipe, str(recipe["input"])),
        instruction_field=recipe.get("instruction_field", "instruction"),
        target_field=recipe.get("target_field"),
        n=recipe.get("n"),
    )


def finish(
    recipe: dict[str, Any],
    store: Path,
    table: pa.Table | dict[str, pa.Table],
    quarantine: list[dict[str, Any]],
    engine: CachedEngine | RoleEngines | None,
    started: float,
    overwrite: bool = False,
    extra_meta: dict[str, Any] | None = None,
    schemas: dict[str, str] | None = None,
) -> BuildReport:
    """Validate each split against its schema, enforce the quarantine threshold, commit, report.

    `table` is the `train` split (checked with the recipe's `schema`), or several named splits whose schema
    kinds `schemas` gives.
    """
    from schemas import split_valid

    faults.point("generated")
    splits = table if isinstance(table, dict) else {"train": table}
    kinds = schemas or {"train": recipe.get("schema", "sft")}
    valid: dict[str, pa.Table] = {}
    for name, tbl in splits.items():
        valid[name], failed = split_valid(tbl, kinds[name])
        quarantine = [*quarantine, *failed]
    total = sum(t.num_rows for t in valid.values()) + len(quarantine)
    share = len(quarantine) / total if total else 0.0
    limit = float(recipe.get("max_quarantine_share", 0.5))
    if total == 0:
        raise BuildFailed("the build produced no rows at all: check the input file and `n`")
    if share > limit:
        reasons = Counter(q["reason"].split(":")[0] for q in quarantine).most_common(5)
        raise BuildFailed(
            f"{len(quarantine)} of {total} rows quarantined ({share:.0%} > max_quarantine_share {limit:.0%}); "
            f"top reasons: {'; '.join(f'{r} ({n})' for r, n in reasons)}"
        )
    # always written (even empty) so `<dataset>__quarantine` can be queried for every build
    tables = {
        **valid,
        "quarantine": quarantine_table(quarantine),
    }
    recipe_meta = {k: v for k, v in recipe.items() if not k.startswith("_")}
    meta = {
        "recipe": recipe["_name"],
        "recipe_settings": recipe_meta,
        "inputs": input_identity(recipe),
        "engine": engine.name if engine else None,
        "model": engine.model_id if engine else None,
        **(extra_meta or {}),
    }
    version = st.commit(
        store,
        recipe["dataset"],
        tables,
        version=str(recipe.get("version", st.AUTO)),
        overwrite=overwrite,
        meta=meta,
    )
    return BuildReport(
        dataset=version.dataset,
        version=version.version,
        path=str(version.path),
        rows=version.rows(),
        quarantined=version.rows("quarantine"),
        engine_calls=engine.calls if engine else 0,
        cache_hits=engine.hits if engine else 0,
        seconds=round(time.monotonic() - started, 2),
        unchanged=version.unchanged,
    )
