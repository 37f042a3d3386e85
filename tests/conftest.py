from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from hypothesis import settings  # noqa: E402

from lendata.engines.base import OnResult, Request, Result  # noqa: E402

# The default suite fuzzes with a fixed seed so CI and a developer's run see the same cases; explore new ones
# with HYPOTHESIS_PROFILE=explore (a random seed each run).
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent


class ScriptedEngine:
    """Control-flow stand-in: answers from a function of the request. Never the only test of a feature."""

    name = "scripted"
    model_id = "scripted-1"
    context_window = 4096
    decoding_options = frozenset({"no_repeat_ngram", "end_at_sentence"})  # claims what llamacpp honours
    continues_prefill = True  # as llamacpp and vllm: a chat ending on an assistant turn is continued

    def __init__(self, answer=None):
        self.answer = answer or (lambda req: Result(text="word " * req.min_tokens, completion_tokens=req.min_tokens))
        self.seen: list[Request] = []

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]:
        out = []
        for i, r in enumerate(requests):
            self.seen.append(r)
            res = self.answer(r)
            out.append(res)
            if on_result:
                on_result(i, res)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def close(self) -> None:
        pass


@pytest.fixture
def scripted():
    return ScriptedEngine


@pytest.fixture(scope="session")
def llama():
    from lendata.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(n_ctx=2048)
    yield engine
    engine.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(n_ctx: int = 2048) -> tuple[subprocess.Popen, str]:
    """A real llama_cpp.server with the bundled model on 127.0.0.1; returns (process, base_url)."""
    from lendata.models import bundled_gguf_path

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf_path()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", "smollm2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("llama_cpp.server exited during start-up")
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not answer within 60 s")


@pytest.fixture
def llama_server():
    proc, url = start_llama_server()
    yield proc, url
    proc.kill()
    proc.wait(10)
