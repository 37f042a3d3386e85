"""The methods: one subpackage each, whose `METHOD` follows the contract in `base.py`.

The registry is the folder itself: every subpackage with a `METHOD` is a method, named by `METHOD.name`
(the `flow` a recipe names). Adding a method adds a package here and nothing to any list.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


class UnknownMethod(ValueError):
    pass


def _module(name: str) -> Any:
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        return None


def registry() -> dict[str, Any]:
    """Every method by name."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg and info.name != "shared":
            method = getattr(_module(info.name), "METHOD", None)
            if method is not None:
                found[method.name] = method
    return dict(sorted(found.items()))


def get(name: str) -> Any:
    """The method a recipe's `flow` names."""
    if name.isidentifier() and name != "shared":
        method = getattr(_module(name), "METHOD", None)
        if method is not None and method.name == name:
            return method
    methods = registry()
    if name in methods:
        return methods[name]
    raise UnknownMethod(f"no method {name!r}; the methods are: {', '.join(methods)}")


def method_of(manifest: dict[str, Any]) -> Any:
    """The method that built a version (None when unknown here: a version from another lendata)."""
    recorded = manifest.get("recipe_settings") or {}
    name = manifest.get("method") or recorded.get("flow")
    try:
        return get(str(name)) if name else None
    except UnknownMethod:
        return None
