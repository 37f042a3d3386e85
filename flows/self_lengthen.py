"""Flow for Self-Lengthen: per macro-iteration self-instruct -> generate -> extend -> training sets
(-> optional trainer whose adapter the next iteration uses); then length-constrained queries; one version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import flow as prefect_flow
from prefect import task
from prefect.cache_policies import NONE

from flows._runner import EngineTally, on_ray, run_shards, shard_engine_options, with_engine
from flows._tasks import commit
from lendata.build import RoleEngines, load_inputs
from lendata.methods import self_lengthen as sl
from lendata.methods import self_lengthen_sets as sets
from lendata.methods.budget import language_of
from lendata.methods.constraints import TYPES
from lendata.paths import work_dir
from lendata.progress import GenerationProgress
from lendata.trainer import train_between

SHARDED = True  # generate + extend run in `shards` tasks per iteration, on Ray with `runner: ray`
SCHEMAS = {"instructions": "sl_instructions", "responses": "sl_responses", "gen_sft": "sl_pairs",
           "ext_sft": "sl_pairs", "queries": "sl_queries"}


@task(cache_policy=NONE, name="step 0: self-instruct")
def instruct(seeds, engine, s, iteration, lora, progress):
    with GenerationProgress(s.instructions, f"iter {iteration} self-instruct", enabled=progress) as bar:
        return sl.self_instruct(seeds, engine, s, iteration, lora, on_result=bar.update)


@task(cache_policy=NONE, name="steps 1-2: generate and extend")
def generate_and_extend(recipe: dict[str, Any], store: str, instructions: list[dict[str, Any]], offset: int,
                        engines, progress: bool, label: str):
    """One shard of an iteration's instructions: the Generator answers them, the Extender lengthens the
    answers. `recipe["_roles"]` holds the iteration's role settings (engine, options, LoRA adapter)."""
    s, cfg = sl.Settings.from_recipe(recipe), recipe["_roles"]

    def work(roles):
        gen, ext = (roles.get(cfg[r]["engine"], shard_engine_options(recipe, cfg[r]["engine"],
                                                                     cfg[r]["engine_options"]))
                    for r in sl.ROLES)
        with GenerationProgress(len(instructions) * s.samples, f"{label} generate", enabled=progress) as bar:
            responses = sl.generate(instructions, gen, s, cfg["generator"]["lora"], on_result=bar.update)
        todo = sum(r.failed is None for r in responses)
        # an upper bound: two calls per micro-round; rows that succeed in their first attempt finish early
        with GenerationProgress(todo * 2 * s.micro_rounds * s.extend_attempts, f"{label} extend (calls, at most)",
                                enabled=progress) as bar:
            return sl.extend(responses, ext, s, cfg["extender"]["lora"], on_result=bar.update)

    return with_engine(recipe, store, engines, work, opener=RoleEngines)


@task(cache_policy=NONE, name="train between iterations")
def train(recipe, store, iteration, gen_sft, ext_sft) -> dict[str, str]:
    root = work_dir(Path(store)) / recipe["dataset"] / "trainer"
    return train_between(recipe["trainer"], root, iteration, gen_sft, ext_sft)


@prefect_flow(name="self_lengthen", log_prints=False)
def flow(recipe: dict[str, Any], store: str, overwrite: bool = False, progress: bool = True):
    started = time.monotonic()
    s = sl.Settings.from_recipe(recipe)
    if recipe.get("n"):
        s.instructions = int(recipe["n"])
    loaded = load_inputs({**recipe, "n": None})  # `n` is new instructions per iteration, not seeds to read
    seeds = [{**r, "language": r.get("language") or language_of(r["instruction"])} for r in loaded.rows]
    engines = RoleEngines(recipe, Path(store))
    quarantine = [b.as_quarantine() for b in loaded.bad]
    out: dict[str, list[pa.Table]] = {name: [] for name in SCHEMAS if name != "queries"}
    kept_all: list[sl.Response] = []
    adapters: dict[str, str] = {}
    roles_used, shards, shard_engines = [], [], EngineTally()
    try:
        for it in range(1, int(recipe.get("iterations", 1)) + 1):
            cfg = {role: sl.role_config(recipe, role, it, adapters.get(role)) for role in sl.ROLES}
            gen, ext = (engines.get(cfg[r]["engine"], cfg[r]["engine_options"]) for r in sl.ROLES)
            roles_used.append({"iteration": it, **{r: {"engine": cfg[r]["engine"], "lora": cfg[r]["lora"]}
                                                   for r in sl.ROLES}})
            instructions, rejected = instruct(seeds, gen, s, it, cfg["generator"]["lora"], progress)
            done = run_shards(generate_and_extend, {**recipe, "_roles": cfg}, store, instructions,
                              None if on_ray(recipe) else engines, progress, f"iter {it}")
            responses = [r for part in done.results for r in part]
            shards.append({"iteration": it, "shards": done.shards})
            if on_ray(recipe):
                shard_engines.add(done.engine)
            kept, dropped = sets.keep_long(responses, s, it)
            quarantine += rejected + sets.failures(responses) + dropped
            gen_sft, ext_sft = sets.sft_tables(kept, s)
            out["instructions"].append(pa.Table.from_pylist(instructions, schema=sets.INSTRUCTIONS_SCHEMA))
            out["responses"].append(sets.responses_table(kept, s, ext.name, ext.model_id))
            out["gen_sft"].append(gen_sft)
            out["ext_sft"].append(ext_sft)
            kept_all += kept
            if recipe.get("trainer") and it < int(recipe.get("iterations", 1)):
                adapters = train(recipe, store, it, gen_sft, ext_sft)
        q = recipe.get("queries") or {}
        queries = sets.queries_table(kept_all, s, q.get("min_words", 2000), q.get("max_words", 8000),
                                     tuple(q.get("types", TYPES)), q.get("p1000", 0.8), q.get("zh_numerals", False))
        tables = {name: pa.concat_tables(parts) for name, parts in out.items()}
        tables["queries"] = queries
        used = engines
        if on_ray(recipe):  # the driver's self-instruct calls plus the shards' own engines
            used = shard_engines
            used.add(engines)
        ran = {"shards": shards} if on_ray(recipe) or int(recipe.get("shards") or 1) > 1 else {}
        return commit(recipe, store, tables, quarantine, used, started, overwrite, schemas=SCHEMAS,
                      meta={"roles": roles_used, **ran})
    finally:
        engines.close()
