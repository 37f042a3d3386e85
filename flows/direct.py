"""Flow for the `direct` recipe: load instructions, answer each in one budgeted call, validate, commit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow as prefect_flow
from prefect import task
from prefect.cache_policies import NONE

from flows._tasks import commit, load
from lendata.build import BuildReport, open_engine
from lendata.methods.direct import direct
from lendata.progress import GenerationProgress


@task(cache_policy=NONE, name="generate")
def generate(recipe: dict[str, Any], rows: list[dict[str, Any]], engine, progress: bool):
    with GenerationProgress(len(rows), "direct", enabled=progress) as bar:
        return direct(
            rows,
            engine,
            temperature=recipe.get("temperature", 0.5),
            top_p=recipe.get("top_p", 0.95),
            seed=recipe.get("seed", 42),
            counter=recipe.get("word_counter", "longwriter"),
            min_ratio=recipe.get("min_ratio", 0.85),
            max_ratio=recipe.get("max_ratio", 1.3),
            on_result=bar.update,
        )


@prefect_flow(name="direct", log_prints=False)
def flow(recipe: dict[str, Any], store: str, overwrite: bool = False, progress: bool = True) -> BuildReport:
    started = time.monotonic()
    loaded = load(recipe)
    engine = open_engine(recipe, Path(store))
    try:
        table, failed = generate(recipe, loaded.rows, engine, progress)
        quarantine = [b.as_quarantine() for b in loaded.bad] + failed
        return commit(recipe, store, table, quarantine, engine, started, overwrite)
    finally:
        engine.close()
