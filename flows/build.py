"""The flow every recipe runs as: `lendata.build.run` with its stages and shards as Prefect tasks, shards
submitted to Ray with `runner: ray` (flows/_runner.py). The build logic itself is lendata's, not the flow's."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows._runner import PrefectRunner
from lendata import build as builds
from lendata.build import BuildReport
from lendata.recipes import Recipe


@flow(name="build", log_prints=False, validate_parameters=False)
def build(recipe: Recipe, store: str, overwrite: bool = False, progress: bool = True) -> BuildReport:
    return builds.run(recipe, Path(store), overwrite, progress, runner=PrefectRunner(recipe, store))
