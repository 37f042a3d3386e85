"""Flow for AgentWrite: instructions -> plans -> paragraphs in rounds -> filters -> validated version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow as prefect_flow
from prefect import task
from prefect.cache_policies import NONE

from flows._tasks import commit, load
from lendata.build import BuildReport, open_engine
from lendata.methods import agentwrite as aw
from lendata.progress import GenerationProgress


@task(cache_policy=NONE, name="plan")
def plan(samples, engine, settings, progress: bool):
    with GenerationProgress(len(samples), "planning", enabled=progress) as bar:
        aw.make_plans(samples, engine, settings, on_result=bar.update)
    return samples


@task(cache_policy=NONE, name="write in rounds")
def write(samples, engine, settings, progress: bool):
    with GenerationProgress(sum(len(x.plan) for x in samples), "writing", enabled=progress) as bar:
        aw.write(samples, engine, settings, on_result=bar.update)
    return samples


@prefect_flow(name="agentwrite", log_prints=False)
def flow(recipe: dict[str, Any], store: str, overwrite: bool = False, progress: bool = True) -> BuildReport:
    started = time.monotonic()
    settings = aw.Settings.from_recipe(recipe)
    loaded = load(recipe)
    engine = open_engine(recipe, Path(store))
    try:
        samples = aw.prepare(loaded.rows, settings)
        samples = plan(samples, engine, settings, progress)
        samples = write(samples, engine, settings, progress)
        table, filtered = aw.to_table(samples, engine, settings)
        quarantine = [b.as_quarantine() for b in loaded.bad] + filtered
        return commit(recipe, store, table, quarantine, engine, started, overwrite)
    finally:
        engine.close()
