"""What a version holds and how two versions differ: schema, rows per split, and length statistics of every
text column, computed by DuckDB over the version's Parquet files (no table is loaded into Python)."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from lendata import store as st
from lendata.catalog import read_parquet_sql

QUANTILES = (0.1, 0.5, 0.9, 0.99)
SAMPLE = 200_000  # values per side for the distribution distance of `diff`


def text_columns(version: st.Version, split: str) -> dict[str, str]:
    """Column -> SQL expression of its text: string columns, and chat `messages` as the last assistant turn."""
    cols = {}
    for f in version.manifest.get("schema", {}).get(split, []):
        name, kind = f["name"], f["type"]
        q = '"' + name.replace('"', '""') + '"'
        if kind in ("string", "large_string"):
            cols[name] = q
        elif name == "messages" and kind.startswith(("list<", "large_list<")) and "content" in kind:
            cols["messages[assistant]"] = (f"list_filter({q}, lambda m: m.role = 'assistant')[-1].content")
    return cols


def _length_sql(expr: str, unit: str) -> str:
    if unit == "chars":
        return f"length({expr})"
    return f"len(regexp_extract_all({expr}, '\\S+'))"  # whitespace words, as lendata's LV-Eval unit counts them


def length_stats(con: duckdb.DuckDBPyConnection, source: str, expr: str) -> dict[str, Any]:
    qs = ", ".join(f"quantile_cont(w, {q})" for q in QUANTILES)
    row = con.execute(
        f"SELECT count(w), avg(w), min(w), {qs}, max(w), avg(c) FROM "
        f"(SELECT {_length_sql(expr, 'words')} AS w, {_length_sql(expr, 'chars')} AS c FROM {source})"
    ).fetchone()
    n, mean, low, *rest = row
    quant, high, chars = rest[: len(QUANTILES)], rest[len(QUANTILES)], rest[-1]
    if not n:
        return {"rows": 0}
    return {"rows": n, "mean_words": round(mean, 1), "min_words": low,
            **{f"p{int(q * 100)}_words": round(v, 1) for q, v in zip(QUANTILES, quant, strict=True)},
            "max_words": high, "mean_chars": round(chars, 1)}


def describe(version: st.Version) -> dict[str, Any]:
    """Schema, rows, bytes and length statistics per split."""
    con = duckdb.connect(":memory:")
    try:
        splits = {}
        for split, info in version.splits.items():
            entry: dict[str, Any] = {"rows": info["rows"], "files": len(info["files"]),
                                     "bytes": sum(f["bytes"] for f in info["files"]),
                                     "schema": {f["name"]: f["type"] for f in version.manifest.get("schema", {})
                                                .get(split, [])}, "lengths": {}}
            if info["files"] and info["rows"]:
                source = read_parquet_sql(version, split)
                for name, expr in text_columns(version, split).items():
                    entry["lengths"][name] = length_stats(con, source, expr)
            splits[split] = entry
    finally:
        con.close()
    m = version.manifest
    return {"dataset": version.dataset, "version": version.version, "created": m.get("created"),
            "content_hash": m.get("content_hash"), "recipe": m.get("recipe"), "engine": m.get("engine"),
            "model": m.get("model"), "rows": version.rows(), "splits": splits}


def _sample(con: duckdb.DuckDBPyConnection, version: st.Version, split: str, expr: str) -> np.ndarray:
    values = con.execute(f"SELECT {_length_sql(expr, 'words')} FROM {read_parquet_sql(version, split)} "
                         f"USING SAMPLE reservoir({SAMPLE} ROWS) REPEATABLE (0)").fetchnumpy()
    return np.sort(next(iter(values.values())).astype(np.float64))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between the two empirical CDFs (0 = same)."""
    if not len(a) or not len(b):
        return 1.0 if len(a) != len(b) else 0.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def diff(a: st.Version, b: st.Version) -> dict[str, Any]:
    """Rows per split, schema changes, and the length shift of every text column both versions have."""
    da, db = describe(a), describe(b)
    out: dict[str, Any] = {"a": f"{a.dataset}@{a.version}", "b": f"{b.dataset}@{b.version}",
                           "same_content": a.manifest.get("content_hash") == b.manifest.get("content_hash"),
                           "splits": {}}
    con = duckdb.connect(":memory:")
    try:
        for split in sorted(set(da["splits"]) | set(db["splits"])):
            sa, sb = da["splits"].get(split), db["splits"].get(split)
            entry: dict[str, Any] = {"rows_a": sa["rows"] if sa else None, "rows_b": sb["rows"] if sb else None}
            if sa and sb:
                ca, cb = sa["schema"], sb["schema"]
                entry["added_columns"] = {c: cb[c] for c in cb if c not in ca}
                entry["removed_columns"] = {c: ca[c] for c in ca if c not in cb}
                entry["changed_types"] = {c: [ca[c], cb[c]] for c in ca if c in cb and ca[c] != cb[c]}
                shifts = {}
                cols_a, cols_b = text_columns(a, split), text_columns(b, split)
                for col in sorted(set(sa["lengths"]) & set(sb["lengths"])):
                    la, lb = sa["lengths"][col], sb["lengths"][col]
                    if not la.get("rows") or not lb.get("rows"):
                        continue
                    ks = ks_statistic(_sample(con, a, split, cols_a[col]), _sample(con, b, split, cols_b[col]))
                    shifts[col] = {"mean_words": [la["mean_words"], lb["mean_words"]],
                                   "p50_words": [la["p50_words"], lb["p50_words"]],
                                   "p90_words": [la["p90_words"], lb["p90_words"]], "ks": round(ks, 4)}
                entry["length_shift"] = shifts
            out["splits"][split] = entry
    finally:
        con.close()
    return out
