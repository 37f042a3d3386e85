"""Two builds writing one dataset version at once, and secrets: an API key is sent to the engine but never
written to a manifest, a cache, a log or the terminal."""

import json
import os
import subprocess

from lendata import store as st
from tests.faults.fault_server import FaultServer
from tests.faults.harness import DATASET, command, visible_versions_are_whole, write_instructions


def start(cmd, env=None):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", **(env or {})})


def wait_message(proc) -> str:
    """stderr lines of a build up to the one saying that it waits for the dataset's lock (or up to its end)."""
    seen = ""
    for line in proc.stderr:
        seen += line
        if "waiting for another build" in line:
            break
    return seen


def test_two_builds_of_one_version_at_once_leave_one_consistent_version(tmp_path):
    qa = write_instructions(tmp_path / "qa.jsonl", 40)
    other = write_instructions(tmp_path / "other.jsonl", 30)
    store = tmp_path / "store"
    with FaultServer(delay=0.02) as server:
        # the test holds the dataset's lock, so both builds must reach the commit and wait there together
        with st.dataset_lock(store, DATASET):
            same = [start(command(store, qa, server.url, extra=("--set", "version=1.0.0"))) for _ in range(2)]
            waiting = [wait_message(p) for p in same]  # returns once that build waits for the lock
        outs = [p.communicate(timeout=300) for p in same]
        assert [p.returncode for p in same] == [0, 0], outs
        assert all("waiting for another build of faults" in w for w in waiting), waiting
        reports = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
        # one committed; the other waited for the lock, then found the identical content already there
        assert sorted(r["unchanged"] for r in reports) == [False, True]
        assert visible_versions_are_whole(store) == ["1.0.0"]
        first = st.open_version(store, f"{DATASET}@1.0.0").manifest["content_hash"]
        # different content under the same explicit version: refused with a clear error, the store untouched
        p = start(command(store, other, server.url, extra=("--set", "version=1.0.0")))
        out, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "already committed with other content" in err and "Traceback" not in err
    assert visible_versions_are_whole(store) == ["1.0.0"]
    assert st.open_version(store, f"{DATASET}@1.0.0").manifest["content_hash"] == first
    assert not [p for p in (store / DATASET).iterdir() if p.name.startswith((".staging", ".trash"))]


def test_an_api_key_reaches_the_engine_and_nowhere_else(tmp_path):
    secret = "sk-lendata-test-0123456789abcdef"
    qa = write_instructions(tmp_path / "qa.jsonl", 5)
    store = tmp_path / "store"
    with FaultServer(transient_share=0.4, modes=("500", "truncated")) as server:
        p = start(command(store, qa, server.url, extra=("--verbose",)), env={"OPENAI_API_KEY": secret})
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert server.authorizations == {f"Bearer {secret}"}
    assert secret not in out + err
    for path in store.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
