"""Kill a build anywhere (SIGKILL, whole process group), rerun it: nothing lost, nothing duplicated, no partial
data visible, and at most 5% of the engine calls repeated (the response cache keeps every finished call)."""

import pytest

from tests.faults.fault_server import FaultServer
from tests.faults.harness import crash_scenario


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_builds_rerun_to_the_uninterrupted_result(tmp_path, seed):
    res = crash_scenario(seed, n=100, make_server=lambda: FaultServer(delay=0.01), tmp=tmp_path)
    assert res["kills"] >= 1, res  # at least one kill landed before the build could finish
    assert res["same_content"] and res["rows"] == res["baseline_rows"] == 100, res
    assert res["rows_lost"] == 0 and res["duplicate_rows"] == 0, res
    assert len(res["versions"]) == 1, res  # killed runs left no version behind
    assert res["repeated_share"] <= 0.05, res
