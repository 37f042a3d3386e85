"""Apply a schema to a table and split it into valid rows and quarantined rows with the failed checks."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pandera.errors
import polars as pl
import pyarrow as pa


def split_valid(table: pa.Table, schema: Any) -> tuple[pa.Table, list[dict[str, Any]]]:
    """(valid rows as the input's Arrow schema, quarantine records for the rest)."""
    keep, quarantine = check_rows(table, schema)
    if not quarantine:
        return table, []
    return table.take(pa.array(keep, type=pa.int64())), quarantine


def check_rows(table: pa.Table, schema: Any, unchecked: tuple[str, ...] = ()
               ) -> tuple[list[int], list[dict[str, Any]]]:
    """(indices of the rows that pass the pandera `schema`, quarantine records for the others).

    `unchecked` columns are left out of the check and of the quarantine record: a long context or a token
    list would be copied into polars for nothing."""
    if table.num_rows == 0:
        return [], []
    kind = getattr(schema, "__name__", str(schema))
    checked = table.drop_columns([c for c in unchecked if c in table.column_names])
    df = pl.from_arrow(checked)
    reasons: dict[int, list[str]] = defaultdict(list)
    if "id" in df.columns:
        # the first row with an id is kept; later copies are quarantined (pandera's unique flags all of them)
        dup = df.select(pl.col("id").is_duplicated() & ~pl.col("id").is_first_distinct()).to_series()
        for i in dup.arg_true().to_list():
            reasons[i].append("id: duplicate of an earlier row")
        df = df.with_row_index("_row").filter(~dup)
    try:
        schema.validate(df.drop("_row", strict=False), lazy=True)
        cases = pl.DataFrame()
    except pandera.errors.SchemaErrors as err:
        cases = err.failure_cases
    rows_of = df["_row"].to_list() if "_row" in df.columns else list(range(df.height))
    table_wide: list[str] = []
    for case in cases.iter_rows(named=True):
        what = f"{case['column']}: {case['check']}" if case.get("column") else str(case["check"])
        if case.get("index") is None:
            table_wide.append(f"{what} ({case['failure_case']})")
        else:
            reasons[rows_of[int(case["index"])]].append(what)
    if table_wide:  # a column missing or of the wrong type is the method's bug, not a bad row
        raise ValueError(f"{kind} failed for the whole table: {'; '.join(table_wide)}")
    if not reasons:
        return list(range(table.num_rows)), []
    bad = sorted(reasons)
    keep = [i for i in range(table.num_rows) if i not in reasons]
    records = checked.take(pa.array(bad, type=pa.int64())).to_pylist()
    quarantine = [
        {
            "id": str(rec.get("id")),
            "stage": "schema",
            "reason": "; ".join(sorted(set(reasons[i]))),
            "source": str(rec.get("source") or ""),
            "record": json.dumps(rec, ensure_ascii=False, default=str),
        }
        for i, rec in zip(bad, records, strict=True)
    ]
    return keep, quarantine
