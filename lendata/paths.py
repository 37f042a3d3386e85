"""Where lendata keeps things: the store, its work directory and the per-user cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def store_root(store: str | os.PathLike | None = None) -> Path:
    """`--store DIR`, else `$LENDATA_STORE`, else `./data`."""
    return Path(store or os.environ.get("LENDATA_STORE") or "data").expanduser().resolve()


def work_dir(store: Path) -> Path:
    """Build state that is not data: response caches, Prefect home, staging. Never catalogued."""
    return store / "_work"


def user_cache() -> Path:
    return Path(os.environ.get("LENDATA_CACHE") or Path.home() / ".cache" / "lendata")


def check_name(name: str, what: str = "name") -> str:
    """Dataset, split and version names become directory names: refuse anything that could escape."""
    if not isinstance(name, str) or not _NAME.match(name) or name in {".", ".."} or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (not starting with '.' or '_')"
        )
    return name


def project_root() -> Path:
    """The checkout lendata was installed from (holds pipelines/, schemas/, flows/, catalog/)."""
    return Path(__file__).resolve().parent.parent
