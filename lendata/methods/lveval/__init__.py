"""LV-Eval-style long-context sets (Yuan et al. 2024): QA items, confusing facts and replacements (items.py),
contexts at length levels (context.py, pool.py, levels.py), LV-Eval's scoring (metric.py); the recipe contract
in method.py."""

from lendata.methods.lveval.method import METHOD

__all__ = ["METHOD"]
