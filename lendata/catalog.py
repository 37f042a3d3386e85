"""DuckDB catalog over every dataset version in the store; read-only SQL.

Views: `<dataset>` is the latest version's `train` split, `<dataset>__<split>` its other splits, and
`"<dataset>@<version>"` / `"<dataset>@<version>/<split>"` any committed version. `lendata_versions` lists
every version. The macros of `catalog/*.sql` (`words`, `assistant`, `prompt`, `bin`) are defined too.

Read-only is enforced twice:
- the statement gate (`check_read_only`) accepts exactly one read statement: SELECT / VALUES / WITH ... SELECT
  whose parse tree holds no INSERT, UPDATE, DELETE or MERGE; DESCRIBE, SUMMARIZE and SHOW (DuckDB parses them
  as SELECT); and EXPLAIN or EXPLAIN ANALYZE of such a statement. PRAGMA, CALL, SET, COPY, ATTACH, IMPORT /
  EXPORT DATABASE, INSTALL / LOAD and every DDL or DML statement are refused before anything runs;
- the connection has no file system: the Parquet shards are scanned by pyarrow (registered Arrow datasets),
  so DuckDB itself needs no file access, and it runs with `enable_external_access=false` and no allowed
  directories (no file can be read, created, changed or deleted, in the store or out), no temporary
  directory (a query larger than memory fails instead of spilling to `./.tmp`), no extension autoloading,
  and a locked configuration. A statement that got past the gate would still find no file to touch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

from lendata import store as st

# query-node types of DuckDB's parse tree (json_serialize_sql) that only read; INSERT_QUERY_NODE and friends
# appear when a CTE modifies data
READ_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}


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


def _dataset(version: st.Version, split: str) -> pads.Dataset:
    """A split's shards as one Arrow dataset, with hive partition values (`bucket=8`) as columns."""
    files = version.splits[split]["files"]
    paths = [str(version.path / f["path"]) for f in files]
    keys: dict[str, list[str]] = {}
    for f in files:
        for k, v in st.partitions(f["path"]).items():
            keys.setdefault(k, []).append(v)
    if not keys:
        return pads.dataset(paths, format="parquet")
    schema = pa.schema([(k, pa.int64() if all(x.lstrip("-").isdigit() for x in vs) else pa.string())
                        for k, vs in keys.items()])
    return pads.dataset(paths, format="parquet", partitioning=pads.partitioning(schema, flavor="hive"),
                        partition_base_dir=str(version.path / split))


def _define_views(con: duckdb.DuckDBPyConnection, views: list[tuple[str, str]]) -> list[str]:
    """CREATE VIEW for each (name, body) whose name SQL can tell from every other (names ignore case). Stores
    written before names were checked can hold `ds` and `DS`: neither gets the name, since serving one of
    them under it would be a guess. Returns the names left undefined."""
    seen: dict[str, list[str]] = {}
    for name, _ in views:
        seen.setdefault(name.lower(), []).append(name)
    clashes = sorted({n for names in seen.values() if len(names) > 1 for n in names})
    for name, body in views:
        if body and len(seen[name.lower()]) == 1:
            con.execute(f"CREATE VIEW {_q(name)} AS {body}")
    return clashes


def connect(store: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the store's views, locked down (see the module docstring)."""
    return _connect(store)[0]


def _connect(store: Path) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """(the connection, the view names left undefined because SQL cannot tell them apart)."""
    # no extension is installed or loaded behind the user's back (installing writes ~/.duckdb)
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    for statement in macros():
        con.execute(statement)
    rows = []
    sources = 0
    views: list[tuple[str, str]] = [("lendata_versions", "")]  # the table's name is taken (body: created below)
    for dataset in st.list_datasets(store):
        versions = st.list_versions(store, dataset)
        for v in versions:
            ver = st.open_version(store, f"{dataset}@{v}")
            latest = v == versions[-1]
            for split in ver.splits:
                if not ver.splits[split]["files"]:
                    continue
                source = f"__lendata_source_{sources}"
                sources += 1
                con.register(source, _dataset(ver, split))
                names = [f"{dataset}@{v}/{split}"]
                names += [f"{dataset}@{v}"] if split == "train" else []
                names += [dataset if split == "train" else f"{dataset}__{split}"] if latest else []
                views += [(name, f"SELECT * FROM {source}") for name in names]
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
    clashes = _define_views(con, views)
    con.register("_versions_df", versions_df)
    con.execute("CREATE TABLE lendata_versions AS SELECT * FROM _versions_df")
    con.unregister("_versions_df")
    # the order matters: the temporary directory can no longer be changed once external access is off
    con.execute("SET temp_directory=''")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con, clashes


_parser: duckdb.DuckDBPyConnection | None = None


def _parse_tree(sql: str) -> dict[str, Any]:
    """DuckDB's own parse tree of one SELECT-type statement (json_serialize_sql), on a connection with no data."""
    global _parser
    if _parser is None:
        _parser = duckdb.connect(":memory:")
    return json.loads(_parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])


def _node_types(tree: Any) -> set[str]:
    """Every query-node type (`..._NODE`) in a parse tree."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            t = x.get("type")
            if isinstance(t, str) and t.endswith("_NODE"):
                found.add(t)
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return found


def _explained(sql: str) -> str:
    """The statement an EXPLAIN [ANALYZE] [(options)] statement explains (comments anywhere are skipped)."""
    tokens = [t for t in duckdb.tokenize(sql) if t[1] != duckdb.token_type.comment]
    i = 1  # tokens[0] is EXPLAIN
    if i < len(tokens) and sql[tokens[i][0]:].split(None, 1)[0].upper().startswith(("ANALYZE", "ANALYSE")):
        i += 1
    if i < len(tokens) and sql[tokens[i][0]] == "(":  # EXPLAIN (FORMAT json) ...
        depth = 0
        for j in range(i, len(tokens)):
            ch = sql[tokens[j][0]]
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                i = j + 1
                break
    if i >= len(tokens):
        raise QueryError("EXPLAIN needs a statement to explain")
    return sql[tokens[i][0]:]


def _check_statement(sql: str, kind: str, nested: bool = False) -> None:
    if kind == "EXPLAIN" and not nested:
        try:
            inner = duckdb.extract_statements(_explained(sql))
        except duckdb.Error as e:
            raise QueryError(f"SQL does not parse: {str(e).splitlines()[0]}") from None
        if len(inner) != 1:
            raise QueryError("EXPLAIN takes exactly one statement")
        _check_statement(inner[0].query, inner[0].type.name, nested=True)
        return
    if kind != "SELECT":
        raise QueryError(f"the query interface is read-only: {kind} statements are refused (only SELECT, WITH, "
                         "DESCRIBE, SUMMARIZE, SHOW and EXPLAIN of them)")
    tree = _parse_tree(sql)
    if tree.get("error"):
        raise QueryError(f"the query interface is read-only: {tree.get('error_message', 'not a plain query')}")
    writes = _node_types(tree) - READ_NODES
    if writes:
        raise QueryError(f"the query interface is read-only: data-modifying parts are refused "
                         f"({', '.join(sorted(writes))})")


def check_read_only(sql: str) -> None:
    """QueryError unless `sql` is exactly one read statement (see the module docstring)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {str(e).splitlines()[0]}") from None
    if not statements:
        raise QueryError("empty query")
    if len(statements) != 1:
        raise QueryError(f"the query interface takes one statement at a time, got {len(statements)}")
    s = statements[0]
    _check_statement(s.query, s.type.name)


def query(store: Path, sql: str) -> pl.DataFrame:
    check_read_only(sql)
    try:
        con, clashes = _connect(store)
    except (duckdb.Error, OSError, pa.ArrowException, KeyError, ValueError, TypeError) as e:
        # a damaged manifest or shard: one clear message, not a traceback
        raise QueryError(f"cannot open the catalog of {store}: {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}") from None
    try:
        rel = con.sql(sql)
        if rel is None:
            raise QueryError("the statement returned no result set")
        return rel.pl()
    except duckdb.Error as e:
        why = str(e).splitlines()[0]
        if clashes:  # the likely cause of a missing view
            why += (f" (no view is defined for {', '.join(clashes)}: their names differ only in case, or clash "
                    "with lendata_versions; rename those datasets)")
        raise QueryError(why) from None
    finally:
        con.close()
