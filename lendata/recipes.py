"""Recipes: YAML files under `pipelines/` naming a flow and its settings, overridable with `--set key=value`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from lendata.paths import project_root

# mappings whose keys are free-form (passed through to an engine or method): any sub-key may be set
OPEN_KEYS = {"engine_options", "generator", "extender", "iteration_roles", "trainer"}


# How a recipe runs; every recipe takes these keys (README "Scale-out on Ray").
RUN_DEFAULTS: dict[str, Any] = {
    "runner": "local",  # local | ray
    "shards": 1,  # generation cut into this many tasks; under runner: ray each is a Ray task
    # address: an existing cluster ("auto", "HOST:6379", "ray://HOST:10001"); none starts a local one with
    # num_cpus CPUs (default: all). Each shard asks Ray for cpus_per_shard CPUs and gpus_per_shard GPUs.
    "ray": {"address": None, "num_cpus": None, "cpus_per_shard": 1, "gpus_per_shard": 0},
}
RUNNERS = ("local", "ray")


class RecipeError(ValueError):
    pass


def pipelines_dir() -> Path:
    local = Path.cwd() / "pipelines"
    return local if local.is_dir() else project_root() / "pipelines"


def available() -> list[str]:
    return sorted(p.stem for p in pipelines_dir().glob("*.yaml"))


def _flatten(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        keys.append(key)
        if isinstance(v, dict) and k not in OPEN_KEYS:
            keys.extend(_flatten(v, key + "."))
    return keys


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise RecipeError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return out


def load(name_or_path: str, sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe as a dict with overrides applied; `_path` and `_name` are added."""
    path = Path(name_or_path)
    if not (path.suffix in {".yaml", ".yml"} and path.is_file()):
        path = pipelines_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RecipeError(f"unknown recipe {name_or_path!r}; available: {', '.join(available()) or 'none'}")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from e
    if "flow" not in recipe:
        raise RecipeError(f"{path}: a recipe must name its `flow`")
    for key, default in RUN_DEFAULTS.items():
        value = recipe.setdefault(key, copy.deepcopy(default))
        if isinstance(default, dict) and isinstance(value, dict):
            recipe[key] = {**default, **value}
    valid = _flatten(recipe)
    recipe = copy.deepcopy(recipe)
    for key, value in (sets or {}).items():
        head = key.split(".")[0]
        if key not in valid and head not in OPEN_KEYS:
            raise RecipeError(f"unknown key {key!r} for recipe {path.stem}; valid keys: {', '.join(valid)}")
        node = recipe
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    _check_run(recipe, path)
    recipe["_path"] = str(path)
    recipe["_name"] = path.stem
    return recipe


def _check_run(recipe: dict[str, Any], path: Path) -> None:
    if recipe["runner"] not in RUNNERS:
        raise RecipeError(f"{path}: runner is {recipe['runner']!r}; use one of: {', '.join(RUNNERS)}")
    shards = recipe["shards"]
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise RecipeError(f"{path}: shards is {shards!r}; it must be a whole number of at least 1")
    ray = recipe["ray"]
    if not isinstance(ray, dict):
        raise RecipeError(f"{path}: ray must be a mapping ({', '.join(RUN_DEFAULTS['ray'])}), got {ray!r}")
    for key in ("num_cpus", "cpus_per_shard", "gpus_per_shard"):
        n, least = ray.get(key), 0 if key == "gpus_per_shard" else 1e-9
        if n is not None and (isinstance(n, bool) or not isinstance(n, int | float) or n < least):
            raise RecipeError(f"{path}: ray.{key} is {n!r}; it must be a positive number")


def resolve_input(recipe: dict[str, Any], value: str) -> Path:
    """Input paths in a recipe are relative to the recipe file; on the command line, to the cwd."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (Path(recipe["_path"]).parent / p).resolve()
