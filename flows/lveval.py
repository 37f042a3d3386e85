"""Flow for LV-Eval-style long-context sets: QA items -> confusing facts -> replacement tables -> every length
level streamed into its own split of one version."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from prefect import flow as prefect_flow
from prefect import task
from prefect.cache_policies import NONE
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lendata import store as st
from lendata.build import BuildFailed, BuildReport, input_identity, open_engine
from lendata.inputs import InputError
from lendata.methods import lveval as lv
from lendata.methods.lveval_build import input_path, publish, write_levels
from lendata.methods.lveval_context import depth_plan
from lendata.methods.lveval_pool import make_unit, parse_level, read_pool
from lendata.methods.settings import from_recipe
from lendata.progress import GenerationProgress


@task(cache_policy=NONE, name="load QA items")
def load_items(recipe):
    return lv.read_items(input_path(recipe, "input"), n=recipe.get("n"))


@task(cache_policy=NONE, name="load distractor pool")
def load_pool(recipe, unit, cap):
    return read_pool(input_path(recipe, "distractors"), unit, cap, text_field=recipe.get("text_field", "text"),
                     glob=recipe.get("glob", "**/*.txt"))


@task(cache_policy=NONE, name="confusing-fact insertion")
def facts(items, engine, s, progress):
    with GenerationProgress(len(items) * s.fact_attempts, "confusing facts (calls, at most)",
                            enabled=progress) as bar:
        return lv.confusing_facts(items, engine, s, on_result=bar.update)


@task(cache_policy=NONE, name="keyword and phrase replacement")
def replacements(items, s, engine, progress):
    with GenerationProgress(len(items) if s.kpr == "engine" else 0, "replacement tables",
                            enabled=progress and s.kpr == "engine") as bar:
        return lv.replacement_tables(items, s, engine, on_result=bar.update)


@task(cache_policy=NONE, name="assemble levels and publish")
def levels(recipe, store, items, found, tables, rejected, quarantine, pool, unit, s, meta, overwrite, progress):
    total = sum(len(depth_plan(s, len(it.documents))) for it in items) * len(s.levels)
    with Progress(TextColumn("[bold]contexts {task.fields[level]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), disable=not progress) as bar:
        job = bar.add_task("contexts", total=total, level="")
        with st.Stage(Path(store), recipe["dataset"]) as stage:
            stats, bad = write_levels(items, found, tables, pool, unit, s, recipe["dataset"], stage,
                                      on_record=lambda name: bar.update(job, advance=1, level=name))
            return publish(stage, recipe, rejected, quarantine + bad, {**meta, "levels": stats}, overwrite)


@prefect_flow(name="lveval", log_prints=False)
def flow(recipe: dict[str, Any], store: str, overwrite: bool = False, progress: bool = True) -> BuildReport:
    started = time.monotonic()
    s = from_recipe(lv.Settings, recipe)
    loaded = load_items(recipe)
    items = loaded.rows
    quarantine = [b.as_quarantine() for b in loaded.bad]
    if not items:
        reasons = "; ".join(f"{b.source}: {b.reason}" for b in loaded.bad[:3])
        raise InputError(f"no usable QA item in {recipe['input']}" + (f" ({reasons})" if reasons else ""))
    share = len(loaded.bad) / (len(items) + len(loaded.bad))
    if share > float(recipe.get("max_quarantine_share", 0.5)):
        first = loaded.bad[0]
        raise BuildFailed(f"{len(loaded.bad)} of {len(items) + len(loaded.bad)} QA items are unusable "
                          f"({share:.0%} > max_quarantine_share); first: {first.source}: {first.reason}")
    languages = sorted({it.language for it in items})
    if s.unit == "auto" and len(languages) > 1:
        raise InputError(f"the QA items mix languages ({', '.join(languages)}): LV-Eval counts en levels in words "
                         "and zh in characters, so build each language separately or set `unit`")
    unit = make_unit(s.unit, languages[0], recipe.get("tokenizer"))
    cap = int(max(parse_level(x) for x in s.levels) * s.pool_factor)
    pool = load_pool(recipe, unit, cap)
    quarantine += pool.bad
    engine = open_engine(recipe, Path(store)) if (s.facts_per_item > 0 or s.kpr == "engine") else None
    try:
        found = facts(items, engine, s, progress) if engine else lv.FactsOutcome({}, [])
        tables, kpr_rejected = replacements(items, s, engine, progress)
        meta = {"recipe": recipe["_name"],
                "recipe_settings": {k: v for k, v in recipe.items() if not k.startswith("_")},
                "inputs": input_identity(recipe),
                "settings": dataclasses.asdict(s), "unit": unit.name,
                "engine": engine.name if engine else None, "model": engine.model_id if engine else None,
                "distractor_pool": {"source": str(recipe["distractors"]), "documents": len(pool.texts),
                                    "units": pool.total},
                "confusing_facts": sum(len(v) for v in found.facts.values()),
                "replacement_entries": sum(len(v) for v in tables.values())}
        version = levels(recipe, store, items, found.facts, tables, found.rejected + kpr_rejected, quarantine, pool,
                         unit, s, meta, overwrite, progress)
    finally:
        if engine:
            engine.close()
    return BuildReport(dataset=version.dataset, version=version.version, path=str(version.path),
                       rows=version.rows(), quarantined=version.rows("quarantine"),
                       engine_calls=engine.calls if engine else 0, cache_hits=engine.hits if engine else 0,
                       seconds=round(time.monotonic() - started, 2), unchanged=version.unchanged)

