"""Method settings from a recipe: the recipe keys that are fields of the method's Settings dataclass."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def from_recipe(cls: type[T], recipe: dict[str, Any]) -> T:
    """Fields named in the recipe (YAML lists become tuples); the recipe's `word_counter` is `counter`."""
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items() if k in fields}
    if "word_counter" in recipe and "counter" in fields:
        values["counter"] = recipe["word_counter"]
    return cls(**values)
