"""`direct`: answer each length-constrained instruction in one call with a per-row token budget, continued when
the budget cut it and `continue_attempts` says so (generate.py); the recipe contract in method.py."""

from lendata.methods.direct.method import METHOD

__all__ = ["METHOD"]
