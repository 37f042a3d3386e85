"""Flow for AgentWrite: instructions -> plans -> paragraphs in rounds -> filters -> validated version."""

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
from lendata.methods import agentwrite as aw
from lendata.progress import GenerationProgress

SHARDED = True  # planning and writing run in `shards` tasks, on Ray with `runner: ray`


@task(cache_policy=NONE, name="plan, write and filter")
def plan_and_write(recipe: dict[str, Any], store: str, samples: list[aw.Sample], offset: int, engine,
                   progress: bool, label: str):
    settings = aw.Settings.from_recipe(recipe)

    def work(eng):
        with GenerationProgress(len(samples), f"{label}: planning", enabled=progress) as bar:
            aw.make_plans(samples, eng, settings, on_result=bar.update)
        with GenerationProgress(sum(len(x.plan) for x in samples), f"{label}: writing", enabled=progress) as bar:
            aw.write(samples, eng, settings, on_result=bar.update)
        return aw.to_table(samples, eng, settings)

    return with_engine(recipe, store, engine, work)


@prefect_flow(name="agentwrite", log_prints=False)
def flow(recipe: dict[str, Any], store: str, overwrite: bool = False, progress: bool = True) -> BuildReport:
    started = time.monotonic()
    settings = aw.Settings.from_recipe(recipe)
    loaded = load(recipe)
    engine = None if on_ray(recipe) else open_engine(recipe, Path(store))
    try:
        samples = aw.prepare(loaded.rows, settings)
        done = run_shards(plan_and_write, recipe, store, samples, engine, progress, "agentwrite")
        table = pa.concat_tables([t for t, _ in done.results]) if done.results else aw.OUTPUT_SCHEMA.empty_table()
        quarantine = [b.as_quarantine() for b in loaded.bad] + [q for _, filtered in done.results for q in filtered]
        return commit(recipe, store, table, quarantine, done.engine, started, overwrite, meta=done.meta)
    finally:
        if engine is not None:
            engine.close()
