"""The Prefect API a build reports to: `PREFECT_API_URL` when the user runs a server, else one server on
127.0.0.1 that the builds of this user share.

Prefect's own ephemeral mode starts a server per build process with a 20 s start-up limit. On a 2-core machine
a fresh database (migrations first) takes about 17 s and a warm start about 7 s, so that limit is missed often,
every build pays the start, and a killed build leaves its server running. Here instead:

- the first build starts the server through a small guard process (`python -m flows._server`) in a session of
  its own, and waits for it with a limit that fits (`LENDATA_PREFECT_START_TIMEOUT`, default 180 s), failing
  with the server's log if it is exceeded;
- every build holds a shared lock on the server's `server.lease` while it runs. The kernel drops the lock when
  a build ends or is killed, however it dies. The guard stops the server (and itself) once nobody has held the
  lease for `LENDATA_PREFECT_LINGER` seconds (default 60): builds in a row reuse one warm server, and nothing
  outlives the last build by more than the linger;
- the server's database is in the user cache (`~/.cache/lendata/prefect-server/<prefect version>/`), so its
  migrations run once per machine, not once per store; the run history of every store is in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from lendata.paths import user_cache

LINGER_ENV = "LENDATA_PREFECT_LINGER"
TIMEOUT_ENV = "LENDATA_PREFECT_START_TIMEOUT"


def server_home() -> Path:
    import prefect

    home = user_cache() / "prefect-server" / prefect.__version__
    home.mkdir(parents=True, exist_ok=True)
    return home


def _healthy(url: str) -> bool:
    try:  # never through a proxy from the environment: the server is on this machine
        return httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _info(home: Path) -> dict | None:
    """server.json, when the guard it names is alive and is this home's guard (a pid reused by another
    process after a crash or reboot is not)."""
    try:
        info = json.loads((home / "server.json").read_text())
        pid = int(info["guard"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: make sure the pid is still the guard
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return None
        if b"flows._server" not in args or os.fsencode(str(home)) not in args:
            return None
    return info


def _running(home: Path, patience: float = 60) -> str | None:
    """The URL of the running server, waiting for one that is still starting and giving a live one that answers
    slowly (a busy 2-core machine) `patience` seconds. A server another build may be using is never stopped
    from here: if it stays silent, this build fails with a clear message."""
    info = _info(home)
    if info is None:
        return None
    deadline = time.monotonic() + patience
    while True:
        if info.get("url") and _healthy(info["url"]):
            return info["url"]
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
        info = _info(home)
        if info is None:  # the guard ended meanwhile: start another
            return None
    raise ConnectionError(f"the shared Prefect server (guard pid {info['guard']}, {info.get('url') or 'starting'}) "
                          f"has not answered for {patience:g} s: if it is stuck, stop it (kill {info['guard']}), "
                          "or set PREFECT_API_URL to a server of yours")


def _start(home: Path, timeout: float) -> str:
    # called with the start lock held, after _running found no live guard: server.json is stale if present
    (home / "server.json").unlink(missing_ok=True)
    log = home / "server.log"
    with open(log, "wb") as out:  # the guard holds no pipe of the build's: killing the build never blocks on it
        guard = subprocess.Popen([sys.executable, "-m", "flows._server", str(home)], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 cwd=str(Path(__file__).resolve().parent.parent), env=_server_env(home))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and guard.poll() is None:
        info = _info(home)
        if info and info.get("url") and _healthy(info["url"]):
            return info["url"]
        time.sleep(0.2)
    with contextlib.suppress(OSError):
        os.killpg(guard.pid, signal.SIGKILL)  # our own guard: nobody else has its URL yet
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
    raise ConnectionError(f"the Prefect server for this store did not start within {timeout:g} s (set "
                          f"{TIMEOUT_ENV} to wait longer, or PREFECT_API_URL to use a server of yours); "
                          f"log {log}:\n{tail}")


def _server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", PREFECT__SERVER_EPHEMERAL="1")
    return env


@contextlib.contextmanager
def shared_server(home: Path | None = None) -> Iterator[str]:
    """The API URL of the shared Prefect server (in `home`, default `server_home()`), started if needed, held
    (leased) until the block ends; `PREFECT_API_URL` when the user set it."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    home = home or server_home()
    home.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get(TIMEOUT_ENV) or 180)
    with open(home / "server.lease", "a") as lease:
        # shared before the server is looked at: the guard cannot stop a server a build has found
        fcntl.flock(lease, fcntl.LOCK_SH)
        with open(home / "server.start", "a") as starting:
            fcntl.flock(starting, fcntl.LOCK_EX)  # one starter per store
            try:
                url = _running(home, patience=timeout) or _start(home, timeout)
            finally:
                fcntl.flock(starting, fcntl.LOCK_UN)
        yield url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_info(home: Path, info: dict) -> None:
    tmp = home / f".server.json.{os.getpid()}"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, home / "server.json")


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when its guard dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def _guard(home: Path) -> None:
    """Run the server; stop it once no build has held the lease for the linger time, or when it dies."""
    linger = float(os.environ.get(LINGER_ENV) or 60)
    mine = {"guard": os.getpid(), "url": None}
    _write_info(home, mine)  # "starting": a build that finds this waits for it instead of starting another
    port = _free_port()
    import prefect

    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
                               "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                               "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                              preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    def stop(*_: object) -> None:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        with contextlib.suppress(OSError, ValueError):  # only our own record: a newer guard may have written one
            if json.loads((home / "server.json").read_text()).get("guard") == os.getpid():
                (home / "server.json").unlink()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    url = f"http://127.0.0.1:{port}/api"
    while not _healthy(url):
        if server.poll() is not None:
            sys.exit(f"the Prefect server exited with {server.returncode} during start-up")
        time.sleep(0.2)
    _write_info(home, {**mine, "url": url, "server": server.pid})
    idle_since: float | None = None
    with open(home / "server.lease", "a") as lease:
        while server.poll() is None:
            time.sleep(0.5)
            try:
                fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                idle_since = None  # a build holds the lease
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= linger:
                stop()  # still holding the lease: no build can find the server while it goes
            fcntl.flock(lease, fcntl.LOCK_UN)
    stop()


if __name__ == "__main__":
    _guard(Path(sys.argv[1]))
