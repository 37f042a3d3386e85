import pyarrow as pa
import pytest

from lendata import store as st
from lendata.catalog import QueryError, query


@pytest.fixture
def store(tmp_path):
    st.commit(tmp_path, "ds", {"train": pa.table({"x": [1, 2, 3]}), "quarantine": pa.table({"reason": ["bad"]})},
              meta={"recipe": "r", "engine": "e", "model": "m"})
    st.commit(tmp_path, "ds", {"train": pa.table({"x": [10, 20]})})
    (tmp_path / "secret.csv").write_text("a\n1\n")
    return tmp_path


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
    ("SELECT * FROM ds; DROP VIEW ds", "read-only"),
    ("SELEC nonsense", "parse"),
])
def test_query_is_read_only_and_confined_to_the_store(store, sql, why):
    with pytest.raises(QueryError, match=why):
        query(store, sql)


def test_files_inside_the_store_stay_readable(store):
    assert query(store, f"SELECT count(*) AS n FROM read_csv('{store}/secret.csv')")["n"][0] == 1


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
