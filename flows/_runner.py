"""Where a build's stages and shards run under Prefect: `runner: local` or `runner: ray`.

Every stage a method names (`build.step`) and every shard (`build.map`) is a Prefect task. On the local runner
the shards run one after another in this process on the build's engines. On Ray they are submitted through
prefect-ray's RayTaskRunner and each opens its own engines on its worker: an engine holds a loaded model or a
connection pool, neither of which can travel between processes. Every request's seed depends on its row alone
and results are joined in shard order, so the data are the same whichever runner ran them (tests/test_ray.py
checks the content hash).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import task
from prefect.cache_policies import NONE

from lendata.build import BuildRun, LocalRunner, cut, engine_pool, shard_accounting
from lendata.engines.pool import Usage
from lendata.methods.base import no_progress
from lendata.progress import GenerationProgress
from lendata.recipes import Recipe

# settings a Ray worker needs to join the build's Prefect server the way the driver does; secrets are not
# forwarded (they would show in Ray's job metadata): set API keys in the environment of every node
FORWARDED_ENV = ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL",
                 "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "LENDATA_HF_OFFLINE_DEFAULT",
                 "HF_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")


def cache_file(driver_host: str) -> str:
    """The response cache of a shard: the build's own on the driver's host; on another node a file of that
    node's, since SQLite's WAL cannot be shared between hosts (a rerun resumes from the node that ran a shard
    before; a shard that moves to another node is generated again, with the same seeds)."""
    host = socket.gethostname()
    return "responses.sqlite" if host == driver_host else f"responses-{host}.sqlite"


def _ray_node() -> str | None:
    ray = sys.modules.get("ray")  # imported in a Ray worker; never imported here just to look
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


@task(cache_policy=NONE, name="shard")
def remote_shard(recipe: Recipe, store: str, driver_host: str, step: Callable[..., Any], items: list[Any],
                 offset: int, extra: tuple[Any, ...]) -> tuple[Any, Usage, dict[str, Any]]:
    """One shard on a Ray worker, with engines of its own: (result, their usage, where it ran)."""
    threads = max(1, int(recipe.run.ray.cpus_per_shard or 1))
    engines = engine_pool(recipe, Path(store), cache_file(driver_host), threads=threads)
    try:
        result = step(recipe.settings, items, offset, engines, no_progress, *extra)
        usage = engines.usage()
    finally:
        engines.close()
    return result, usage, {"host": socket.gethostname(), "pid": os.getpid(), "ray_node": _ray_node()}


class PrefectRunner(LocalRunner):
    def __init__(self, recipe: Recipe, store: str):
        self.recipe, self.store = recipe, store

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return task(fn, name=name, cache_policy=NONE)(*args)

    def map(self, build: BuildRun, step: Callable[..., Any], items: Sequence[Any], label: str,
            *extra: Any, total: int | None = None) -> list[Any]:
        if self.recipe.run.runner != "ray":
            return super().map(build, step, items, label, *extra, total=total)
        from prefect.futures import as_completed
        from prefect_ray.context import remote_options

        pieces = cut(items, self.recipe.run.shards)
        ray = self.recipe.run.ray
        done: dict[int, Any] = {}
        where: dict[int, dict[str, Any]] = {}
        started = time.monotonic()
        with GenerationProgress(total or len(items), f"{label} on Ray, {len(pieces)} shards",
                                enabled=build.show_progress) as bar:
            with remote_options(num_cpus=ray.cpus_per_shard or 1, num_gpus=ray.gpus_per_shard or 0):
                futures = {remote_shard.with_options(name=f"{label} shard").submit(
                    self.recipe, self.store, socket.gethostname(), step, piece, offset, extra): i
                    for i, (offset, piece) in enumerate(pieces)}
            for future in as_completed(list(futures)):
                i = futures[future]
                result, usage, ran = future.result()
                done[i] = result
                # seconds: from submission to result, so a shard that waited for a free worker shows it
                where[i] = {"label": label, "offset": pieces[i][0], "rows": len(pieces[i][1]), "runner": "ray",
                            **ran, "engine_calls": usage.calls, "seconds": round(time.monotonic() - started, 2),
                            **shard_accounting(result)}
                moved = result.progress() if callable(getattr(result, "progress", None)) else None
                bar.advance(*(moved or (len(pieces[i][1]), usage.tokens)))
                build.remote_usage = build.remote_usage + usage
        build.shards.extend(where[i] for i in range(len(pieces)))
        return [done[i] for i in range(len(pieces))]


def task_runner(recipe: Recipe, api_url: str) -> Any:
    """prefect-ray's RayTaskRunner for the recipe's `ray` settings; its workers report to `api_url`."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise ValueError("runner: ray needs Ray and prefect-ray: pip install 'lendata[ray]'") from None
    opts = recipe.run.ray
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    verbose = os.environ.get("PREFECT_LOGGING_LEVEL") in ("DEBUG", "INFO")  # `lendata build -v`
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose, "logging_level": "warning",
                            "runtime_env": {"env_vars": {**env, "PREFECT_API_URL": api_url}}}
    if not opts.address:
        init["num_cpus"] = opts.num_cpus or os.cpu_count()
        # a local cluster needs no token; Ray would otherwise write one under the home directory
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    return RayTaskRunner(address=opts.address, init_kwargs=init)


def check_ray_api(recipe: Recipe) -> None:
    """A remote cluster needs a Prefect server every node can reach: the store's own listens on 127.0.0.1."""
    if os.environ.get("PREFECT_API_URL"):
        return
    address = str(recipe.run.ray.address or "")
    host = urlparse(address if "://" in address else f"x://{address}").hostname
    if address and address != "auto" and host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"runner: ray on the cluster at {address} needs a Prefect server every node can reach: "
                         "start one (prefect server start --host 0.0.0.0) and set PREFECT_API_URL")
