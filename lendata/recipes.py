"""Recipes: YAML files under `pipelines/` naming a flow and its settings, overridable with `--set key=value`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from lendata.paths import project_root

# mappings whose keys are free-form (passed through to an engine or method): any sub-key may be set
OPEN_KEYS = {"engine_options", "generator", "extender", "iteration_roles", "trainer"}


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
    recipe["_path"] = str(path)
    recipe["_name"] = path.stem
    return recipe


def resolve_input(recipe: dict[str, Any], value: str) -> Path:
    """Input paths in a recipe are relative to the recipe file; on the command line, to the cwd."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (Path(recipe["_path"]).parent / p).resolve()
