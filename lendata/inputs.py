"""Reading instruction files (JSONL or Parquet) into rows, with bad lines quarantined instead of fatal.

A missing field across the whole file is a configuration error and stops the build with the fields that do
exist; a bad individual line (invalid JSON, not UTF-8, empty instruction, unusable target) becomes a
quarantine record naming the file and line, and the rest of the file is read as usual.
"""

from __future__ import annotations

import codecs
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.parquet as pq

MAX_LINE_BYTES = 64 << 20


class InputError(ValueError):
    pass


@dataclass
class Bad:
    source: str  # "file:line"
    reason: str
    raw: str

    def as_quarantine(self, stage: str = "input") -> dict[str, Any]:
        # the version keeps the file's name and line; the local path is only in the terminal's warning
        return {"id": None, "stage": stage, "reason": self.reason, "source": os.path.basename(self.source),
                "record": self.raw}


@dataclass
class Loaded:
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad: list[Bad] = field(default_factory=list)


def unencodable(value: Any) -> str | None:
    """Where `value` (a parsed JSON record) holds a string that is not valid Unicode, else None. JSON can spell
    a lone UTF-16 surrogate ("\\ud800"); Python parses it, then every UTF-8 encoder (the cache key, Arrow,
    SQLite) fails on it, so such a line is quarantined when it is read."""
    stack: list[tuple[Any, str]] = [(value, "the record")]
    while stack:
        x, where = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"{where} holds a lone surrogate {x[e.start]!r} at character {e.start}"
        elif isinstance(x, dict):
            for k, v in x.items():
                stack.append((k, "a field name"))
                stack.append((v, f"field {k!r}" if where == "the record" else f"{where}.{k}"))
        elif isinstance(x, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(x))
    return None


def lines(f: BinaryIO):
    """(line number, bytes) for each line, each at most MAX_LINE_BYTES long: a longer line is skipped in
    chunks (never held whole) and given as (line number, None, its size)."""
    lineno = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            size, head = len(raw), raw[:500]
            del raw
            while True:
                chunk = f.readline(1 << 20)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield lineno, None, size, head
            continue
        yield lineno, raw, len(raw), b""


def parse_line(raw: bytes, first: bool = False) -> tuple[dict[str, Any] | None, str | None, str]:
    """(record, None, text) for a JSON object line; (None, why, its text) for a bad one; (None, None, "") for a
    blank one. `first`: the file's first line, which may start with a byte-order mark."""
    if first and raw.startswith(codecs.BOM_UTF8):  # written by many Windows editors
        raw = raw[len(codecs.BOM_UTF8):]
    if not raw.strip():
        return None, None, ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte {e.start})", raw[:500].decode("utf-8", "replace")
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at column {e.colno}", text[:500]
    except (ValueError, RecursionError) as e:  # a 5,000-digit number; arrays nested 100,000 deep
        return None, f"unreadable JSON: {type(e).__name__}: {str(e)[:200]}", text[:500]
    if not isinstance(rec, dict):
        return None, f"expected a JSON object, got {type(rec).__name__}", text[:500]
    problem = unencodable(rec)
    if problem:
        # the raw line is valid UTF-8 (the surrogate is an escape), so it can be kept as it was
        return None, f"not valid Unicode: {problem}", text[:500]
    return rec, None, text


def records(path: Path | str):
    """(line number, dict | None, problem, raw) for each non-blank record of a local file or a URL."""
    from lendata.remote import filesystem, open_location, shown

    if str(path).endswith(".parquet"):
        try:
            fs, inner = filesystem(str(path))
            with fs.open(inner, "rb") as f:
                table = pq.read_table(f)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{shown(str(path))}: not a readable Parquet file: {e}") from e
        for start in range(0, table.num_rows, 10_000):
            chunk = table.slice(start, 10_000)
            try:
                recs = chunk.to_pylist()
            except Exception:  # noqa: BLE001 - a value Python cannot hold: find its row, quarantine only that
                recs = []
                for j in range(chunk.num_rows):
                    try:
                        recs.append(chunk.slice(j, 1).to_pylist()[0])
                    except UnicodeDecodeError as e:
                        recs.append(f"a value is not valid UTF-8 ({e.reason})")
                    except Exception as e:  # noqa: BLE001 - dates out of range, unknown time zones...
                        recs.append(f"a value cannot be read ({type(e).__name__}: {str(e)[:120]})")
            for i, rec in enumerate(recs, start=start + 1):
                if isinstance(rec, str):
                    yield i, None, rec, ""
                else:
                    yield i, rec, None, ""
        return
    stream, _ = open_location(path)
    with stream as f:
        for lineno, raw, size, head in lines(f):
            if raw is None:
                yield (lineno, None, f"line is {size} bytes, over the {MAX_LINE_BYTES}-byte limit",
                       head.decode("utf-8", "replace"))
                continue
            rec, problem, text = parse_line(raw, lineno == 1)
            if rec is None and problem is None:
                continue
            yield lineno, rec, problem, text


class RemotePath(str):
    """A URL input with the two parts of Path this module reads: its file name and suffix."""

    @property
    def name(self) -> str:
        return self.split("?")[0].rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return "." + self.name.rpartition(".")[2] if "." in self.name else ""

    @property
    def stem(self) -> str:
        return self.name.rpartition(".")[0] or self.name


MAX_TARGET = 1_000_000  # words: far past any length a model writes, and inside every int32 column


def positive_whole(value: Any) -> int | None:
    """`value` as a positive int up to MAX_TARGET when it is one (12, 12.0, "12"), else None: JSON allows
    Infinity, NaN, 2.5, 1e300 and true, and none of them is a length."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() and 0 < value <= MAX_TARGET else None
    elif isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TARGET else None


def read_instructions(
    path: str | Path,
    instruction_field: str = "instruction",
    target_field: str | None = None,
    n: int | None = None,
    keep_fields: bool = True,
) -> Loaded:
    """Rows with `instruction`, `target` (int or None), `source` ("file:line") and the other fields. `path`: a
    local file or a URL (lendata.remote)."""
    from lendata.remote import is_url, shown

    if is_url(str(path)):
        path = RemotePath(str(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"input file not found: {path}")
    if path.suffix not in {".jsonl", ".json", ".parquet"}:
        raise InputError(f"{shown(str(path))}: unsupported input format {path.suffix!r}; use .jsonl or .parquet")
    out = Loaded()
    if n is not None and n < 1:
        raise InputError(f"n is {n}: it must be at least 1 (or null for every row)")
    seen_fields: set[str] = set()
    saw_instruction = False
    for lineno, rec, problem, raw in records(path):
        src = f"{path}:{lineno}"
        if rec is None:
            out.bad.append(Bad(src, problem or "unreadable", raw))
            continue
        where = f"{path.name}:{lineno}"  # what the data keep: the file's name, never the local path
        seen_fields.update(rec)
        if instruction_field not in rec:
            out.bad.append(Bad(src, f"missing field {instruction_field!r}", raw or json.dumps(rec, default=str)))
            continue
        saw_instruction = True
        instr = rec[instruction_field]
        if not isinstance(instr, str) or not instr.strip():
            out.bad.append(Bad(src, f"empty or non-text {instruction_field!r}", raw or json.dumps(rec, default=str)))
            continue
        target = None
        if target_field:
            value = rec.get(target_field)
            target = positive_whole(value) if value is not None else None
            if value is not None and target is None:
                out.bad.append(
                    Bad(src, f"{target_field!r} is {str(value)[:40]!r}, not a whole number from 1 to {MAX_TARGET:,}",
                        raw or str(rec))
                )
                continue
        row = dict(rec) if keep_fields else {}
        row.update(instruction=instr.strip(), target=target, source=where)
        out.rows.append(row)
        if n is not None and len(out.rows) >= n:
            break
    if not out.rows and not out.bad and not seen_fields:
        raise InputError(f"{path}: the file has no records (it is empty or blank)")
    if not saw_instruction and (out.rows or seen_fields):
        raise InputError(
            f"{path}: no record has the field {instruction_field!r}; fields found: "
            f"{', '.join(sorted(seen_fields)) or 'none'} (set instruction_field=NAME)"
        )
    if target_field and seen_fields and target_field not in seen_fields:
        raise InputError(
            f"{path}: no record has the target field {target_field!r}; fields found: "
            f"{', '.join(sorted(seen_fields))} (set target_field=NAME)"
        )
    for b in out.bad:
        print(f"warning: {b.source}: {b.reason} (quarantined)", file=sys.stderr)
    return out
