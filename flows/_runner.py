"""Where a flow's generation runs: `runner: local` or `runner: ray`, and the rows cut into `shards`.

Each shard is one Prefect task over a contiguous run of rows. On the local runner the shards run one after
another in this process on the flow's engine. On Ray they are submitted through prefect-ray's RayTaskRunner
and each opens its own engine on its worker: an engine holds a loaded model or a connection pool, neither of
which can travel between processes. Every request's seed depends on its row alone and results are joined in
shard order, so the data are the same whichever runner ran them (tests/test_ray.py checks the content hash).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lendata.build import open_engine
from lendata.progress import GenerationProgress

# settings a Ray worker needs to join the build's Prefect server the way the driver does; secrets are not
# forwarded (they would show in Ray's job metadata): set API keys in the environment of every node
FORWARDED_ENV = ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL",
                 "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")


@dataclass
class EngineTally:
    """What a build report needs of an engine, summed over shards that each opened their own."""

    name: str = ""
    model_id: str = ""
    calls: int = 0
    hits: int = 0
    tokens: int = 0

    host: str = ""  # where the shard ran: host, process, and Ray node when on Ray
    pid: int = 0
    ray_node: str | None = None

    def add(self, engine: Any) -> None:
        self.name = "+".join(dict.fromkeys(x for x in (*self.name.split("+"), *engine.name.split("+")) if x))
        self.model_id = "+".join(dict.fromkeys(x for x in (*self.model_id.split("+"),
                                                          *engine.model_id.split("+")) if x))
        self.calls += engine.calls
        self.hits += engine.hits
        self.tokens += engine.tokens


def cut(items: Sequence[Any], shards: int) -> list[tuple[int, list[Any]]]:
    """(offset of its first item, items) for at most `shards` contiguous, near-equal, non-empty pieces."""
    n = len(items)
    shards = max(1, min(shards, n))
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    return [(a, list(items[a:b])) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def on_ray(recipe: dict[str, Any]) -> bool:
    return recipe.get("runner", "local") == "ray"


def shard_engine_options(recipe: dict[str, Any], engine: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """A shard's engine options: on Ray, llama.cpp gets the CPUs the shard was given instead of every core of
    the node, which the other shards on it are using too."""
    if not on_ray(recipe) or engine != "llamacpp":
        return dict(options or {})
    return {"n_threads": max(1, int(recipe["ray"].get("cpus_per_shard") or 1)), **(options or {})}


def shard_engine_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    options = shard_engine_options(recipe, recipe.get("engine", "llamacpp"), recipe.get("engine_options"))
    return {**recipe, "engine_options": options}


def cache_file(recipe: dict[str, Any]) -> str:
    """The response cache of a shard: the build's own on the driver's host; on another node a file of that
    node's, since SQLite's WAL cannot be shared between hosts (a rerun resumes from the node that ran a shard
    before; a shard that moves to another node is generated again, with the same seeds)."""
    host = socket.gethostname()
    return "responses.sqlite" if host == recipe.get("_driver_host", host) else f"responses-{host}.sqlite"


def with_engine(recipe: dict[str, Any], store: str, engine: Any, work: Callable[[Any], Any],
                opener: Callable[..., Any] = open_engine) -> tuple[Any, Any]:
    """(work(engine), engine): the flow's engine when given, else one opened (and closed) for this shard by
    `opener(recipe, store, cache_file)`: `open_engine`, or `RoleEngines` for a flow with several roles."""
    if engine is not None:
        return work(engine), engine
    own = opener(shard_engine_recipe(recipe), Path(store), cache_file(recipe))
    try:
        result = work(own)
        return result, EngineTally(own.name, own.model_id, own.calls, own.hits, own.tokens,
                                   socket.gethostname(), os.getpid(), _ray_node())
    finally:
        own.close()


def _ray_node() -> str | None:
    ray = sys.modules.get("ray")  # imported in a Ray worker; never imported here just to look
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


@dataclass
class Sharded:
    results: list[Any]  # each shard's result, in shard order
    engine: Any  # what the build report counts: the flow's engine locally, the shards' summed tally on Ray
    shards: list[dict[str, Any]]  # per shard: offset, rows, and where it ran (for the manifest)

    @property
    def meta(self) -> dict[str, Any]:
        """For the manifest; nothing for the plain case of one local shard."""
        ray = any(s["runner"] == "ray" for s in self.shards)
        return {"shards": self.shards} if ray or len(self.shards) > 1 else {}


def run_shards(step: Any, recipe: dict[str, Any], store: str, items: Sequence[Any], engine: Any, progress: bool,
               label: str) -> Sharded:
    """Run the task `step(recipe, store, items, offset, engine, progress, label)` over the shards; `step`
    returns (result, engine) as `with_engine` does."""
    pieces = cut(items, int(recipe.get("shards") or 1))
    if not on_ray(recipe):
        results = []
        for i, (offset, piece) in enumerate(pieces):
            name = label if len(pieces) == 1 else f"{label} {i + 1}/{len(pieces)}"
            results.append(step(recipe, store, piece, offset, engine, progress, name)[0])
        where = [{"offset": o, "rows": len(p), "runner": "local", "host": socket.gethostname(), "pid": os.getpid()}
                 for o, p in pieces]
        return Sharded(results, engine, where)
    from prefect.futures import as_completed
    from prefect_ray.context import remote_options

    opts = recipe["ray"]
    resources = {"num_cpus": opts.get("cpus_per_shard") or 1, "num_gpus": opts.get("gpus_per_shard") or 0}
    recipe = {**recipe, "_driver_host": socket.gethostname()}
    tally, done, where = EngineTally(), {}, {}
    with GenerationProgress(len(items), f"{label} on Ray, {len(pieces)} shards", enabled=progress) as bar:
        with remote_options(**resources):
            futures = {step.submit(recipe, store, piece, offset, None, False, label): (i, len(piece))
                       for i, (offset, piece) in enumerate(pieces)}
        for future in as_completed(list(futures)):
            i, rows = futures[future]
            result, used = future.result()
            done[i] = result
            where[i] = {"offset": pieces[i][0], "rows": rows, "runner": "ray", "host": used.host,
                        "pid": used.pid, "ray_node": used.ray_node, "engine_calls": used.calls}
            bar.advance(rows, used.tokens)
            tally.add(used)
    return Sharded([done[i] for i in range(len(pieces))], tally, [where[i] for i in range(len(pieces))])


def task_runner(recipe: dict[str, Any], api_url: str) -> Any:
    """prefect-ray's RayTaskRunner for the recipe's `ray` settings; its workers report to `api_url`."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise ValueError("runner: ray needs Ray and prefect-ray: pip install 'lendata[ray]'") from None
    opts = recipe["ray"]
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    verbose = os.environ.get("PREFECT_LOGGING_LEVEL") in ("DEBUG", "INFO")  # `lendata build -v`
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose, "logging_level": "warning",
                            "runtime_env": {"env_vars": {**env, "PREFECT_API_URL": api_url}}}
    if not opts.get("address"):
        init["num_cpus"] = opts.get("num_cpus") or os.cpu_count()
        # a local cluster needs no token; Ray would otherwise write one under the home directory
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    return RayTaskRunner(address=opts.get("address"), init_kwargs=init)


def check_ray_api(recipe: dict[str, Any]) -> None:
    """A remote cluster needs a Prefect server every node can reach: the store's own listens on 127.0.0.1."""
    if os.environ.get("PREFECT_API_URL"):
        return
    address = str(recipe["ray"].get("address") or "")
    host = urlparse(address if "://" in address else f"x://{address}").hostname
    if address and address != "auto" and host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"runner: ray on the cluster at {address} needs a Prefect server every node can reach: "
                         "start one (prefect server start --host 0.0.0.0) and set PREFECT_API_URL")
