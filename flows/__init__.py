"""Prefect flows: thin wiring of lendata functions into tasks. The only place lendata imports Prefect."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from lendata.build import BuildReport, configure_prefect


def run_recipe(
    recipe: dict[str, Any], store: Path, overwrite: bool = False, progress: bool = True, verbose: bool = False
) -> BuildReport:
    """Run a loaded recipe through its flow (`flows/<flow>.py`, function `flow`)."""
    configure_prefect(store, verbose)  # before prefect is first imported: it reads its settings at import
    name = recipe["flow"]
    try:
        module = importlib.import_module(f"flows.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"flows.{name}":
            raise
        raise ValueError(f"recipe {recipe['_name']!r} names flow {name!r}, which does not exist") from None
    return module.flow(recipe=recipe, store=str(store), overwrite=overwrite, progress=progress)
