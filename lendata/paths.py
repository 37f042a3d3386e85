"""Where lendata keeps things: the store, its work directory and the per-user cache."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)


def store_root(store: str | os.PathLike | None = None) -> Path:
    """`--store DIR`, else `$LENDATA_STORE`, else `./data`."""
    return Path(store or os.environ.get("LENDATA_STORE") or "data").expanduser().resolve()


def work_dir(store: Path) -> Path:
    """Build state that is not data: response caches, Prefect home, staging. Never catalogued."""
    return store / "_work"


STORE_MARK = ".lendata-store"  # written into a store's folder by its first commit: how outputs recognise stores


def _is_version(folder: Path) -> bool:
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and {"dataset", "version", "content_hash", "splits"} <= set(m)


def check_output(path: str | os.PathLike, store: Path | None, what: str = "output") -> Path:
    """`path` resolved, unless it lies in a lendata store (the given one, or any folder marked as one: its
    versions and its `_work` build state alike), holds the given store, or lies inside a committed version: no
    command's output option may overwrite a published file, a response cache or a store."""
    p = Path(path).expanduser().resolve()
    for folder in (p, *p.parents):
        if _is_version(folder):
            raise ValueError(f"{what} {path} is inside a committed dataset version of a store ({folder}): write "
                             "it somewhere else")
        if (folder / STORE_MARK).is_file():
            raise ValueError(f"{what} {path} is inside the store {folder}: write it somewhere else")
    if store is None:
        return p
    root = Path(store).expanduser().resolve()
    inside = p == root or root in p.parents
    if inside or p in root.parents:
        raise ValueError(f"{what} {path} is {'inside the store' if inside else 'a folder that holds the store'} "
                         f"({root}): write it somewhere else")
    return p


def user_cache() -> Path:
    return Path(os.environ.get("LENDATA_CACHE") or Path.home() / ".cache" / "lendata")


def check_name(name: str, what: str = "name") -> str:
    """Dataset, split and version names become directory names: refuse anything that could escape."""
    # fullmatch: `$` would also match before a trailing newline ("ds\n")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in {".", ".."} or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (not starting with '.' or '_')"
        )
    return name


def project_root() -> Path:
    """The checkout lendata was installed from (holds pipelines/, schemas/, flows/, catalog/)."""
    return Path(__file__).resolve().parent.parent
