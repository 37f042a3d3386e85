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
