"""Where a build's stages and shards run under Prefect: `runner: local` or `runner: ray`.

Every stage a method names (`build.step`) and every shard (`build.map`) is a Prefect task. On the local runner
the shards run one after another in this process on the build's engines. On Ray they are submitted through
prefect-ray's RayTaskRunner and each opens its own engines on its worker: an engine holds a loaded model or a
connection pool, neither of which can travel between processes. Every request's seed depends on its row alone
and results are joined in shard order, so the data are the same whichever runner ran them (tests/test_ray.py
checks the content hash).
"""

from __future__ import annotations

import contextlib
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
from lendata.memory import worker_env
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
                 offset: int, extra: tuple[Any, ...], progress: Any = None) -> tuple[Any, Usage, dict[str, Any]]:
    """One shard on a Ray worker, with engines of its own: (result, their usage, where it ran). `progress`:
    a `ShardProgress` reporting to the driver's bar as the shard goes."""
    threads = max(1, int(recipe.run.ray.cpus_per_shard or 1))
    engines = engine_pool(recipe, Path(store), cache_file(driver_host), threads=threads)
    try:
        result = step(recipe.settings, items, offset, engines, progress or no_progress, *extra)
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
        from prefect_ray.context import remote_options

        pieces = cut(items, self.recipe.run.shards)
        ray = self.recipe.run.ray
        done: dict[int, Any] = {}
        where: dict[int, dict[str, Any]] = {}
        started = time.monotonic()
        # live reports only from steps that count the map's `total` with one bar (base.Build.map)
        tally = progress_tally() if build.show_progress and getattr(step, "live_progress", False) else None
        try:
            with GenerationProgress(total or len(items), f"{label} on Ray, {len(pieces)} shards",
                                    enabled=build.show_progress) as bar:
                with remote_options(num_cpus=ray.cpus_per_shard or 1, num_gpus=ray.gpus_per_shard or 0):
                    futures = [remote_shard.with_options(name=f"{label} shard").submit(
                        self.recipe, self.store, socket.gethostname(), step, piece, offset, extra,
                        ShardProgress(tally, i) if tally is not None else None)
                        for i, (offset, piece) in enumerate(pieces)]
                shard_of = {f.wrapped_future: i for i, f in enumerate(futures)}
                pending = list(shard_of)
                counted = {i: [0, 0] for i in range(len(pieces))}  # what the bar shows of each shard
                while pending:
                    # Ray's own wait: prefect's `wait` adds a done-callback to every pending future at each call,
                    # and Ray runs them all (each fetching the result) when the shard ends
                    ready, pending = _ray().wait(pending, num_returns=len(pending), timeout=PROGRESS_SECONDS)
                    if tally is not None:  # what the running shards did since the last look
                        tally = take_reports(tally, counted, bar)
                    for ref in ready:
                        i = shard_of[ref]
                        result, usage, ran = futures[i].result()
                        done[i] = result
                        # seconds: from submission to result, so a shard that waited for a free worker shows it
                        where[i] = {"label": label, "offset": pieces[i][0], "rows": len(pieces[i][1]),
                                    "runner": "ray", **ran, "engine_calls": usage.calls,
                                    "seconds": round(time.monotonic() - started, 2), **shard_accounting(result)}
                        moved = result.progress() if callable(getattr(result, "progress", None)) else None
                        rows, tokens = moved or (len(pieces[i][1]), usage.tokens)
                        # the shard's own total settles the bar: what its reports missed, or all of it
                        bar.advance(max(0, rows - counted[i][0]), max(0, tokens - counted[i][1]))
                        counted.pop(i)  # a late report of a settled shard is in its total already
                        build.remote_usage = build.remote_usage + usage
        finally:
            if tally is not None:
                with contextlib.suppress(Exception):  # gone with its node: nothing to stop
                    _ray().kill(tally)
        build.shards.extend(where[i] for i in range(len(pieces)))
        return [done[i] for i in range(len(pieces))]


# --- one progress bar on the driver for shards on Ray workers ------------------------------------------------

PROGRESS_SECONDS = 1.0  # how often the driver's bar takes the shards' reports


def _ray() -> Any:
    import ray

    return ray


class _Tally:
    """A Ray actor on the driver's cluster: the rows and tokens each shard reported since the driver last
    took them."""

    def __init__(self) -> None:
        self.new: dict[int, tuple[int, int]] = {}

    def add(self, shard: int, rows: int, tokens: int) -> None:
        seen = self.new.get(shard, (0, 0))
        self.new[shard] = (seen[0] + rows, seen[1] + tokens)

    def take(self) -> dict[int, tuple[int, int]]:
        out, self.new = self.new, {}
        return out


def progress_tally() -> Any:
    """A `_Tally` actor (no CPU of its own: it must never wait for a worker slot the shards hold)."""
    return _ray().remote(num_cpus=0)(_Tally).remote()


def tally_take(tally: Any) -> dict[int, tuple[int, int]]:
    return _ray().get(tally.take.remote())


def take_reports(tally: Any, counted: dict[int, list[int]], bar: Any) -> Any:
    """Move the bar by what unsettled shards (those still in `counted`) reported since the last look; the
    tally, or None once it is lost (its node died): the bar then moves as each shard ends, and the build goes
    on."""
    try:
        reports = tally_take(tally)
    except Exception as e:  # noqa: BLE001 - progress must never fail a build
        print(f"progress reports from Ray workers lost ({type(e).__name__}); the bar moves per shard from now",
              file=sys.stderr, flush=True)
        return None
    for i, (rows, tokens) in reports.items():
        if i in counted:
            counted[i][0] += rows
            counted[i][1] += tokens
            bar.advance(rows, tokens)
    return tally


class _ShardBar:
    def __init__(self, tally: Any, shard: int):
        self.tally, self.shard = tally, shard

    def update(self, index: int, result: Any) -> None:
        self.advance(1, 0 if getattr(result, "cached", False) else int(getattr(result, "completion_tokens", 0)))

    def advance(self, rows: int, tokens: int) -> None:
        self.tally.add.remote(self.shard, rows, tokens)  # fire and forget: a report never waits


class ShardProgress:
    """The progress factory a shard on a Ray worker gets (lendata.methods.base.Progress): its bars report to
    the driver's one bar through the `_Tally` actor instead of drawing."""

    def __init__(self, tally: Any, shard: int):
        self.tally, self.shard = tally, shard

    def __call__(self, total: int | None, label: str) -> Any:
        return contextlib.nullcontext(_ShardBar(self.tally, self.shard))


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
                            "runtime_env": {"env_vars": {**env, **worker_env(), "PREFECT_API_URL": api_url}}}
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
