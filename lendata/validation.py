"""Checking a committed version against its manifest and its table schema."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lendata import store as st
from lendata.methods.base import Split


def validate_version(store: Path, ref: str) -> tuple[list[str], list[str]]:
    """(problems, summary lines). No problems means every file, count and row checks out."""
    from schemas import check_rows

    ver = st.open_version(store, ref)
    problems: list[str] = []
    summary = [f"{ver.dataset}@{ver.version}: {ver.path}"]
    for split, info in ver.splits.items():
        rows = 0
        for f in info["files"]:
            path = ver.path / f["path"]
            if not path.is_file():
                problems.append(f"{f['path']}: missing")
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != f["sha256"]:
                problems.append(f"{f['path']}: sha256 differs from the manifest (file changed after commit)")
            try:
                n = pq.ParquetFile(path).metadata.num_rows
            except Exception as e:  # a corrupted file is a finding, not a crash
                problems.append(f"{f['path']}: unreadable Parquet ({type(e).__name__}: {e})")
                continue
            if n != f["rows"]:
                problems.append(f"{f['path']}: {n} rows, manifest says {f['rows']}")
            rows += n
        if rows != info["rows"]:
            problems.append(f"split {split}: {rows} rows, manifest says {info['rows']}")
        summary.append(f"  {split}: {rows} rows in {len(info['files'])} file(s)")
    if not problems:
        for split, declared in declared_splits(ver).items():
            if declared.contract is None or split not in ver.splits or not ver.splits[split]["files"]:
                continue
            files = ver.files(split)
            columns = [c for c in pq.read_schema(files[0]).names if c not in declared.unchecked]
            _, failed = check_rows(pa.concat_tables(pq.read_table(f, columns=columns) for f in files),
                                   declared.contract)
            for q in failed[:20]:
                problems.append(f"{split} row {q['id']}: {q['reason']}")
            name = declared.contract.__name__
            summary.append(f"  {split} against {name}: {'ok' if not failed else f'{len(failed)} rows fail'}")
    return problems, summary


def declared_splits(ver: st.Version) -> dict[str, Split]:
    """The splits the version's method declares for its recorded settings (none for a version whose method
    or settings are unknown here)."""
    from pydantic import TypeAdapter

    from lendata.methods import UnknownMethod, get

    recorded = ver.manifest.get("recipe_settings") or {}
    try:
        method = get(str(ver.manifest.get("method") or recorded.get("flow")))
        fields = {f.name for f in dataclasses.fields(method.settings)}
        settings = TypeAdapter(method.settings).validate_python({k: v for k, v in recorded.items() if k in fields})
        return method.splits(settings)
    except (UnknownMethod, ValueError):
        return {}
