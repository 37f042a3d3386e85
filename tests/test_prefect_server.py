"""The Prefect server builds share (flows/_server.py): started once, reused, stopped after the last build, even a
killed one; a start that takes too long is a clear error, not a hung or half-started build."""

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from flows._server import shared_server

HOLD = """
import os, signal, sys, time
from pathlib import Path
from flows._server import shared_server
with shared_server(Path(sys.argv[1])) as url:
    print(url, flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # a build killed while it uses the server
    time.sleep(float(sys.argv[2]))
"""


def hold(home, then, linger="2"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["LENDATA_PREFECT_LINGER"] = linger
    return subprocess.Popen([sys.executable, "-c", HOLD, str(home), then], stdout=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is dead for our purpose
        return (open(f"/proc/{pid}/stat").read().split()[2]) != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_builds_share_one_server_that_stops_after_the_last_even_when_killed(tmp_path):
    home = tmp_path / "server"
    first = hold(home, "kill")
    url = first.stdout.readline().strip()
    assert first.wait(200) == -signal.SIGKILL
    info = json.loads((home / "server.json").read_text())
    assert url == info["url"] and httpx.get(f"{url}/health", timeout=5).status_code == 200
    second = hold(home, "1")  # within the linger: the same server, no second start
    assert second.stdout.readline().strip() == url
    second.wait(60)
    deadline = time.monotonic() + 30
    while (alive(info["guard"]) or alive(info["server"])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(info["guard"]) and not alive(info["server"])  # nothing outlives the last build
    assert not (home / "server.json").exists()


def test_a_slow_start_is_a_clear_error_and_leaves_nothing_running(tmp_path, monkeypatch):
    monkeypatch.setenv("LENDATA_PREFECT_START_TIMEOUT", "0.5")  # far below any real start-up
    for k in [k for k in os.environ if k.startswith("PREFECT_API")]:
        monkeypatch.delenv(k)
    home = tmp_path / "server"
    with pytest.raises(ConnectionError, match=r"did not start within 0.5 s .*LENDATA_PREFECT_START_TIMEOUT"), \
            shared_server(home):
        pass
    deadline = time.monotonic() + 20
    while with_home(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert with_home(home) == []  # neither the guard nor the server it had started


def with_home(home) -> list[int]:
    """Live processes whose environment names `home` as PREFECT_HOME (the guard and its server)."""
    marker = f"PREFECT_HOME={home}".encode() + b"\0"
    found = []
    for proc in os.listdir("/proc"):
        try:
            if proc.isdigit() and marker in open(f"/proc/{proc}/environ", "rb").read() and alive(int(proc)):
                found.append(int(proc))
        except OSError:
            continue
    return found


def test_a_user_server_is_used_as_it_is(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with shared_server(tmp_path / "unused") as url:
        assert url == "http://127.0.0.1:9/api"
    assert not (tmp_path / "unused").exists()


IN_PROCESS = """
import sys, time
from typer.testing import CliRunner
from lendata.cli import app
for store in ("a", "b"):  # two builds, the server stopped and restarted (on another port) between them
    res = CliRunner().invoke(app, ["build", "decompose", "--store", sys.argv[1] + store, "--no-progress", "--set",
                                   f"input={sys.argv[2]}", "--set", "glob='*.txt'", "--set", "dataset=d"])
    assert res.exit_code == 0, res.output
    time.sleep(4)  # longer than the server's linger: it stops
print("built", flush=True)
"""


@pytest.mark.slow
def test_a_process_that_built_in_process_exits_after_the_server_stopped(tmp_path):
    """Prefect queues events and logs and sends them later; a build sends them before it lets the server go,
    so a process that built twice, on two servers in turn, and exits after both stopped does not hang
    retrying them (a whole test session did, for many minutes)."""
    import shutil

    from lendata.paths import user_cache

    cache = tmp_path / "cache"  # a server of this test's own, with a 1 s linger
    shutil.copytree(user_cache() / "tokenizers", cache / "tokenizers", dirs_exist_ok=True)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text("The river flows past the old mill. " * 200)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(LENDATA_CACHE=str(cache), LENDATA_PREFECT_LINGER="1")
    proc = subprocess.Popen([sys.executable, "-c", IN_PROCESS, str(tmp_path / "store"), str(docs)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout.readline().strip() == "built"
    t0 = time.monotonic()
    proc.wait(120)
    assert proc.returncode == 0 and time.monotonic() - t0 < 15


@pytest.mark.slow
def test_a_killed_starter_and_a_stale_record_never_give_two_servers_or_a_wrong_kill(tmp_path):
    """server.json names a live process that is not a guard (its pid was reused): it is neither trusted nor
    signalled. A build killed while the server it started is still starting: the next build waits for that
    server instead of starting a second one beside it."""
    home = tmp_path / "server"
    home.mkdir()
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (home / "server.json").write_text(json.dumps({"guard": stranger.pid, "url": "http://127.0.0.1:9/api"}))
    try:
        first = hold(home, "30")
        deadline = time.monotonic() + 60  # until its guard has written its "starting" record
        while time.monotonic() < deadline:
            try:
                if json.loads((home / "server.json").read_text())["guard"] != stranger.pid:
                    break
            except (OSError, ValueError):  # between the stale record's removal and the guard's first write
                pass
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # the starter dies before its server answers
        first.wait(10)
        second = hold(home, "1")
        url = second.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and second.wait(60) == 0
        guards = [p for p in with_home(home) if b"flows._server" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(guards) == 1, guards  # one guard, one server
        assert stranger.poll() is None  # the unrelated process was left alone
    finally:
        stranger.kill()
        stranger.wait()
