"""A loopback OpenAI-compatible server that fails on purpose: HTTP 500, 429 with Retry-After, timeouts,
truncated JSON bodies and dropped connections, for a configurable share of requests. It counts every request,
so a test can tell exactly how many engine calls a build (and its reruns) made.

Replies are deterministic in the request (its messages and seed), like a seeded model, so an interrupted and
rerun build can be compared row by row with an uninterrupted one. Which requests fail is deterministic too:
a request key fails `transient` times before it succeeds (for a `transient_share` of keys), or always (for a
`permanent_share`), each key with its own fault mode.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("500", "429", "timeout", "truncated", "drop")
WORDS = "river stone lantern orchard harbour meadow quarry ledger canal tower garden archive".split()


def _unit(key: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) / 16**12


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a killed or timed-out client resets its connection: expected here, not worth a traceback


class FaultServer:
    def __init__(self, transient_share: float = 0.0, permanent_share: float = 0.0, transient: int = 2,
                 modes: tuple[str, ...] = MODES, delay: float = 0.0, stall: float = 3.0, model: str = "fault-model"):
        self.transient_share, self.permanent_share, self.transient = transient_share, permanent_share, transient
        self.modes, self.delay, self.stall, self.model = modes, delay, stall, model
        self.requests = 0
        self.per_key: Counter = Counter()
        self.faults: Counter = Counter()
        self.authorizations: set[str] = set()  # Authorization headers seen (to check a key was sent)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                data = {"object": "list", "data": [{"id": server.model, "object": "model", "max_model_len": 8192}]}
                self._send(200, json.dumps(data).encode())

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.endswith("/chat/completions"):  # as real servers: no such route
                    self._send(404, b'{"detail": "Not Found"}')
                    return
                server.authorizations.add(self.headers.get("Authorization") or "")
                try:
                    server.handle(self, json.loads(body))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout it was meant to hit)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def key(req: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([req.get("messages"), req.get("seed")], sort_keys=True).encode()).hexdigest()

    def fault_for(self, key: str, attempt: int) -> str | None:
        mode = self.modes[int(_unit(key, "mode") * len(self.modes))] if self.modes else None
        u = _unit(key, "fail")
        if u < self.permanent_share:
            return mode
        if u < self.permanent_share + self.transient_share and attempt < self.transient:
            return mode
        return None

    def reply(self, req: dict[str, Any], key: str) -> dict[str, Any]:
        n = max(5, min(60, int(req.get("max_tokens") or 60) // 2))
        words = [WORDS[int(key[i % 60 : i % 60 + 2], 16) % len(WORDS)] for i in range(n)]
        text = ("The answer: " + " ".join(words) + ".").strip()
        return {"id": f"chatcmpl-{key[:12]}", "object": "chat.completion", "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": n + 10}}

    def handle(self, h: BaseHTTPRequestHandler, req: dict[str, Any]) -> None:
        key = self.key(req)
        with self._lock:
            self.requests += 1
            attempt = self.per_key[key]
            self.per_key[key] += 1
        if self.delay:
            time.sleep(self.delay)
        fault = self.fault_for(key, attempt)
        if fault:
            with self._lock:
                self.faults[fault] += 1
        if fault == "500":
            return h._send(500, b'{"error": "injected server error"}')
        if fault == "429":
            return h._send(429, b'{"error": "injected rate limit"}', {"Retry-After": "0.05"})
        if fault == "timeout":
            time.sleep(self.stall)
            return h._send(200, json.dumps(self.reply(req, key)).encode())
        body = json.dumps(self.reply(req, key)).encode()
        if fault == "truncated":
            return h._send(200, body[: len(body) // 2])
        if fault == "drop":
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return None
        return h._send(200, body)
