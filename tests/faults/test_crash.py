"""Kill a build anywhere (SIGKILL, whole process group), rerun it: nothing lost, nothing duplicated, no partial
data visible, and no more engine calls repeated than were in flight when each kill landed (kills x concurrency:
the response cache keeps every finished call). Random kills while generating, at the default concurrency (8)
and at 2, and kills at each named fault point of the commit path."""

import pytest

from lendata import store as st
from tests.faults.fault_server import FaultServer
from tests.faults.harness import (
    DATASET,
    command,
    crash_scenario,
    killed_at,
    run,
    visible_versions_are_whole,
    write_instructions,
)


@pytest.mark.parametrize("seed, concurrency", [(1, 2), (2, 8), (3, 8)])
def test_killed_builds_rerun_to_the_uninterrupted_result(tmp_path, seed, concurrency):
    res = crash_scenario(seed, n=100, make_server=lambda: FaultServer(delay=0.01), tmp=tmp_path,
                         concurrency=concurrency)
    assert res["kills"] >= 1, res  # at least one kill landed before the build could finish
    assert res["same_content"] and res["rows"] == res["baseline_rows"] == 100, res
    assert res["same_train"] and res["same_quarantine"], res
    assert res["rows_lost"] == 0 and res["duplicate_rows"] == 0 and res["extra_rows"] == 0, res
    assert len(res["versions"]) == 1, res  # killed runs left no version behind
    assert res["repeated_calls"] <= res["repeat_bound"], res  # at most the calls in flight at each kill


@pytest.fixture(scope="module")
def server():
    with FaultServer() as s:
        yield s


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, server):
    tmp = tmp_path_factory.mktemp("baseline")
    qa = write_instructions(tmp / "qa.jsonl", 12)
    run(command(tmp / "store", qa, server.url))
    return qa, st.open_version(tmp / "store", DATASET).manifest["content_hash"]


@pytest.mark.parametrize("point", ["generated", "shard_write", "before_publish", "after_publish"])
def test_a_build_killed_at_each_commit_step_reruns_to_the_same_version(tmp_path, server, baseline, point):
    qa, content = baseline
    store = tmp_path / "store"
    cmd = command(store, qa, server.url)
    killed_at(cmd, point)
    versions = visible_versions_are_whole(store)
    assert versions == (["0.1.0"] if point == "after_publish" else [])  # published whole, or not at all
    again = run(cmd)
    assert again["version"] == "0.1.0" and again["engine_calls"] == 0  # every call came from the cache
    assert st.open_version(store, DATASET).manifest["content_hash"] == content
    assert sorted(p.name for p in (store / DATASET).iterdir()) == [".lock", "0.1.0"]  # leftovers cleaned


@pytest.mark.parametrize("point", ["before_publish", "overwrite_exchanged", "after_publish"])
def test_an_overwrite_killed_midway_never_loses_the_version(tmp_path, server, baseline, point):
    qa, content = baseline
    other = write_instructions(tmp_path / "other.jsonl", 7)
    store = tmp_path / "store"
    run(command(store, other, server.url, extra=("--set", "version=1.0.0")))
    old = st.open_version(store, f"{DATASET}@1.0.0").manifest["content_hash"]
    cmd = command(store, qa, server.url, extra=("--set", "version=1.0.0", "--overwrite"))
    killed_at(cmd, point)
    assert visible_versions_are_whole(store) == ["1.0.0"]  # never missing, never partial
    now = st.open_version(store, f"{DATASET}@1.0.0").manifest["content_hash"]
    assert now == (old if point == "before_publish" else content)
    run(cmd)
    assert st.open_version(store, f"{DATASET}@1.0.0").manifest["content_hash"] == content
    assert sorted(p.name for p in (store / DATASET).iterdir()) == [".lock", "1.0.0"]
