"""The `lendata` command line: one module per command group, each registering on the app in `_app.py`
(so no module imports another's commands)."""

from lendata.memory import limit_malloc_arenas

# before any thread starts: a command's memory stays flat however much it streams (lendata/memory.py)
limit_malloc_arenas()

from lendata.cli import build, data, judge, versions  # noqa: E402, F401  (register their commands)
from lendata.cli._app import app  # noqa: E402


def main() -> None:  # pragma: no cover
    app()


__all__ = ["app", "main"]
