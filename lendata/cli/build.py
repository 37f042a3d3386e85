"""`lendata build`, `lendata recipes` and `lendata engines`: recipes, and running them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lendata.cli._app import StoreOpt, app, fail, out, store_root


@app.command()
def build(
    recipe: Annotated[str, typer.Argument(help="Recipe name under pipelines/ (or a path to a .yaml).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: key=value.")] = None,
    store: StoreOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a committed version with the same number.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's flow and task logs.")] = False,
) -> None:
    """Run a recipe through its Prefect flow and commit the result as a dataset version.

    Every key the recipe's method takes can be set, e.g. `--set n=3 --set glob=**/*.md --set levels=16k,32k`
    (`lendata recipes NAME` lists them)."""
    from lendata import recipes
    from lendata.build import BuildFailed
    from lendata.inputs import InputError
    from lendata.store import StoreError

    root = store_root(store)
    try:
        loaded = recipes.load(recipe, recipes.parse_sets(set_ or []))
    except recipes.RecipeError as e:
        fail(str(e), 2)
    from flows import run_recipe

    try:
        report = run_recipe(loaded, root, overwrite=overwrite, progress=progress, verbose=verbose)
    except (BuildFailed, InputError, StoreError, ValueError, FileNotFoundError, ConnectionError) as e:
        fail(str(e))
    summary = _summary(root, loaded, report)
    if as_json:
        print(json.dumps({**report.as_dict(), **({"summary": summary} if summary else {})}))
        return
    if summary:
        t = Table(*summary[0].keys(), title=f"{report.dataset}@{report.version} by {loaded.run.summary_by}")
        for row in summary:
            t.add_row(*(str(v) for v in row.values()))
        out.print(t)
    state = "unchanged (identical content already committed)" if report.unchanged else "committed"
    out.print(
        f"[bold green]{report.dataset}@{report.version}[/] {state}: {report.rows} rows, "
        f"{report.quarantined} quarantined, {report.engine_calls} engine calls, {report.cache_hits} cache hits, "
        f"{report.seconds:.1f}s"
    )
    out.print(f"data: {report.path}")


def _summary(store: Path, recipe, report) -> list[dict] | None:
    """Produced length per value of the recipe's `summary_by` column (e.g. the LongWrite-Ruler probe)."""
    if not recipe.run.summary_by:
        return None
    from lendata.catalog import query as run

    col = recipe.run.summary_by.replace('"', '""')
    df = run(store, f'SELECT "{col}", count(*) AS rows, round(avg(response_words)) AS mean_words, '
                    f'max(response_words) AS max_words, round(avg(length_score), 1) AS mean_sl, '
                    # rows whose target the context window capped: the window stopped them, not the model
                    f'count(*) FILTER (WHERE capped) AS window_capped, '
                    # how the texts ended: the model stopped, or the window's end stopped it
                    f"count(*) FILTER (WHERE stopped_by = 'model') AS model_stopped, "
                    f"count(*) FILTER (WHERE stopped_by = 'window') AS window_stopped "
                    f'FROM "{report.dataset}@{report.version}" GROUP BY 1 ORDER BY 1')
    return df.to_dicts()


@app.command()
def engines(
    name: Annotated[str, typer.Option(help="Engine to load and time.")] = "llamacpp",
    tokens: Annotated[int, typer.Option(help="Tokens to generate for the speed check.")] = 64,
) -> None:
    """List the engines, load one (the default) and print its speed."""
    from lendata.engines import ENGINES, Request, make_engine

    for key, desc in ENGINES.items():
        out.print(f"  [bold]{key:9}[/] {desc}")
    t0 = time.monotonic()
    try:
        engine = make_engine(name)
    except Exception as e:
        fail(f"cannot load {name}: {e}")
    loaded = time.monotonic() - t0
    req = Request(messages=({"role": "user", "content": "Write about the sea."},), max_tokens=tokens,
                  min_tokens=tokens, temperature=0.7, seed=0)
    t1 = time.monotonic()
    res = engine.generate([req])[0]
    gen = time.monotonic() - t1
    engine.close()
    if not res.ok:
        fail(f"{name} failed to generate: {res.error}")
    out.print(
        f"{name}: {engine.model_id}, context {engine.context_window} tokens; loaded in {loaded:.2f}s, "
        f"{res.completion_tokens} tokens in {gen:.2f}s = {res.completion_tokens / gen:.1f} tok/s"
    )


@app.command()
def recipes(
    name: Annotated[str | None, typer.Argument(help="A recipe: list its keys (type, default, value, help).")] = None,
) -> None:
    """List the recipes, or one recipe's keys with their type, code default, the recipe's value and help."""
    from lendata import recipes as rc

    if name is None:
        t = Table("recipe", "method", "dataset")
        for stem in rc.available():
            try:
                loaded = rc.load(stem)
                t.add_row(stem, loaded.run.flow, loaded.dataset)
            except rc.RecipeError as e:
                t.add_row(stem, "[red]invalid[/]", str(e))
        out.print(t)
        out.print("keys of one recipe: lendata recipes NAME")
        return
    try:
        rows = rc.describe(name)
    except (rc.RecipeError, ValueError) as e:
        fail(str(e), 2)
    t = Table("key", "type", "default", "recipe", "help", title=f"recipe {name}")
    for row in rows:
        value = "" if row["recipe"] is rc.MISSING else rc.shown(row["recipe"])
        t.add_row(row["key"], row["type"], rc.shown(row["default"]), value, row["help"])
    out.print(t)
