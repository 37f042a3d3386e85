import hashlib

import duckdb
import pyarrow as pa
import pytest

from lendata import store as st
from lendata.catalog import QueryError, query


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    st.commit(root, "ds", {"train": pa.table({"x": [1, 2, 3]}), "quarantine": pa.table({"reason": ["bad"]})},
              meta={"recipe": "r", "engine": "e", "model": "m"})
    st.commit(root, "ds", {"train": pa.table({"x": [10, 20]})})
    (root / "secret.csv").write_text("a\n1\n")
    return root


def test_views_for_latest_each_version_and_splits(store):
    assert query(store, "SELECT sum(x) AS s FROM ds")["s"][0] == 30
    assert query(store, 'SELECT sum(x) AS s FROM "ds@0.1.0"')["s"][0] == 6
    assert query(store, 'SELECT count(*) AS n FROM "ds@0.1.0/quarantine"')["n"][0] == 1
    v = query(store, "SELECT version, rows, latest, recipe FROM lendata_versions ORDER BY version")
    assert v.to_dicts() == [{"version": "0.1.0", "rows": 3, "latest": False, "recipe": "r"},
                            {"version": "0.1.1", "rows": 2, "latest": True, "recipe": None}]


@pytest.mark.parametrize("sql, why", [
    ("CREATE TABLE t AS SELECT 1", "read-only"),
    ("INSERT INTO lendata_versions SELECT * FROM lendata_versions", "read-only"),
    ("COPY (SELECT 1) TO '/tmp/lendata-out.csv'", "read-only"),
    ("ATTACH '/tmp/x.db'", "read-only"),
    ("INSTALL httpfs", "read-only"),
    ("SET enable_external_access=true", "read-only"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission"),
    ("SELECT * FROM ds; DROP VIEW ds", "one statement"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELEC nonsense", "parse"),
    ("", "empty"),
    ("PRAGMA version", "read-only"),
    ("CALL pragma_version()", "read-only"),
    ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "read-only"),
    ("EXPLAIN ANALYZE ATTACH ':memory:' AS m", "read-only|parse"),
    ("EXPLAIN CREATE TABLE t AS SELECT 1", "read-only"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/lendata-out.csv'", "read-only"),
    ("WITH t AS (INSERT INTO lendata_versions SELECT * FROM lendata_versions RETURNING *) SELECT * FROM t",
     "data-modifying"),
    ("WITH t AS (DELETE FROM lendata_versions RETURNING *) SELECT count(*) FROM t", "data-modifying"),
    ("SELECT * FROM (WITH t AS (DELETE FROM lendata_versions RETURNING *) SELECT * FROM t)", "data-modifying"),
    ("IMPORT DATABASE '/tmp'", "read-only"),
    ("EXPORT DATABASE '/tmp/lendata-export'", "read-only"),
    ("LOAD httpfs", "read-only"),
    ("PIVOT ds ON x USING count(*)", "read-only"),
])
def test_query_is_read_only_and_confined_to_the_store(store, sql, why):
    with pytest.raises(QueryError, match=why):
        query(store, sql)


@pytest.mark.parametrize("sql", [
    "SELECT count(*) AS n FROM ds", "FROM ds", "WITH t AS (SELECT x FROM ds) SELECT sum(x) AS n FROM t",
    "EXPLAIN SELECT * FROM ds", "EXPLAIN ANALYZE SELECT sum(x) FROM ds", "DESCRIBE ds", "SUMMARIZE ds",
    "SHOW TABLES", "(SELECT 1 AS n) UNION ALL (SELECT 2)", "-- a comment\nSELECT 1 AS n;"])
def test_read_statements_are_accepted(store, sql):
    assert query(store, sql).height >= 1


def _tree(root):
    """path -> sha256 of every file under root (hidden ones too)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def write_attempts(store):
    """What a hostile user could type into `lendata query` to write a file; each names a real target."""
    shard = st.open_version(store, "ds@0.1.0").files("train")[0]
    script = store / "ds" / "0.1.0" / "train" / "schema.sql"
    outside = store.parent
    return [
        f"EXPLAIN ANALYZE COPY (SELECT 999 AS x) TO '{shard}' (FORMAT parquet)",
        f"COPY (SELECT 999 AS x) TO '{shard}' (FORMAT parquet)",
        f"EXPLAIN ANALYZE COPY (SELECT 'CREATE TABLE p AS SELECT 1;' AS s) TO '{script}' (HEADER false)",
        f"EXPLAIN ANALYZE ATTACH '{store}/ds/new.duckdb' AS x",
        f"ATTACH '{store}/ds/new.duckdb' AS x",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        f"IMPORT DATABASE '{store}/ds/0.1.0/train'",
        f"EXPORT DATABASE '{store}/exported'",
        f"EXPORT DATABASE '{outside}/outside-export'",
        f"COPY (SELECT 1) TO '{outside}/outside.csv'",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{outside}/outside.csv'",
        "WITH t AS (INSERT INTO lendata_versions SELECT * FROM lendata_versions RETURNING *) SELECT * FROM t",
        f"SELECT * FROM read_parquet('{shard}')",
        "PRAGMA enable_profiling='json'",
        f"SET profiling_output='{store}/profile.json'",
        f"SELECT * FROM query('COPY (SELECT 1) TO ''{store}/q.csv''')",
        # a sort larger than memory would spill to ./.tmp without the connection's settings
        "SELECT count(*) FROM (SELECT range % 1000003 AS a, random() AS b FROM range(3000000) ORDER BY b)",
    ]


def test_no_query_creates_changes_or_deletes_a_file(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DuckDB spills to ./.tmp by default: the working folder is watched too
    before = _tree(tmp_path)
    for sql in write_attempts(store):
        try:
            query(store, sql)
        except QueryError:
            pass
    assert _tree(tmp_path) == before
    for v in ("0.1.0", "0.1.1"):  # every file of the store still has its manifest hash
        ver = st.open_version(store, f"ds@{v}")
        for split in ver.splits.values():
            for f in split["files"]:
                assert hashlib.sha256((ver.path / f["path"]).read_bytes()).hexdigest() == f["sha256"]


def test_the_connection_itself_cannot_touch_files(store, tmp_path, monkeypatch):
    """Defence in depth: statements that the gate would refuse find no file system on the connection either."""
    from lendata.catalog import connect

    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    con = connect(store)
    shard = st.open_version(store, "ds@0.1.0").files("train")[0]
    for sql in [f"COPY (SELECT 999 AS x) TO '{shard}' (FORMAT parquet)", f"ATTACH '{store}/x.db' AS x",
                f"EXPORT DATABASE '{store}/out'", f"SELECT * FROM read_csv('{store}/secret.csv')",
                f"IMPORT DATABASE '{store}'", "SET enable_external_access=true",
                "SET temp_directory='/tmp/lendata-spill'", "INSTALL httpfs", "SET lock_configuration=false"]:
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    con.close()
    assert _tree(tmp_path) == before


def test_hive_partitions_are_columns_of_the_views(tmp_path):
    with st.Stage(tmp_path, "dd") as stage:
        for k in (8, 9):
            w = stage.writer("train", pa.schema([("x", pa.int64())]), partition=f"bucket={k}")
            w.write(pa.table({"x": [k, k]}))
            w.close()
        stage.publish()
    got = query(tmp_path, "SELECT bucket, sum(x) AS s FROM dd GROUP BY 1 ORDER BY 1").to_dicts()
    assert got == [{"bucket": 8, "s": 16}, {"bucket": 9, "s": 18}]


def test_files_are_read_only_through_the_catalog(store):
    # the views are the interface: no file of the store (or outside it) can be named in SQL
    with pytest.raises(QueryError, match="Permission"):
        query(store, f"SELECT count(*) AS n FROM read_csv('{store}/secret.csv')")


def test_catalog_macros_count_words_and_pick_turns(tmp_path):
    msgs = pa.array([[{"role": "user", "content": "write"}, {"role": "assistant", "content": "one two  three"}]],
                    pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
    st.commit(tmp_path, "chat", {"train": pa.table({"messages": msgs})})
    row = query(tmp_path, "SELECT prompt(messages) AS p, words(assistant(messages)) AS w, bin(1234, 500) AS b "
                          "FROM chat").to_dicts()
    assert row == [{"p": "write", "w": 3, "b": 1000}]


def test_query_command_writes_each_format_to_out(store, tmp_path):
    from typer.testing import CliRunner

    from lendata.cli import app

    for fmt in ("csv", "json", "parquet", "table"):
        out = tmp_path / f"r.{fmt}"
        res = CliRunner().invoke(app, ["query", "SELECT x FROM ds ORDER BY x", "--store", str(store), "--format", fmt,
                                       "--out", str(out)])
        assert res.exit_code == 0, res.output
        if fmt == "parquet":
            import pyarrow.parquet as pq

            assert pq.read_table(out).column("x").to_pylist() == [10, 20]
        else:
            assert "20" in out.read_text()
    res = CliRunner().invoke(app, ["query", "COPY (SELECT 1) TO 'x.csv'", "--store", str(store)])
    assert res.exit_code == 1 and "read-only" in res.output
    # --out never writes into the store: a published shard cannot be overwritten through it
    shard = st.open_version(store, "ds@0.1.0").files("train")[0]
    before = shard.read_bytes()
    for fmt in ("parquet", "csv", "json", "table"):
        res = CliRunner().invoke(app, ["query", "SELECT 999 AS x", "--store", str(store), "--format", fmt,
                                       "--out", str(shard)])
        assert res.exit_code == 1 and "inside" in res.output, res.output
    # nor inside a committed version of another store, nor through `score --to`
    other = tmp_path / "elsewhere"
    st.commit(other, "x", {"train": pa.table({"x": [1]})})
    foreign = st.open_version(other, "x").files("train")[0]
    foreign_bytes = foreign.read_bytes()
    res = CliRunner().invoke(app, ["query", "SELECT 999 AS x", "--store", str(store), "--format", "csv",
                                   "--out", str(foreign)])
    assert res.exit_code == 1 and "inside a committed dataset version" in res.output, res.output
    scores = tmp_path / "s.jsonl"
    scores.write_text('{"response": "one two three", "target_words": 3}\n')
    res = CliRunner().invoke(app, ["score", str(scores), "--to", str(shard)])
    assert res.exit_code == 1 and "inside a committed dataset version" in res.output, res.output
    assert shard.read_bytes() == before and foreign.read_bytes() == foreign_bytes


def test_outputs_never_land_in_the_store_s_build_state(store, tmp_path):
    from typer.testing import CliRunner

    from lendata.cli import app

    cache = store / "_work" / "ds" / "responses.sqlite"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"SQLite format 3\x00 pretend")
    res = CliRunner().invoke(app, ["query", "SELECT 1 AS x", "--store", str(store), "--format", "csv", "--out",
                                   str(cache)])
    assert res.exit_code == 1 and "inside the store" in res.output
    assert cache.read_bytes() == b"SQLite format 3\x00 pretend"


@pytest.mark.parametrize("sql", ["-- a note\nEXPLAIN SELECT count(*) FROM ds", "/* c */ EXPLAIN SELECT 1",
                                 "EXPLAIN /* c */ ANALYZE SELECT 1"])
def test_comments_do_not_confuse_the_gate(store, sql):
    assert query(store, sql).height >= 1


def test_names_sql_cannot_tell_apart_are_refused_and_old_clashes_do_not_break_queries(store):
    for bad in ("DS", "lendata_versions", "ds__quarantine"):
        with pytest.raises(ValueError, match="invalid dataset"):
            st.commit(store, bad, {"train": pa.table({"x": [1]})})
    # a store written before the check: `DS` beside `ds` gets no view at all (serving either would be a guess),
    # the error says why, and every other view still answers
    import shutil

    shutil.copytree(store / "ds", store / "DS")
    st.commit(store, "other", {"train": pa.table({"x": [5]})})
    with pytest.raises(QueryError, match="differ only in case"):
        query(store, "SELECT sum(x) AS s FROM ds")
    assert query(store, "SELECT sum(x) AS s FROM other")["s"][0] == 5


def test_a_name_taken_while_a_build_ran_is_refused_at_publish(tmp_path):
    with st.Stage(tmp_path, "ds") as stage:
        stage.add_table("train", pa.table({"x": [1]}))
        st.commit(tmp_path, "DS", {"train": pa.table({"x": [2]})})  # another build, meanwhile
        with pytest.raises(ValueError, match="SQL names ignore case"):
            stage.publish()
    assert st.list_datasets(tmp_path) == ["DS"]
    with st.Stage(tmp_path, "ds2") as stage:
        stage.add_table("train", pa.table({"x": [1]}))
        with pytest.raises(ValueError, match="ignore case"):
            stage.add_table("Train", pa.table({"x": [1]}))


def test_outputs_replace_links_instead_of_writing_through_them(store, tmp_path):
    """A hard link or symlink planted at an output name outside the store must not reach the published file."""
    import os

    from typer.testing import CliRunner

    from lendata.cli import app

    shard = st.open_version(store, "ds@0.1.0").files("train")[0]
    manifest = st.open_version(store, "ds@0.1.0").path / "manifest.json"
    before = (shard.read_bytes(), manifest.read_bytes())
    hard = tmp_path / "hl.parquet"
    os.link(shard, hard)
    res = CliRunner().invoke(app, ["query", "SELECT 999 AS x", "--store", str(store), "--format", "parquet",
                                   "--out", str(hard)])
    assert res.exit_code == 0, res.output
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.json").symlink_to(manifest)
    (rep / "index.html").symlink_to(shard)
    res = CliRunner().invoke(app, ["report", "ds@0.1.0", "--store", str(store), "--to", str(rep)])
    assert res.exit_code == 0, res.output
    assert (shard.read_bytes(), manifest.read_bytes()) == before
    assert not (rep / "report.json").is_symlink()


def test_outputs_never_land_in_another_store(store, tmp_path):
    from typer.testing import CliRunner

    from lendata.cli import app

    other = tmp_path / "other"
    st.commit(other, "x", {"train": pa.table({"x": [1]})})
    cache = other / "_work" / "x" / "responses.sqlite"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"cache")
    scores = tmp_path / "s.jsonl"
    scores.write_text('{"response": "one two three", "target_words": 3}\n')
    for args in (["query", "SELECT 1 AS x", "--store", str(store), "--format", "csv", "--out", str(cache)],
                 ["query", "SELECT 1 AS x", "--store", str(store), "--format", "csv", "--out",
                  str(other / "x" / ".lock")],
                 ["score", str(scores), "--to", str(cache)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1 and "inside the store" in res.output, res.output
    assert cache.read_bytes() == b"cache"
    res = CliRunner().invoke(app, ["score", str(scores), "--to", str(tmp_path / "no" / "such" / "dir.jsonl")])
    assert res.exit_code == 1 and "cannot write" in res.output and "Traceback" not in res.output
