import json
import os

import pyarrow as pa
import pytest

from lendata import store as st


def table(n, offset=0):
    return pa.table({"id": [f"r{i}" for i in range(offset, offset + n)], "text": pa.array(["x" * i for i in range(n)],
                                                                                       pa.large_string())})


def test_commit_writes_shards_and_manifest(tmp_path):
    v = st.commit(tmp_path, "ds", {"train": table(25), "quarantine": table(2)}, rows_per_shard=10,
                  meta={"recipe": "r", "engine": "e", "model": "m"})
    assert v.version == "0.1.0" and v.rows() == 25 and v.rows("quarantine") == 2
    files = sorted(p.relative_to(v.path).as_posix() for p in v.path.rglob("*.parquet"))
    assert files == ["quarantine/part-00000.parquet", "train/part-00000.parquet", "train/part-00001.parquet",
                     "train/part-00002.parquet"]
    m = json.loads((v.path / "manifest.json").read_text())
    assert m["splits"]["train"]["rows"] == 25 and len(m["splits"]["train"]["files"]) == 3
    assert all(len(f["sha256"]) == 64 for f in m["splits"]["train"]["files"])
    assert m["schema"]["train"][1] == {"name": "text", "type": "large_string"}
    assert {"created", "lendata_version", "content_hash", "recipe", "engine", "model"} <= set(m)
    assert st.open_version(tmp_path, "ds").read().equals(table(25))
    assert not [p for p in (tmp_path / "ds").iterdir() if p.name.startswith(".staging")]


def test_auto_versions_reuse_identical_content_and_bump_otherwise(tmp_path):
    a = st.commit(tmp_path, "ds", {"train": table(3)})
    again = st.commit(tmp_path, "ds", {"train": table(3)})
    assert again.version == "0.1.0" and again.unchanged
    b = st.commit(tmp_path, "ds", {"train": table(4)})
    assert (a.version, b.version) == ("0.1.0", "0.1.1")
    assert st.list_versions(tmp_path, "ds") == ["0.1.0", "0.1.1"]
    assert st.open_version(tmp_path, "ds").version == "0.1.1"


def test_committed_version_is_immutable_unless_overwrite(tmp_path):
    st.commit(tmp_path, "ds", {"train": table(3)}, version="1.0.0")
    assert st.commit(tmp_path, "ds", {"train": table(3)}, version="1.0.0").unchanged
    with pytest.raises(st.VersionExists, match="immutable"):
        st.commit(tmp_path, "ds", {"train": table(5)}, version="1.0.0")
    assert st.open_version(tmp_path, "ds@1.0.0").rows() == 3
    v = st.commit(tmp_path, "ds", {"train": table(5)}, version="1.0.0", overwrite=True)
    assert v.rows() == 5 and st.open_version(tmp_path, "ds@1.0.0").rows() == 5
    assert [p.name for p in (tmp_path / "ds").iterdir() if not p.name.startswith(".lock")] == ["1.0.0"]


def test_failed_commit_leaves_nothing_visible(tmp_path, monkeypatch):
    real = st.write_parquet_atomic
    calls = []

    def dying(tbl, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(tbl, path, **kw)

    monkeypatch.setattr(st, "write_parquet_atomic", dying)
    with pytest.raises(OSError):
        st.commit(tmp_path, "ds", {"train": table(30)}, rows_per_shard=10)
    assert st.list_versions(tmp_path, "ds") == []
    assert sorted(os.listdir(tmp_path / "ds")) == [".lock"]


def test_shard_write_is_atomic(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def broken(*a, **k):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(RuntimeError):
        st.write_parquet_atomic(table(3), tmp_path / "part-00000.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["../evil", "a/b", ".hidden", "_work", "", "x" * 200, "..", "a..b"])
def test_names_cannot_escape_the_store(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid"):
        st.commit(tmp_path, bad, {"train": table(1)})


def test_bad_refs_give_clear_errors(tmp_path):
    with pytest.raises(st.NotFound, match="no dataset 'nope'"):
        st.open_version(tmp_path, "nope")
    st.commit(tmp_path, "ds", {"train": table(1)})
    with pytest.raises(st.NotFound, match="versions: 0.1.0"):
        st.open_version(tmp_path, "ds@9.9.9")
    with pytest.raises(ValueError):
        st.commit(tmp_path, "ds", {"train": table(1)}, version="v1")


def test_second_writer_fails_fast_when_asked_not_to_wait(tmp_path):
    with st.dataset_lock(tmp_path, "ds"), pytest.raises(st.StoreError, match="another build"), \
            st.dataset_lock(tmp_path, "ds", wait=False):
        pass
