"""The `lendata` command line: one module per command group, each registering on the app in `_app.py`
(so no module imports another's commands)."""

from lendata.cli import build, data, judge, versions  # noqa: F401  (register their commands)
from lendata.cli._app import app


def main() -> None:  # pragma: no cover
    app()


__all__ = ["app", "main"]
