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

    target = tmp_path / "part-00000.parquet"
    st.write_parquet_atomic(table(2), target)
    before = target.read_bytes()
    real = pq.write_table

    def killed_mid_write(tbl, where, **kw):
        real(tbl, where, **kw)
        with open(where, "r+b") as f:  # part of the file is on disk, as a crash mid-write leaves it
            f.truncate(40)
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(pq, "write_table", killed_mid_write)
    with pytest.raises(RuntimeError):
        st.write_parquet_atomic(table(3), target)
    assert target.read_bytes() == before  # the reader still sees the old, whole file
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]  # and no partial file anywhere


@pytest.mark.parametrize("bad", ["../evil", "a/b", ".hidden", "_work", "", "x" * 200, "..", "a..b", "ds\n",
                                 "ds\r", "d\u0661s", "ds "])
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


@pytest.mark.parametrize("bad", ["01.0.0", "1.00.0", "1.0.00", "\u0661.0.0", "1.0.0\n", "1.0", "1.0.0.0", " 1.0.0",
                                 "+1.0.0", "1.0.0-rc1", "v1.0.0", "1_0.0.0", "\uff11.0.0", "1.0.0 "])
def test_only_canonical_versions_are_accepted(tmp_path, bad):
    st.commit(tmp_path, "ds", {"train": table(3)}, version="1.0.0")
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        st.commit(tmp_path, "ds", {"train": table(5)}, version=bad)
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        st.open_version(tmp_path, f"ds@{bad}")
    assert st.list_versions(tmp_path, "ds") == ["1.0.0"]
    assert sorted(p.name for p in (tmp_path / "ds").iterdir() if not p.name.startswith(".")) == ["1.0.0"]


def test_a_non_canonical_folder_is_never_a_version(tmp_path):
    v = st.commit(tmp_path, "ds", {"train": table(3)}, version="1.0.0")
    import shutil

    shutil.copytree(v.path, tmp_path / "ds" / "01.0.0")  # left by an older lendata: never listed, never latest
    shutil.copytree(v.path, tmp_path / "ds" / "\u0661.0.0")
    assert st.list_versions(tmp_path, "ds") == ["1.0.0"] and st.open_version(tmp_path, "ds").version == "1.0.0"


def test_an_auto_build_is_what_the_default_view_serves(tmp_path):
    """A -> 0.1.0, B -> 0.1.1, A again: the default view must serve A, so A is committed anew as 0.1.2 and
    records that it equals 0.1.0 (an 'unchanged 0.1.0' would leave B in the default view)."""
    a = st.commit(tmp_path, "ds", {"train": table(3)})
    b = st.commit(tmp_path, "ds", {"train": table(4)})
    again = st.commit(tmp_path, "ds", {"train": table(3)})
    assert (a.version, b.version, again.version) == ("0.1.0", "0.1.1", "0.1.2") and not again.unchanged
    assert again.manifest["same_content_as"] == "0.1.0"
    assert again.manifest["content_hash"] == a.manifest["content_hash"]
    assert st.open_version(tmp_path, "ds").version == "0.1.2"
    assert st.open_version(tmp_path, "ds").read().equals(table(3))
    once_more = st.commit(tmp_path, "ds", {"train": table(3)})
    assert once_more.version == "0.1.2" and once_more.unchanged


KILL_SCRIPT = """
import sys
from pathlib import Path
import pyarrow as pa
from lendata import store as st
n, version = int(sys.argv[2]), sys.argv[3]
st.commit(Path(sys.argv[1]), "ds", {"train": pa.table({"x": list(range(n))})}, version=version,
          overwrite=True, rows_per_shard=2)
"""


def killed_commit(store, n, version, point):
    import signal
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(store), str(n), version],
                         env={**os.environ, "LENDATA_TEST_FAULT": point}, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    return res


def rows_of(store, ref):
    return st.open_version(store, ref).read().column("x").to_pylist()


@pytest.mark.parametrize("point, expect_new", [("shard_write", False), ("before_publish", False),
                                                ("overwrite_exchanged", True), ("after_publish", True)])
def test_an_overwrite_killed_at_any_point_leaves_one_whole_version(tmp_path, point, expect_new):
    from lendata.validation import validate_version

    st.commit(tmp_path, "ds", {"train": pa.table({"x": [1, 2, 3]})}, version="1.0.0")
    killed_commit(tmp_path, 5, "1.0.0", point)
    # the version never went missing: it is the old one or the new one, each whole
    assert st.list_versions(tmp_path, "ds") == ["1.0.0"]
    assert rows_of(tmp_path, "ds@1.0.0") == (list(range(5)) if expect_new else [1, 2, 3])
    assert validate_version(tmp_path, "ds@1.0.0")[0] == []
    # the next writer of the dataset clears what the killed one left
    st.commit(tmp_path, "ds", {"train": pa.table({"x": [7]})}, version="2.0.0")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [".lock", "1.0.0", "2.0.0"]


def test_a_first_commit_killed_before_publish_leaves_no_version(tmp_path):
    killed_commit(tmp_path, 5, "1.0.0", "before_publish")
    assert st.list_versions(tmp_path, "ds") == []
    assert [p.name for p in (tmp_path / "ds").iterdir() if p.name.startswith(".staging-")]  # hidden, not a version
    st.commit(tmp_path, "ds", {"train": pa.table({"x": [1]})})
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [".lock", "0.1.0"]


def test_publish_fsyncs_every_shard_folder(tmp_path, monkeypatch):
    from lendata import atomic

    synced = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: (synced.append(p.name), real(p)))
    with st.Stage(tmp_path, "dd") as stage:
        w = stage.writer("train", pa.schema([("x", pa.int64())]), partition="bucket=8")
        w.write(pa.table({"x": [1, 2]}))
        w.close()
        stage.publish()
    assert {"bucket=8", "train"} <= set(synced)


def test_the_same_bytes_in_another_partition_are_other_content(tmp_path):
    t = pa.table({"text": ["hello world"]})
    versions = []
    for bucket in ("bucket=8", "bucket=9"):
        with st.Stage(tmp_path, "dec") as stage:
            w = stage.writer("train", t.schema, partition=bucket)
            w.write(t)
            w.close()
            versions.append(stage.publish())
    assert [v.version for v in versions] == ["0.1.0", "0.1.1"] and not versions[1].unchanged
    assert st.open_version(tmp_path, "dec").read().column("bucket").to_pylist() == [9]
