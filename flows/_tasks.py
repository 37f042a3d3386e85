"""Tasks every recipe flow shares: reading the instructions, and validating + committing the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from lendata.build import BuildReport, finish, load_inputs


@task(cache_policy=NONE, name="load instructions")
def load(recipe: dict[str, Any]):
    return load_inputs(recipe)


@task(cache_policy=NONE, name="validate and commit")
def commit(recipe, store, table, quarantine, engine, started, overwrite, schemas=None, meta=None) -> BuildReport:
    return finish(recipe, Path(store), table, quarantine, engine, started, overwrite, extra_meta=meta,
                  schemas=schemas)
