"""Scale-out on Ray: a local Ray cluster (2 CPUs) and a Prefect server, both on 127.0.0.1, and a sharded recipe
built with the embedded SmolLM2 on the local runner and on Ray: the same data, and on Ray every shard ran in a
Ray worker and reported to the server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from flows._runner import cache_file
from flows._server import shared_server
from lendata import store as st
from lendata.build import cut
from lendata.cli import app
from tests.conftest import free_port

PROMPTS = ["Describe a lighthouse at dawn.", "Explain why bread rises.", "Write about a quiet library.",
           "Describe a mountain stream.", "Explain how a bicycle works.", "Write about an old clock."]


def wait_until(ready, what: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    # the same starter a build uses when it has no PREFECT_API_URL: a store's shared loopback server
    env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("PREFECT_API")}
    try:
        with shared_server(tmp_path_factory.mktemp("prefect-server")) as url:
            yield url
    finally:
        os.environ.update(env)


@pytest.fixture(scope="module")
def ray_cluster():
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    address = f"127.0.0.1:{free_port()}"
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = temp / "start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([ray, "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address",
                                 "127.0.0.1", "--port", address.split(":")[1], "--include-dashboard", "false",
                                 "--disable-usage-stats", "--temp-dir", str(temp)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        return subprocess.run([ray, "status", "--address", address], env=env, capture_output=True,
                              timeout=60).returncode == 0

    try:
        wait_until(up, "the Ray cluster", proc, log)
        yield address
    finally:
        stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def build(store: Path, prompts: Path, *sets: str, env: dict[str, str], recipe: str = "direct",
          progress: bool = False) -> tuple[dict, dict, int]:
    """(the --json report, the manifest, the build's pid). With `progress`, the report's "stderr" holds what
    the progress bar drew."""
    args = [sys.executable, "-m", "lendata", "build", recipe, "--store", str(store), "--json",
            *([] if progress else ["--no-progress"]),
            "--set", f"input={prompts}", "--set", "shards=3", *(a for s in sets for a in ("--set", s))]
    # later --set values win: a test may ask for another shard count
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"build failed:\n{stdout}\n{stderr}"
    report = json.loads(stdout.strip().splitlines()[-1])
    manifest = json.loads((Path(report["path"]) / "manifest.json").read_text())
    if progress:
        report["stderr"] = stderr
    return report, manifest, proc.pid


def processes_with(marker: str) -> list[str]:
    """Command lines of live processes whose environment carries `marker` (inherited from a build)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone, or not ours to read
            continue
    return found


def gone(marker: str, timeout: float = 30) -> list[str]:
    """Processes carrying `marker` still alive after `timeout` seconds (each exits on its own schedule)."""
    deadline = time.monotonic() + timeout
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    return processes_with(marker)


def test_processes_with_sees_a_marked_process():  # so an empty answer below means something
    marker = f"LENDATA_TEST_BUILD={uuid.uuid4().hex}"
    proc = subprocess.Popen(["sleep", "30"], env={**os.environ, "LENDATA_TEST_BUILD": marker.split("=")[1]})
    try:
        deadline = time.monotonic() + 10  # /proc shows the new environment once the child has exec'd
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [c.strip() for c in processes_with(marker)] == ["sleep 30"]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_agentwrite_on_a_ray_cluster_and_prefect_server_of_its_own(tmp_path):
    """No address and no PREFECT_API_URL: the build starts a local Ray cluster and a Prefect server on
    127.0.0.1, gets the local runner's data, and leaves no process behind."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{p} Write about 150 words."}) + "\n" for p in PROMPTS[:3]))
    marker = f"LENDATA_TEST_BUILD={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["LENDATA_PREFECT_LINGER"] = "0"  # the store's Prefect server stops as soon as the build ends
    sets = ("target_field=null", "max_quarantine_share=1.0")
    local, local_manifest, _ = build(tmp_path / "local", prompts, *sets, env=env, recipe="agentwrite")
    ray, ray_manifest, driver = build(tmp_path / "ray", prompts, *sets, "runner=ray", "ray.num_cpus=2",
                                      env={**env, marker.split("=")[0]: marker.split("=")[1]}, recipe="agentwrite",
                                      progress=True)

    assert ray["rows"] + ray["quarantined"] == local["rows"] + local["quarantined"] == 3
    # AgentWrite's shards open a bar per stage (samples, paragraphs): their reports would overshoot the driver's
    # bar of samples, so its bar moves per finished shard and ends at its total
    assert "3/3" in ray["stderr"] and not re.search(r"\b([4-9]|\d\d+)/3\b", ray["stderr"]), ray["stderr"][-2000:]
    assert ray_manifest["content_hash"] == local_manifest["content_hash"]
    shards = ray_manifest["shards"]
    assert [s["rows"] for s in shards] == [1, 1, 1] and all(s["ray_node"] and s["pid"] != driver for s in shards)
    assert gone(marker) == []  # the Ray cluster and the Prefect server were stopped


@pytest.mark.slow
def test_a_killed_ray_build_reruns_to_the_same_data_and_leaves_no_process(tmp_path):
    """SIGKILL the driver of a Ray build mid-generation: no Ray process and no Prefect server outlive it, and the
    rerun (served from the response cache where the killed run got to) gives the uninterrupted data."""
    from tests.faults.fault_server import FaultServer
    from tests.faults.harness import command, kill_after, run, write_instructions

    marker = f"LENDATA_TEST_BUILD={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({"LENDATA_PREFECT_LINGER": "0", marker.split("=")[0]: marker.split("=")[1]})
    qa = write_instructions(tmp_path / "qa.jsonl", 40)
    ray_sets = ("--set", "runner=ray", "--set", "shards=2", "--set", "ray.num_cpus=2")
    with FaultServer(delay=0.05) as server:
        baseline = run(command(tmp_path / "local", qa, server.url), env=env)
        cmd = command(tmp_path / "ray", qa, server.url, extra=ray_sets)
        before = server.requests
        # once generation is under way on the workers; env has no PREFECT_API_URL of the test's
        assert kill_after(cmd, server, 10, timeout=300, env=env)
        assert gone(marker) == []  # Ray's processes and the store's Prefect server died with the build
        final = run(cmd, env=env)
        repeated = server.requests - before - 40
    assert final["rows"] == baseline["rows"] == 40
    ray_hash = json.loads((Path(final["path"]) / "manifest.json").read_text())["content_hash"]
    assert ray_hash == json.loads((Path(baseline["path"]) / "manifest.json").read_text())["content_hash"]
    assert repeated <= 2 * 2  # at most what was in flight: 2 shards x concurrency 2
    assert gone(marker) == []


@pytest.mark.slow
def test_a_sharded_recipe_on_ray_equals_the_local_runner(tmp_path, prefect_server, ray_cluster):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{p} Answer in about 40 words.", "length": 40}) + "\n"
                               for p in PROMPTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    local, local_manifest, _ = build(tmp_path / "local", prompts, env=env)
    ray, ray_manifest, driver = build(tmp_path / "ray", prompts, "runner=ray", f"ray.address={ray_cluster}",
                                      "ray.cpus_per_shard=1", env={**env, "PREFECT_API_URL": prefect_server})

    assert local["rows"] == ray["rows"] == 6 and local["quarantined"] == ray["quarantined"] == 0
    assert ray_manifest["content_hash"] == local_manifest["content_hash"]
    assert ray["engine_calls"] == local["engine_calls"] >= 6

    shards = ray_manifest["shards"]
    assert [(s["offset"], s["rows"], s["runner"]) for s in shards] == [(0, 2, "ray"), (2, 2, "ray"), (4, 2, "ray")]
    assert all(s["ray_node"] and s["pid"] != driver for s in shards)  # ran in Ray workers, not in the build
    assert len({s["ray_node"] for s in shards}) == 1  # the one node of the test cluster
    assert [s["runner"] for s in local_manifest["shards"]] == ["local"] * 3

    # the shards reported to the build's Prefect server (not to a temporary one per worker)
    runs = httpx.post(f"{prefect_server}/task_runs/filter", json={"limit": 50}, timeout=10).json()
    generate = [r for r in runs if r["name"].startswith("direct shard")]
    assert len(generate) == 3 and {r["state_type"] for r in generate} == {"COMPLETED"}


@pytest.mark.slow
def test_self_lengthen_shards_on_ray_equal_the_local_runner(tmp_path, prefect_server, ray_cluster):
    """Self-Lengthen's generate + extend per shard, with the Generator and Extender opened on each worker."""
    seeds = Path(__file__).resolve().parent.parent / "pipelines" / "data" / "self_lengthen_seeds.jsonl"
    small = ("n=2", "iterations=1", "samples=1", "max_tokens=200", "micro_rounds=2", "generate_attempts=3",
             "extend_retries=1", "drop_short=false", "shards=2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    local, local_manifest, _ = build(tmp_path / "local", seeds, *small, env=env, recipe="self_lengthen")
    ray, ray_manifest, driver = build(tmp_path / "ray", seeds, *small, "runner=ray", f"ray.address={ray_cluster}",
                                      env={**env, "PREFECT_API_URL": prefect_server}, recipe="self_lengthen")
    assert ray["rows"] == local["rows"] > 0
    assert ray_manifest["content_hash"] == local_manifest["content_hash"]
    shards = ray_manifest["shards"]
    # generation in shards, drop_short on the driver, then extension in shards of the kept initial responses
    assert [(s["label"], s["rows"]) for s in shards if s["label"] == "iter 1 generate"] == [("iter 1 generate", 1)] * 2
    assert {s["label"] for s in shards} <= {"iter 1 generate", "iter 1 extend"}
    assert all(s["ray_node"] and s["pid"] != driver and s["engine_calls"] > 0 for s in shards)


DECOMPOSE = ("glob=email/**/*.py", "min_log2=6", "max_log2=10", "baseline_length=1024", "batch_docs=16",
             "unit_bytes=30000")


def build_decompose(store: Path, *sets: str, env: dict[str, str], progress: bool = False
                    ) -> tuple[dict, dict, int]:
    return build(store, Path("@stdlib"), *DECOMPOSE, *sets, env=env, recipe="decompose", progress=progress)


@pytest.mark.slow
def test_decompose_on_ray_equals_the_local_runner(tmp_path, prefect_server, ray_cluster):
    """Each Ray worker reads, tokenises and writes its units straight into the staged version; only counts
    travel back. The version equals the local runner's, file for file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    local, local_manifest, _ = build_decompose(tmp_path / "local", "shards=1", env=env)
    ray, ray_manifest, driver = build_decompose(tmp_path / "ray", "runner=ray", f"ray.address={ray_cluster}",
                                                "shards=2", env={**env, "PREFECT_API_URL": prefect_server},
                                                progress=True)
    assert ray_manifest["content_hash"] == local_manifest["content_hash"] and ray["rows"] == local["rows"] > 0
    # the driver's one bar ends at every document, counted once (the shards' reports, settled by their totals)
    assert "29/29" in ray["stderr"] and "30/29" not in ray["stderr"], ray["stderr"][-2000:]
    shards = ray_manifest["shards"]
    assert len(shards) == 2 and all(s["ray_node"] and s["pid"] != driver and s["runner"] == "ray" for s in shards)
    assert sum(s["documents"] for s in shards) == ray_manifest["decomposition"]["documents"] == 29
    assert sum(s["tokens"] for s in shards) == local_manifest["decomposition"]["input_tokens"]
    assert st.list_versions(tmp_path / "ray", "decompose") == ["0.1.0"]
    runs = httpx.post(f"{prefect_server}/task_runs/filter", json={"limit": 200}, timeout=10).json()
    assert len([r for r in runs if r["name"].startswith("decompose shard")]) >= 2


TALLY = """
import sys, time
import ray
from flows._runner import ShardProgress, progress_tally, tally_take
ray.init(address=sys.argv[1], logging_level="error")
tally = progress_tally()

@ray.remote(num_cpus=1)
def shard(progress):
    with progress(10, "documents") as bar:
        bar.advance(2, 20)
        time.sleep(20)  # still running when the driver looks
        bar.advance(3, 30)
    return "done"

ref = shard.remote(ShardProgress(tally, 4))
seen = {}
deadline = time.monotonic() + 60
while not seen and time.monotonic() < deadline:
    time.sleep(0.5)
    seen = tally_take(tally)
running = not ray.wait([ref], timeout=0)[0]
ray.get(ref)
time.sleep(1)  # the last report is sent without waiting: it may land just after the result
print(seen, running, tally_take(tally), tally_take(tally))
"""


def test_a_shard_on_ray_moves_the_drivers_bar_while_it_runs(ray_cluster):
    """Before, the driver's bar moved only when a whole shard finished: for a corpus, that is minutes of a
    still bar. A shard's reports reach the driver while it runs, and are taken once."""
    out = subprocess.run([sys.executable, "-c", TALLY, ray_cluster], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"}, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "{4: (2, 20)} True {4: (3, 30)} {}", out.stdout


@pytest.mark.slow
def test_a_decompose_driver_killed_before_publishing_reruns_on_ray_to_the_same_rows(tmp_path):
    """SIGKILL the driver once every shard has written its files and the manifest is staged: nothing is
    visible, no Ray or Prefect process outlives it, and the rerun rewrites the shards (never adds to them)."""
    marker = f"LENDATA_TEST_BUILD={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({"LENDATA_PREFECT_LINGER": "0", marker.split("=")[0]: marker.split("=")[1]})
    local, local_manifest, _ = build_decompose(tmp_path / "local", "shards=1", env=env)
    ray_sets = ("runner=ray", "shards=2", "ray.num_cpus=2")
    args = [sys.executable, "-m", "lendata", "build", "decompose", "--store", str(tmp_path / "ray"), "--json",
            "--no-progress", *(a for x in ("input=@stdlib", *DECOMPOSE, *ray_sets) for a in ("--set", x))]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600,
                         env={**env, "LENDATA_TEST_FAULT": "before_publish"})
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert list((tmp_path / "ray" / "decompose").glob(".staging-*"))  # the killed build's staged shards
    assert st.list_versions(tmp_path / "ray", "decompose") == []
    # the driver died alone (not its process group): its Ray cluster's reaper and the Prefect server notice
    # and exit on their own, which takes longer under load than a group kill
    assert gone(marker, timeout=180) == []
    ray, ray_manifest, _ = build_decompose(tmp_path / "ray", *ray_sets, env=env)
    assert ray_manifest["content_hash"] == local_manifest["content_hash"] and ray["rows"] == local["rows"]
    assert not list((tmp_path / "ray" / "decompose").glob(".staging-*"))
    assert gone(marker) == []


@pytest.mark.slow
def test_lveval_on_ray_equals_the_local_runner(tmp_path, prefect_server, ray_cluster):
    """Blocks of QA items on two Ray workers, each with its own embedded engine for the confusing facts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    seeds = Path(__file__).resolve().parent.parent / "pipelines" / "data" / "lveval_seeds.jsonl"
    sets = ("levels=[16k]", "n=2", "block_items=1", "facts_per_item=1", "fact_attempts=1")
    local, local_manifest, _ = build(tmp_path / "local", seeds, *sets, "shards=1", env=env, recipe="lveval")
    ray, ray_manifest, driver = build(tmp_path / "ray", seeds, *sets, "shards=2", "runner=ray",
                                      f"ray.address={ray_cluster}", env={**env, "PREFECT_API_URL": prefect_server},
                                      recipe="lveval")
    assert ray_manifest["content_hash"] == local_manifest["content_hash"] and ray["rows"] == local["rows"] == 2
    shards = ray_manifest["shards"]
    assert [s["items"] for s in shards] == [1, 1]
    assert all(s["ray_node"] and s["pid"] != driver and s["engine_calls"] >= 1 for s in shards)


def test_cut_makes_contiguous_near_equal_shards():
    assert cut(list(range(7)), 3) == [(0, [0, 1]), (2, [2, 3, 4]), (5, [5, 6])]
    assert cut([1, 2], 5) == [(0, [1]), (1, [2])]
    assert cut([], 4) == []
    assert [x for _, piece in cut(list(range(100)), 7) for x in piece] == list(range(100))


def test_a_shard_on_another_host_keeps_its_own_response_cache():
    here = socket.gethostname()
    assert cache_file(here) == "responses.sqlite"
    assert cache_file(here + "-head") == f"responses-{here}.sqlite"


@pytest.mark.parametrize(("sets", "message"), [
    (["runner=spark"], "runner: Input should be 'local' or 'ray' (got 'spark')"),
    (["shards=0"], "at least 1"),
    (["ray.cpus_per_shard=-1"], "positive number"),
    (["ray.gpus_per_shard=-1"], "positive number"),
    (["ray=8"], "ray: Input should be a dictionary"),
])
def test_bad_run_settings_are_refused_before_anything_runs(tmp_path, sets, message):
    res = CliRunner().invoke(app, ["build", "direct", "--store", str(tmp_path), *(a for s in sets
                                                                                  for a in ("--set", s))])
    assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "direct").exists()


def test_flows_without_shards_say_so_for_runner_ray(tmp_path):
    res = CliRunner().invoke(app, ["build", "ruler", "--store", str(tmp_path), "--set", "runner=ray"])
    assert res.exit_code == 1 and "runs on the local runner in one shard only" in res.stderr
