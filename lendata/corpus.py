"""Corpora for pre-training data: documents streamed in batches, tokenised in parallel, as flat token arrays.

Inputs: a directory of text files (a glob picks them), JSONL or Parquet with a text field, or Parquet that
is already tokenised (a list-of-integers field). A batch is a flat token buffer plus one length per document,
so downstream code works on arrays, never on per-document Python lists. A document that cannot be read
(invalid UTF-8, bad JSON, a missing or non-text field) is skipped and reported with its file and line.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lendata.inputs import Bad, InputError


@dataclass
class DocBatch:
    sources: list[str]  # "file" or "file:line", one per document
    flat: np.ndarray  # all tokens of the batch, documents end to end
    lengths: np.ndarray  # tokens per document (int64)
    bad: list[dict[str, Any]] = field(default_factory=list)  # quarantine records of unreadable documents
    ids: np.ndarray | None = None  # corpus-wide document ids (a unit's batches)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64) if self.lengths.size else (
            np.zeros(0, np.int64))


def _bad(source: str, reason: str, raw: str = "") -> dict[str, Any]:
    return Bad(source, reason, raw[:500]).as_quarantine()


# a batch ends at `batch_docs` documents or this many characters, whichever comes first: tokenizers keeps
# each token's string until the batch is converted, so the batch's text size bounds peak memory
BATCH_CHARS = 8_000_000


def text_batches(
    path: Path | str, text_field: str = "text", glob: str | None = "**/*.txt", batch_docs: int = 2048
) -> Iterator[tuple[list[str], list[str], list[dict[str, Any]]]]:
    """(sources, texts, bad) per batch of readable documents, in a stable order: the units of `plan_units`
    read one after another (a local path or any fsspec URL)."""
    for unit in plan_units(str(path), glob, 1 << 62):
        for _, sources, texts, bad in unit_texts(unit, text_field, batch_docs):
            yield sources, texts, bad


def tokenize(texts: list[str], tokenizer: Any, eos_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(flat tokens, lengths) for a batch of texts; `tokenizers` encodes the batch in parallel threads."""
    encs = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    arrays = [np.asarray(e.ids, dtype=np.uint32) for e in encs]
    if eos_id is not None:
        eos = np.array([eos_id], dtype=np.uint32)
        arrays = [a for pair in zip(arrays, [eos] * len(arrays), strict=True) for a in pair]
        lengths = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
    else:
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.uint32)
    return flat, lengths


def token_batches(pf: pq.ParquetFile, path: str, token_field: str, eos_id: int | None, batch_docs: int,
                  row_groups: range | None = None, row: int = 0) -> Iterator[DocBatch]:
    """Already tokenised Parquet: the list column's offsets and values are used as they are (no copy)."""
    if token_field not in pf.schema_arrow.names:
        raise InputError(f"{path}: no column {token_field!r}; columns: {', '.join(pf.schema_arrow.names)}")
    name = path.rsplit("/", 1)[-1]
    for batch in pf.iter_batches(batch_size=batch_docs, columns=[token_field], row_groups=row_groups):
        col = batch.column(0)
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or not pa.types.is_integer(
                col.type.value_type):
            raise InputError(f"{path}: column {token_field!r} is {col.type}, not a list of integers")
        col = col.fill_null([]) if col.null_count else col
        offsets = np.asarray(col.offsets)
        flat = np.asarray(col.values)[offsets[0]:offsets[-1]].astype(np.uint32, copy=False)
        lengths = np.diff(offsets).astype(np.int64)
        if eos_id is not None:  # one eos after each document: shift each document by its index
            ends = np.cumsum(lengths)
            flat = np.insert(flat, ends, eos_id).astype(np.uint32)
            lengths = lengths + 1
        sources = [f"{name}:{row + i + 1}" for i in range(len(lengths))]
        row += len(lengths)
        yield DocBatch(sources, flat, lengths)


def prefetch(batches: Iterator[DocBatch], depth: int = 2) -> Iterator[DocBatch]:
    """Tokenise ahead in a thread: `tokenizers` releases the GIL, so the next batch is encoded while the
    caller cuts and writes the current one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for b in batches:
                q.put(b)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)
        q.put(done)

    t = threading.Thread(target=work, name="lendata-tokenise", daemon=True)
    t.start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    t.join()


def doc_batches(
    path: Path | str,
    tokenizer: Any,
    eos_id: int | None,
    text_field: str = "text",
    token_field: str | None = None,
    glob: str | None = "**/*.txt",
    batch_docs: int = 2048,
) -> Iterator[DocBatch]:
    """Tokenised batches of a whole corpus, whatever its form, unit after unit."""
    for unit in plan_units(str(path), glob, 1 << 62):
        yield from unit_batches(unit, tokenizer, eos_id, text_field, token_field, batch_docs)


def cached_documents(name: str, origin: str, produce: Callable[[], Iterator[tuple[str, str]]]
                     ) -> Iterator[tuple[str, str]]:
    """(source, text) of a corpus that code produces (`produce`), made once and kept in the user cache under
    `name` and a hash of `origin` (what it was made from: change it and the cache is made again). The file
    appears whole or not at all; a cache that cannot be written is skipped and the corpus produced each time."""
    import contextlib
    import hashlib
    import os

    from lendata.paths import user_cache

    path = user_cache() / f"{name}-{hashlib.sha256(origin.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                for src, text in produce():
                    f.write(json.dumps({"source": src, "text": text}, ensure_ascii=False) + "\n")
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError:  # a read-only cache
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            yield from produce()
            return
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            yield doc["source"], doc["text"]


# --- work units: a corpus cut into pieces any worker can read on its own -----------------------------------

@dataclass(frozen=True)
class Unit:
    """A contiguous piece of a corpus that one worker reads, tokenises and writes on its own.

    Units are cut from the input alone (its listing, Parquet metadata, JSONL line starts), never from the number
    of shards, so what a unit writes is the same whoever runs it. `first_doc` is the position of its first
    document in the whole corpus: a document's id is its position (file, line or row), so an unreadable one
    leaves a gap instead of renumbering the rest."""

    index: int  # names the unit's output files
    kind: str  # "files" (one document per file), "jsonl" (lines), "parquet" (rows)
    location: str  # the corpus as the user named it (fsspec URL or local path), to reopen its file system
    root: str  # what sources are relative to
    paths: tuple[str, ...]  # files of a "files" unit; the one file otherwise
    first_doc: int
    count: int  # documents (files, lines, rows)
    start: int = 0  # jsonl: byte offset of the first line; parquet: first row group
    stop: int = 0  # parquet: row group after the last
    file_row: int = 0  # jsonl, parquet: lines or rows of its file before it (for "file:line" sources)


def plan_units(location: str, glob: str | None, unit_bytes: int) -> list[Unit]:
    """The corpus at `location` (a folder, a file, a glob; local or any fsspec URL) cut into units of about
    `unit_bytes` input bytes. Reads only listings, Parquet footers and, for JSONL, one streamed pass that
    finds line starts (a line is a document, and its id needs the lines before it)."""
    from lendata.remote import expand

    fs, root, files, _ = expand(location, glob)
    units: list[Unit] = []
    doc = 0
    text_files: list[str] = []
    text_bytes = 0

    def flush_text() -> None:
        nonlocal text_files, text_bytes, doc
        if text_files:
            units.append(Unit(len(units), "files", location, root, tuple(text_files), doc, len(text_files)))
            doc += len(text_files)
            text_files, text_bytes = [], 0

    for f in files:
        # a file's suffix says what it holds: records (.jsonl, .json, .parquet) or one text document
        suffix = f.rsplit("/", 1)[-1].rpartition(".")[2].lower()
        kind = {"parquet": "parquet", "jsonl": "jsonl", "json": "jsonl"}.get(suffix, "files")
        if kind == "files":
            text_files.append(f)
            text_bytes += int(fs.size(f) or 0)
            if text_bytes >= unit_bytes:
                flush_text()
            continue
        flush_text()
        if kind == "parquet":
            meta = _parquet_meta(fs, f)
            file_first = doc
            group, groups = 0, meta.num_row_groups
            while group < groups:
                stop, rows, size = group, 0, 0
                while stop < groups and (stop == group or size < unit_bytes):
                    rows += meta.row_group(stop).num_rows
                    size += meta.row_group(stop).total_byte_size
                    stop += 1
                units.append(Unit(len(units), "parquet", location, root, (f,), doc, rows, group, stop,
                                  doc - file_first))
                doc += rows
                group = stop
        else:
            file_first = doc
            for start, lines in _line_units(fs, f, unit_bytes):
                units.append(Unit(len(units), "jsonl", location, root, (f,), doc, lines, start, 0, doc - file_first))
                doc += lines
    flush_text()
    return units


def _parquet_meta(fs: Any, path: str) -> Any:
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata
    except Exception as e:  # noqa: BLE001 - any reader error names the file
        raise InputError(f"{path}: not a readable Parquet file: {e}") from None


def _line_units(fs: Any, path: str, unit_bytes: int) -> Iterator[tuple[int, int]]:
    """(byte offset, lines) of each unit of a JSONL file: a unit ends at the first line end past `unit_bytes`."""
    start = pos = lines = 0
    last = b""
    with fs.open(path, "rb", block_size=8 << 20) as f:
        while block := f.read(8 << 20):
            at = 0
            while True:
                nl = block.find(b"\n", at)
                if nl < 0:
                    break
                lines += 1
                at = nl + 1
                if pos + at - start >= unit_bytes:
                    yield start, lines
                    start, lines = pos + at, 0
            pos += len(block)
            last = block
        if pos > start:  # the last unit, and a last line without a line end
            yield start, lines + (0 if last.endswith(b"\n") else 1)


def _relative(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if root and path.startswith(root) else path.rsplit("/", 1)[-1]


def unit_texts(unit: Unit, text_field: str, batch_docs: int
               ) -> Iterator[tuple[np.ndarray, list[str], list[str], list[dict[str, Any]]]]:
    """(doc ids, sources, texts, bad) per batch of a unit's readable documents."""
    from lendata.remote import filesystem

    fs, _ = filesystem(unit.location)
    ids: list[int] = []
    sources: list[str] = []
    texts: list[str] = []
    bad: list[dict[str, Any]] = []
    chars = 0

    def flush():
        nonlocal ids, sources, texts, bad, chars
        out = (np.asarray(ids, dtype=np.int64), sources, texts, bad)
        ids, sources, texts, bad, chars = [], [], [], [], 0
        return out

    def add(doc: int, source: str, text: str) -> bool:
        nonlocal chars
        ids.append(doc)
        sources.append(source)
        texts.append(text)
        chars += len(text)
        return len(texts) >= batch_docs or chars >= BATCH_CHARS

    if unit.kind == "files":
        for i, path in enumerate(unit.paths):
            rel = _relative(path, unit.root)
            with fs.open(path, "rb") as f:
                raw = f.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append(_bad(rel, f"not valid UTF-8 (byte {e.start})"))
                continue
            if add(unit.first_doc + i, rel, text):
                yield flush()
    elif unit.kind == "jsonl":
        from itertools import islice

        from lendata.inputs import MAX_LINE_BYTES, lines, parse_line
        from lendata.remote import open_binary

        name = unit.paths[0].rsplit("/", 1)[-1]
        with open_binary(fs, unit.paths[0]) as f:
            f.seek(unit.start)
            for i, (_, raw, size, head) in enumerate(islice(lines(f), unit.count)):
                if raw is None:  # over MAX_LINE_BYTES: skipped in chunks, never held whole
                    bad.append(_bad(f"{name}:{unit.file_row + i + 1}",
                                    f"line is {size} bytes, over the {MAX_LINE_BYTES}-byte limit",
                                    head.decode("utf-8", "replace")))
                    continue
                rec, problem, text = parse_line(raw, first=unit.start == 0 and i == 0)
                if rec is None and problem is None:
                    continue  # a blank line: no document, and its id stays unused
                value = rec.get(text_field) if rec is not None else None
                line = f"{name}:{unit.file_row + i + 1}"
                if rec is None or not isinstance(value, str):
                    why = problem or (f"missing field {text_field!r}" if text_field not in rec else
                                      f"{text_field!r} is not text")
                    bad.append(_bad(line, why, text))
                    continue
                if add(unit.first_doc + i, line, value):
                    yield flush()
    else:
        name = unit.paths[0].rsplit("/", 1)[-1]
        with fs.open(unit.paths[0], "rb") as f:
            pf = pq.ParquetFile(f)
            if text_field not in pf.schema_arrow.names:
                raise InputError(f"{unit.paths[0]}: no column {text_field!r}; columns: "
                                 f"{', '.join(pf.schema_arrow.names)}")
            row = unit.first_doc
            for batch in pf.iter_batches(batch_size=batch_docs, columns=[text_field],
                                         row_groups=range(unit.start, unit.stop)):
                for value in batch.column(0).to_pylist():
                    where = f"{name}:{row - unit.first_doc + unit.file_row + 1}"
                    if isinstance(value, str):
                        if add(row, where, value):
                            yield flush()
                    else:
                        bad.append(_bad(where, f"{text_field!r} is not text"))
                    row += 1
    if texts or bad:
        yield flush()


def unit_batches(unit: Unit, tokenizer: Any, eos_id: int | None, text_field: str = "text",
                 token_field: str | None = None, batch_docs: int = 2048) -> Iterator[DocBatch]:
    """Tokenised batches of one unit, each with the corpus-wide ids of its documents."""
    if token_field:
        if unit.kind != "parquet":
            raise InputError(f"{unit.paths[0]}: token_field needs Parquet input")
        from lendata.remote import filesystem

        fs, _ = filesystem(unit.location)
        with fs.open(unit.paths[0], "rb") as f:
            row = unit.first_doc
            for b in token_batches(pq.ParquetFile(f), unit.paths[0], token_field, eos_id, batch_docs,
                                   range(unit.start, unit.stop), unit.file_row):
                b.ids = np.arange(row, row + b.lengths.size, dtype=np.int64)
                row += b.lengths.size
                yield b
        return
    for ids, sources, texts, bad in unit_texts(unit, text_field, batch_docs):
        flat, lengths = tokenize(texts, tokenizer, eos_id)
        yield DocBatch(sources, flat, lengths, bad, ids)
