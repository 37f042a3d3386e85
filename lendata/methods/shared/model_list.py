"""A recipe's list of models to sample (`models: [{name, engine, engine_options}]`): checked when the recipe
loads, opened one by one on each shard. Used by length_profile and preferences."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from lendata.engines import ENGINES
from lendata.engines.identity import model_name


def check_models(models: Sequence[dict[str, Any]]) -> None:
    """Each entry is {name?, engine?, engine_options?}, with a known engine and unique names."""
    names = set()
    for i, m in enumerate(models):
        unknown = set(m) - {"engine", "engine_options", "name"}
        if unknown:
            raise ValueError(f"models[{i}] has {sorted(unknown)}: each model is {{name, engine, engine_options}}")
        if m.get("engine") is not None and m["engine"] not in ENGINES:
            raise ValueError(f"models[{i}].engine is {m['engine']!r}; choose one of {', '.join(ENGINES)}")
        if not isinstance(m.get("engine_options") or {}, dict):
            raise ValueError(f"models[{i}].engine_options must be a mapping")
        name = m.get("name") or ""
        if name and name in names:
            raise ValueError(f"models[{i}]: the name {name!r} is used twice")
        names.add(name)


def open_models(models: Sequence[dict[str, Any]], engines: Any) -> Iterator[tuple[str, str, dict[str, Any], Any]]:
    """(label, engine name, options, engine) per model; the recipe's engine when none is listed. The label is the
    entry's `name`, else the model's name; two models with one label are an error."""
    specs = models or [{}]
    seen = set()
    for m in specs:
        name = m.get("engine") or engines.default[0]
        options = dict(m.get("engine_options") or ({} if m.get("engine") else engines.default[1]))
        engine = engines.get(name, options)
        label = m.get("name") or model_name(engine.model_id)
        if label in seen:
            raise ValueError(f"two models are labelled {label!r}: give each entry of `models` its own `name`")
        seen.add(label)
        yield label, name, options, engine
