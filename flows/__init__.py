"""Prefect: the one flow every recipe runs through (flows/build.py), the shard runner (flows/_runner.py) and
the API server builds share (flows/_server.py). The only place lendata imports Prefect."""

from __future__ import annotations

import contextlib
from pathlib import Path

from lendata.build import BuildReport, configure_prefect
from lendata.recipes import Recipe


def run_recipe(recipe: Recipe, store: Path, overwrite: bool = False, progress: bool = True,
               verbose: bool = False) -> BuildReport:
    """Build a loaded recipe as a Prefect flow run named after its method."""
    configure_prefect(store, verbose)  # before prefect is first imported: it reads its settings at import
    method = recipe.method
    ray, shards = recipe.run.runner == "ray", recipe.run.shards
    if (ray or shards > 1) and not method.sharded:
        from lendata.methods import registry

        sharded = ", ".join(name for name, m in registry().items() if m.sharded)
        raise ValueError(f"recipe {recipe.name!r}: the {method.name} method runs on the local runner in one shard "
                         f"only (runner: ray and shards are supported by: {sharded})")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows._runner import check_ray_api, task_runner
    from flows._server import shared_server
    from flows.build import build

    if ray:
        check_ray_api(recipe)
    run = {"recipe": recipe, "store": str(store), "overwrite": overwrite, "progress": progress}
    flow = build.with_options(name=method.name)
    with shared_server() as url, temporary_settings({PREFECT_API_URL: url}):
        try:
            if not ray:
                return flow(**run)
            return flow.with_options(task_runner=task_runner(recipe, url))(**run)
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
