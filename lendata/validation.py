"""Checking a committed version against its manifest and its table schema."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from lendata import store as st


def validate_version(store: Path, ref: str) -> tuple[list[str], list[str]]:
    """(problems, summary lines). No problems means every file, count and row checks out."""
    from schemas import split_valid

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
    kind = ver.manifest.get("recipe_settings", {}).get("schema")
    if kind and "train" in ver.splits and not problems:
        _, failed = split_valid(ver.read("train"), kind)
        for q in failed[:20]:
            problems.append(f"row {q['id']}: {q['reason']}")
        summary.append(f"  schema {kind}: {'ok' if not failed else f'{len(failed)} rows fail'}")
    return problems, summary
