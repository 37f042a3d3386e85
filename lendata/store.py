"""Versioned Parquet store.

Layout: `<store>/<dataset>/<version>/<split>/part-NNNNN.parquet` plus `<store>/<dataset>/<version>/manifest.json`.
A version is assembled in a hidden staging directory and renamed into place only when every shard and the
manifest are written and fsynced, so a reader never sees a half-written version; each shard is itself written
to a temporary name and renamed. A committed version is immutable: committing different content under the
same version is an error unless `overwrite=True`; committing identical content is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lendata import faults
from lendata.atomic import (
    ExchangeUnsupported,
    exchange,
    fsync_dir,
    fsync_file,
    fsync_tree,
    sha256_file,
    temporary_beside,
)
from lendata.paths import STORE_MARK, check_name

MANIFEST = "manifest.json"
AUTO = "auto"
AUDIT_SPLITS = frozenset({"quarantine", "rejected"})  # what a build refused: input rows, generated candidates


class StoreError(RuntimeError):
    pass


class VersionExists(StoreError):
    pass


class NotFound(StoreError):
    pass


# canonical ASCII MAJOR.MINOR.PATCH without leading zeros: one spelling per version, so "01.0.0", "1.00.0" or
# "\u0661.0.0" (Arabic-Indic one) can never sit beside 1.0.0 as another folder ([0-9] is ASCII only in `re`)
_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")


def parse_version(v: str) -> tuple[int, int, int]:
    m = _VERSION.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise ValueError(f"version {v!r} is not canonical MAJOR.MINOR.PATCH (ASCII digits, no leading zeros, "
                         "e.g. 1.0.0)")
    return int(m[1]), int(m[2]), int(m[3])


def bump(v: str, part: str = "patch") -> str:
    major, minor, patch = parse_version(v)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def write_parquet_atomic(table: pa.Table, path: Path, **kwargs: Any) -> dict[str, Any]:
    """Write to a temporary name, fsync, rename: the file appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        pq.write_table(table, tmp, compression=kwargs.pop("compression", "zstd"), **kwargs)
        faults.point("shard_write")
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"rows": table.num_rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass
class Version:
    store: Path
    dataset: str
    version: str
    manifest: dict[str, Any] = field(repr=False)
    unchanged: bool = False  # a commit found identical content already committed

    @property
    def path(self) -> Path:
        return self.store / self.dataset / self.version

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        return self.manifest["splits"]

    def rows(self, split: str | None = None) -> int:
        """Rows of one split, or of the data splits (not the audit splits `quarantine` and `rejected`)."""
        if split is not None:
            return self.splits[split]["rows"] if split in self.splits else 0
        return sum(s["rows"] for name, s in self.splits.items() if name not in AUDIT_SPLITS)

    def files(self, split: str) -> list[Path]:
        return [self.path / f["path"] for f in self.splits[split]["files"]]

    def read(self, split: str = "train") -> pa.Table:
        if split not in self.splits:
            raise NotFound(f"{self.dataset}@{self.version} has no split {split!r}; it has {sorted(self.splits)}")
        files = self.splits[split]["files"]
        if not files:
            return pa.schema([]).empty_table()
        return pa.concat_tables([with_partitions(pq.read_table(self.path / f["path"]), f["path"]) for f in files])

    def read_file(self, split: str, index: int) -> pa.Table:
        """One shard of a split, with its hive partition columns."""
        return _read_shard(self, split, index)


def _read_shard(version: Version, split: str, index: int) -> pa.Table:
    rel = version.splits[split]["files"][index]["path"]
    return with_partitions(pq.read_table(version.path / rel), rel)


def partitions(rel: str) -> dict[str, str]:
    """Hive partition values in a shard's path: `train/bucket=8/part-00000.parquet` -> {"bucket": "8"}."""
    return dict(part.split("=", 1) for part in rel.split("/")[:-1] if "=" in part)


def with_partitions(table: pa.Table, rel: str) -> pa.Table:
    """`table` with the hive partition values of its shard path `rel` as columns."""
    for key, value in partitions(rel).items():
        if key not in table.column_names:
            typed: Any = int(value) if value.lstrip("-").isdigit() else value
            table = table.append_column(key, pa.array([typed] * table.num_rows))
    return table


RESERVED = {"lendata_versions"}  # names the SQL catalog uses itself


def check_dataset_name(store: Path, dataset: str) -> str:
    """A name a new dataset may take: a valid folder name that SQL can tell apart from every other dataset of the
    store. DuckDB identifiers ignore case and the catalog names other splits `<dataset>__<split>`, so `DS`
    beside `ds`, `a__b` (the view of dataset `a`'s split `b`) and `lendata_versions` are refused."""
    check_name(dataset, "dataset")
    if "__" in dataset or dataset.lower() in RESERVED:
        raise ValueError(f"invalid dataset {dataset!r}: '__' and the names {sorted(RESERVED)} are kept for SQL "
                         "views")
    twin = next((d for d in list_datasets(store) if d.lower() == dataset.lower() and d != dataset), None)
    if twin:
        raise ValueError(f"invalid dataset {dataset!r}: the store has {twin!r}, and SQL names ignore case")
    return dataset


def list_datasets(store: Path) -> list[str]:
    if not store.is_dir():
        return []
    return sorted(
        p.name for p in store.iterdir() if p.is_dir() and p.name[0] not in "._" and list_versions(store, p.name)
    )


def list_versions(store: Path, dataset: str) -> list[str]:
    d = store / check_name(dataset, "dataset")
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        if p.name.startswith(".") or not (p / MANIFEST).is_file():
            continue
        with contextlib.suppress(ValueError):
            parse_version(p.name)
            found.append(p.name)
    return sorted(found, key=parse_version)


def open_version(store: Path, ref: str) -> Version:
    """`DATASET` (latest version) or `DATASET@VERSION`."""
    dataset, _, version = ref.partition("@")
    check_name(dataset, "dataset")
    versions = list_versions(store, dataset)
    if not versions:
        known = ", ".join(list_datasets(store)) or "none"
        raise NotFound(f"no dataset {dataset!r} in {store} (datasets: {known})")
    if version:
        parse_version(version)
    version = version or versions[-1]
    if version not in versions:
        raise NotFound(f"{dataset} has no version {version!r} (versions: {', '.join(versions)})")
    manifest = json.loads((store / dataset / version / MANIFEST).read_text())
    return Version(store, dataset, version, manifest)


@contextlib.contextmanager
def dataset_lock(store: Path, dataset: str, wait: bool = True) -> Iterator[None]:
    """One writer per dataset at a time; a second build waits (or fails at once with wait=False)."""
    d = store / check_name(dataset, "dataset")
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise StoreError(f"another build is writing {dataset} in {store}; try again when it ends") from None
            print(f"waiting for another build of {dataset} in {store} to finish writing", file=sys.stderr,
                  flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _content_hash(splits: Mapping[str, Mapping[str, Any]]) -> str:
    """Over every file's path and sha256: a shard's path carries data too (hive partitions such as
    `bucket=8`), so the same bytes under another partition are other content."""
    h = hashlib.sha256()
    for name in sorted(splits):
        for f in splits[name]["files"]:
            h.update(f"{name}\0{f['path']}\0{f['sha256']}\n".encode())
    return h.hexdigest()


class ShardWriter:
    """Streams record batches of one split (optionally one partition, e.g. `bucket=8`) into shards of
    `rows_per_shard` rows; each shard appears under its final name only once complete and fsynced."""

    def __init__(self, stage: Stage | DetachedStage, split: str, schema: pa.Schema, partition: str | None,
                 rows_per_shard: int, name: str | None = None):
        self.stage, self.split, self.schema = stage, split, schema
        self.name = f"{name}-" if name else ""  # several writers of one directory (work units) name their shards
        self.dir = f"{split}/{partition}" if partition else split
        self.rows_per_shard = rows_per_shard
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._rows = 0
        self._shards = 0  # this writer owns its directory, so it numbers the shards in it

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        while table.num_rows:
            if self._writer is None:
                self._open()
            take = min(table.num_rows, self.rows_per_shard - self._rows)
            self._writer.write_table(table.slice(0, take))  # type: ignore[union-attr]
            faults.point("shard_write")
            self._rows += take
            table = table.slice(take)
            if self._rows >= self.rows_per_shard:
                self._close_shard()

    def _open(self) -> None:
        d = self.stage.path / self.dir
        d.mkdir(parents=True, exist_ok=True)
        self._tmp = d / f".shard-{uuid.uuid4().hex[:8]}.tmp"
        # long texts (large_string) rarely repeat: a dictionary for them only costs memory while writing
        plain = [f.name for f in self.schema if not pa.types.is_large_string(f.type)]
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd", use_dictionary=plain)
        self._rows = 0

    def _close_shard(self) -> None:
        if self._writer is None or self._tmp is None:
            return
        self._writer.close()
        fsync_file(self._tmp)
        files = self.stage.splits.setdefault(self.split, {"rows": 0, "files": []})["files"]
        rel = f"{self.dir}/part-{self.name}{self._shards:05d}.parquet"
        self._shards += 1
        path = self.stage.path / rel
        os.replace(self._tmp, path)
        files.append({"path": rel, "rows": self._rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        self.stage.splits[self.split]["rows"] += self._rows
        self._writer, self._tmp, self._rows = None, None, 0

    def close(self) -> None:
        self._close_shard()
        self.stage.splits.setdefault(self.split, {"rows": 0, "files": []})
        self.stage.schemas[self.split] = [{"name": f.name, "type": str(f.type)} for f in self.schema]


class DetachedStage:
    """The part of a staged version one worker writes: shards go straight into the stage's folder (a shared
    file system), their records come back to the driver, which adds them to its `Stage` (`Stage.adopt`)."""

    def __init__(self, path: Path):
        self.path = path
        self.splits: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {}

    def writer(self, split: str, schema: pa.Schema, partition: str | None = None, rows_per_shard: int = 10_000,
               name: str | None = None) -> ShardWriter:
        check_name(split, "split")
        self.splits.setdefault(split, {"rows": 0, "files": []})
        return ShardWriter(self, split, schema, partition, rows_per_shard, name)


class Stage:
    """A version being assembled in a hidden directory; `publish` makes it visible atomically.

    Use as a context manager: whatever is not published is deleted on exit, so a failed build leaves nothing
    a reader could see.
    """

    def __init__(self, store: Path, dataset: str):
        check_dataset_name(store, dataset)
        self.store, self.dataset = store, dataset
        self.splits: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {}
        self._lock = dataset_lock(store, dataset)
        self.path = store / dataset / f".staging-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> Stage:
        self.store.mkdir(parents=True, exist_ok=True)
        mark = self.store / STORE_MARK
        if not mark.exists():  # lets output options recognise this folder as a store (paths.check_output)
            mark.write_text("a lendata store: dataset versions and their build state\n")
        self._lock.__enter__()
        try:
            clean_leftovers(self.store, self.dataset)
            self.path.mkdir(parents=True)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._lock.__exit__(*exc)

    def _check_split(self, split: str) -> None:
        check_name(split, "split")
        twin = next((x for x in self.splits if x.lower() == split.lower() and x != split), None)
        if twin or "__" in split:
            raise ValueError(f"invalid split {split!r}: " + (f"the version has {twin!r}, and SQL names ignore case"
                                                              if twin else "'__' is kept for SQL views"))

    def add_table(self, split: str, table: pa.Table, rows_per_shard: int = 10_000) -> None:
        self._check_split(split)
        files = []
        n = max(1, -(-table.num_rows // rows_per_shard))
        for i in range(n):
            part = table.slice(i * rows_per_shard, rows_per_shard)
            rel = f"{split}/part-{i:05d}.parquet"
            files.append({"path": rel, **write_parquet_atomic(part, self.path / rel)})
        self.splits[split] = {"rows": table.num_rows, "files": files}
        self.schemas[split] = [{"name": f.name, "type": str(f.type)} for f in table.schema]

    def writer(
        self, split: str, schema: pa.Schema, partition: str | None = None, rows_per_shard: int = 10_000
    ) -> ShardWriter:
        self._check_split(split)
        self.splits.setdefault(split, {"rows": 0, "files": []})  # known from now on, for the case check
        return ShardWriter(self, split, schema, partition, rows_per_shard)

    def adopt(self, splits: Mapping[str, Any], schemas: Mapping[str, Any]) -> None:
        """Add the shards a `DetachedStage` of this stage wrote (on any worker)."""
        for split, info in splits.items():
            self._check_split(split)
            mine = self.splits.setdefault(split, {"rows": 0, "files": []})
            paths = {f["path"] for f in mine["files"]}
            clash = [f["path"] for f in info["files"] if f["path"] in paths]
            if clash:
                raise ValueError(f"two shards wrote {clash[0]}")
            for f in info["files"]:  # a worker on another machine without the store wrote to its own disk
                on_disk = self.path / f["path"]
                if not on_disk.is_file() or on_disk.stat().st_size != f["bytes"]:
                    raise StoreError(f"a shard wrote {f['path']}, but the driver does not see it under {self.path}: "
                                     "put the store on a file system every worker mounts at the same path")
            mine["files"].extend(info["files"])
            mine["rows"] += info["rows"]
        self.schemas.update(schemas)

    def publish(self, version: str = AUTO, overwrite: bool = False, meta: Mapping[str, Any] | None = None) -> Version:
        """Make the staged version visible under `version` in one rename.

        `auto`: the latest version when it holds identical content (`unchanged`), else the next patch version;
        a new version whose content equals an older one records it as `same_content_as`, so the build's result
        is always what the dataset's default view (its latest version) serves. An explicit version that exists
        with identical content is `unchanged`; with other content it is refused unless `overwrite`, which swaps
        the new folder in with one atomic exchange: a reader finds the old version or the new one, never none.
        """
        from lendata import __version__

        store, dataset, stage = self.store, self.dataset, self.path
        for split in self.splits.values():  # a stable order, whatever order partitions were written in
            split["files"].sort(key=lambda f: f["path"])
        content = _content_hash(self.splits)
        existing = list_versions(store, dataset)
        same_as = None
        if version == AUTO:
            if existing:
                latest = open_version(store, f"{dataset}@{existing[-1]}")
                if latest.manifest.get("content_hash") == content:
                    latest.unchanged = True
                    return latest
                same_as = next((v for v in reversed(existing[:-1]) if open_version(
                    store, f"{dataset}@{v}").manifest.get("content_hash") == content), None)
            version = bump(existing[-1]) if existing else "0.1.0"
        else:
            parse_version(version)
            if version in existing:
                old = open_version(store, f"{dataset}@{version}")
                if old.manifest.get("content_hash") == content:
                    old.unchanged = True
                    return old
                if not overwrite:
                    raise VersionExists(
                        f"{dataset}@{version} is already committed with other content; versions are immutable "
                        "(pass --overwrite to replace it, or choose another version)")
        target = store / dataset / version
        if target.exists() and version not in existing:
            raise StoreError(f"{target} exists but is not a committed version (no manifest); move it away first")
        manifest = {
            "dataset": dataset,
            "version": version,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "lendata_version": __version__,
            "content_hash": content,
            **({"same_content_as": same_as} if same_as else {}),
            "splits": self.splits,
            "schema": self.schemas,
            **(meta or {}),
        }
        for stray in stage.rglob(".shard-*.tmp"):  # a shard attempt that died (a worker killed, a retried task)
            stray.unlink()
        mpath = stage / MANIFEST
        mpath.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
        fsync_file(mpath)
        fsync_tree(stage)  # every shard's name is on disk before the version can be seen
        faults.point("before_publish")
        with _names_lock(store):
            # checked again here: a dataset whose name SQL cannot tell from this one's (`DS` and `ds`) may have
            # been committed by another build since this stage was opened; the lock makes check and rename one
            check_dataset_name(store, dataset)
            self._rename_into_place(stage, target)
        faults.point("after_publish")
        return Version(store, dataset, version, manifest)

    def _rename_into_place(self, stage: Path, target: Path) -> None:
        store, dataset, version = self.store, self.dataset, target.name
        if target.exists():
            try:
                exchange(stage, target)  # the stage folder now holds the old version; __exit__ deletes it
            except ExchangeUnsupported as e:
                raise StoreError(f"cannot replace {dataset}@{version} atomically here ({e.strerror}); commit "
                                 "another version instead") from None
            fsync_dir(store / dataset)
            faults.point("overwrite_exchanged")  # the old version is deleted by __exit__, outside the names lock
        else:
            os.rename(stage, target)
            fsync_dir(store / dataset)


@contextlib.contextmanager
def _names_lock(store: Path) -> Iterator[None]:
    """One publisher at a time across the store's datasets, for the moment of checking names and renaming."""
    with open(store / ".names.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clean_leftovers(store: Path, dataset: str) -> list[str]:
    """Remove what killed writers of `dataset` left: staging folders (half-built versions, or an old version
    swapped out by an overwrite) and temporary files. Called with the dataset's lock held, so nothing removed
    belongs to a live writer. Returns the names removed."""
    removed = []
    d = store / dataset
    for p in d.iterdir() if d.is_dir() else []:
        if p.name.startswith((".staging-", ".trash-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        elif p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def commit(
    store: Path,
    dataset: str,
    tables: Mapping[str, pa.Table],
    *,
    version: str = AUTO,
    overwrite: bool = False,
    rows_per_shard: int = 10_000,
    meta: Mapping[str, Any] | None = None,
) -> Version:
    """Write `tables` (split -> table) as a new version of `dataset` and return it.

    `version="auto"` reuses the newest version with identical content, else bumps the patch of the latest
    (0.1.0 for the first). An explicit version that exists with other content raises `VersionExists`
    unless `overwrite`.
    """
    if version != AUTO:
        parse_version(version)
    with Stage(store, dataset) as stage:
        for split, table in tables.items():
            stage.add_table(split, table, rows_per_shard)
        return stage.publish(version, overwrite, meta)
