"""DuckDB catalog over every dataset version in the store; read-only SQL.

Views: `<dataset>` is the latest version's `train` split, `<dataset>__<split>` its other splits, and
`"<dataset>@<version>"` / `"<dataset>@<version>/<split>"` any committed version. `lendata_versions` lists
every version. The macros of `catalog/*.sql` (`words`, `assistant`, `prompt`, `bin`) are defined too.
After the views are defined the connection is locked down: file access only inside the store,
no configuration changes, and only SELECT-like statements are accepted.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from lendata import store as st

READ_ONLY_TYPES = {"SELECT", "EXPLAIN", "PRAGMA"}


class QueryError(ValueError):
    pass


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_parquet_sql(version: st.Version, split: str) -> str:
    """`read_parquet([...])` over a split's shards, with hive partition columns when its paths have them."""
    paths = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in version.files(split)) + "]"
    hive = any(st.partitions(f["path"]) for f in version.splits[split]["files"])
    return f"read_parquet({paths}{', hive_partitioning = true' if hive else ''})"


def macros() -> list[str]:
    """The statements of `catalog/*.sql` (SQL macros every query can use)."""
    from lendata.paths import project_root

    out = []
    for path in sorted((project_root() / "catalog").glob("*.sql")):
        out += [s.query for s in duckdb.extract_statements(path.read_text())]
    return out


def connect(store: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    for statement in macros():
        con.execute(statement)
    rows = []
    for dataset in st.list_datasets(store):
        versions = st.list_versions(store, dataset)
        for v in versions:
            ver = st.open_version(store, f"{dataset}@{v}")
            latest = v == versions[-1]
            for split in ver.splits:
                if not ver.splits[split]["files"]:
                    continue
                body = f"SELECT * FROM {read_parquet_sql(ver, split)}"
                con.execute(f"CREATE VIEW {_q(f'{dataset}@{v}/{split}')} AS {body}")
                if split == "train":
                    con.execute(f"CREATE VIEW {_q(f'{dataset}@{v}')} AS {body}")
                if latest:
                    name = dataset if split == "train" else f"{dataset}__{split}"
                    con.execute(f"CREATE VIEW {_q(name)} AS {body}")
            m = ver.manifest
            rows.append(
                {
                    "dataset": dataset,
                    "version": v,
                    "latest": latest,
                    "rows": ver.rows(),
                    "quarantined": ver.rows("quarantine"),
                    "bytes": sum(f["bytes"] for s in ver.splits.values() for f in s["files"]),
                    "created": m.get("created"),
                    "recipe": m.get("recipe"),
                    "engine": m.get("engine"),
                    "model": m.get("model"),
                    "content_hash": m.get("content_hash"),
                }
            )
    versions_df = pl.DataFrame(
        rows,
        schema={
            "dataset": pl.String, "version": pl.String, "latest": pl.Boolean, "rows": pl.Int64,
            "quarantined": pl.Int64, "bytes": pl.Int64, "created": pl.String, "recipe": pl.String,
            "engine": pl.String, "model": pl.String, "content_hash": pl.String,
        },
    )
    con.register("_versions_df", versions_df)
    con.execute("CREATE TABLE lendata_versions AS SELECT * FROM _versions_df")
    con.unregister("_versions_df")
    store_dir = str(store.resolve()).rstrip("/") + "/"
    con.execute(f"SET allowed_directories=['{store_dir.replace(chr(39), chr(39) * 2)}']")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {e}") from None
    if not statements:
        raise QueryError("empty query")
    for s in statements:
        kind = s.type.name
        if kind not in READ_ONLY_TYPES:
            raise QueryError(f"the query interface is read-only: {kind} statements are refused")


def query(store: Path, sql: str) -> pl.DataFrame:
    check_read_only(sql)
    con = connect(store)
    try:
        rel = con.sql(sql)
        if rel is None:
            raise QueryError("the statement returned no result set")
        return rel.pl()
    except duckdb.Error as e:
        raise QueryError(str(e).splitlines()[0]) from None
    finally:
        con.close()
