"""glibc's malloc arenas are capped in lendata's processes (lendata/memory.py): the driver by the command line,
each Ray worker by its environment. Whether memory then stays flat is measured by bench/decompose_scale.py."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from lendata.memory import ARENAS, limit_malloc_arenas, peak_rss_mb, worker_env


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the cap is glibc's")
def test_the_cap_is_in_force_on_this_glibc_machine():
    assert limit_malloc_arenas() is True


def test_a_users_malloc_arena_max_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "7")
    assert worker_env() == {"MALLOC_ARENA_MAX": "7"}
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert worker_env() == {"MALLOC_ARENA_MAX": str(ARENAS)}


def test_ray_workers_start_with_the_cap(tmp_path, monkeypatch):
    pytest.importorskip("prefect_ray")
    from flows._runner import task_runner
    from lendata.recipes import load

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    recipe = load("decompose", {"runner": "ray", "shards": 2})
    runner = task_runner(recipe, "http://127.0.0.1:9/api")
    assert runner.init_kwargs["runtime_env"]["env_vars"]["MALLOC_ARENA_MAX"] == str(ARENAS)


def test_the_command_line_caps_arenas_before_any_command_runs():
    """Importing the command line is what `lendata` does first: the cap must be set by then, while the process
    has one thread (a cap set later leaves the arenas other threads already made)."""
    code = ("import threading, unittest.mock as m, ctypes\n"
            "calls = []\n"
            "import lendata.memory as mem\n"
            "real = mem.limit_malloc_arenas\n"
            "mem.limit_malloc_arenas = lambda *a: calls.append(threading.active_count()) or real(*a)\n"
            "import lendata.cli\n"
            "print(calls)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert out.stdout.strip() == "[1]", out.stderr


def test_peak_rss_is_this_process():
    assert 10 < peak_rss_mb() < 100_000
