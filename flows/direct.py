"""Flow for the `direct` recipe: load instructions, answer each in one budgeted call, validate, commit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import flow as prefect_flow
from prefect import task
from prefect.cache_policies import NONE

from flows._runner import on_ray, run_shards, with_engine
from flows._tasks import commit, load
from lendata.build import BuildReport, open_engine
from lendata.methods.direct import SFT_SCHEMA, direct
from lendata.progress import GenerationProgress

SHARDED = True  # generation runs in `shards` tasks, on Ray with `runner: ray`


@task(cache_policy=NONE, name="generate")
def generate(recipe: dict[str, Any], store: str, rows: list[dict[str, Any]], offset: int, engine, progress: bool,
             label: str):
    def work(eng):
        with GenerationProgress(len(rows), label, enabled=progress) as bar:
            return direct(
                rows,
                eng,
                temperature=recipe.get("temperature", 0.5),
                top_p=recipe.get("top_p", 0.95),
                seed=recipe.get("seed", 42),
                first_index=offset,
                counter=recipe.get("word_counter", "longwriter"),
                min_ratio=recipe.get("min_ratio", 0.85),
                max_ratio=recipe.get("max_ratio", 1.3),
                on_result=bar.update,
            )

    return with_engine(recipe, store, engine, work)


@prefect_flow(name="direct", log_prints=False)
def flow(recipe: dict[str, Any], store: str, overwrite: bool = False, progress: bool = True) -> BuildReport:
    started = time.monotonic()
    loaded = load(recipe)
    engine = None if on_ray(recipe) else open_engine(recipe, Path(store))
    try:
        done = run_shards(generate, recipe, store, loaded.rows, engine, progress, "direct")
        table = pa.concat_tables([t for t, _ in done.results]) if done.results else SFT_SCHEMA.empty_table()
        quarantine = [b.as_quarantine() for b in loaded.bad] + [q for _, failed in done.results for q in failed]
        return commit(recipe, store, table, quarantine, done.engine, started, overwrite, meta=done.meta)
    finally:
        if engine is not None:
            engine.close()
