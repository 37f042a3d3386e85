"""Prefect flows: thin wiring of lendata functions into tasks. The only place lendata imports Prefect."""

from __future__ import annotations

import contextlib
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
    ray, shards = recipe.get("runner", "local") == "ray", int(recipe.get("shards") or 1)
    if (ray or shards > 1) and not getattr(module, "SHARDED", False):
        raise ValueError(f"recipe {recipe['_name']!r}: the {name} flow runs on the local runner in one shard "
                         "only (runner: ray and shards are supported by the direct, agentwrite and self_lengthen "
                         "flows)")
    run = {"recipe": recipe, "store": str(store), "overwrite": overwrite, "progress": progress}
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows._runner import check_ray_api, task_runner
    from flows._server import shared_server

    if ray:
        check_ray_api(recipe)
    with shared_server() as url, temporary_settings({PREFECT_API_URL: url}):
        try:
            if not ray:
                return module.flow(**run)
            return module.flow.with_options(task_runner=task_runner(recipe, url))(**run)
        finally:
            _drain_prefect()


def _drain_prefect(timeout: float = 60) -> None:
    """Send Prefect's queued events and logs while the server is still leased. Left for later, they would be
    sent when the process exits, to a server that may have stopped by then (its linger over), and Prefect's
    exit handler retries them one by one: the process would hang."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)
