"""Any OpenAI-compatible chat server: `vllm serve`, `llama_cpp.server`, hosted APIs.

Requests go out concurrently (bounded by `concurrency`); 429, 5xx, timeouts, dropped connections and
unreadable bodies are retried with exponential backoff (honouring Retry-After); a row that still fails after
the last retry becomes an error result. The API key comes from the environment and is never logged or
stored.

Token counts use the served model's own tokenizer: a `tokenizer` file when one is configured, else the
server's tokenize route (vLLM's and llama-server's `/tokenize`, llama_cpp.server's
`/extras/tokenize`). A server with neither (a
hosted API) is counted with the bundled tokenizer as an approximation, which `tokenizer` names and a warning
reports.

LoRA adapters: a request's `lora` that names a local adapter folder is loaded into the server at run time
(vLLM's `POST /v1/load_lora_adapter`, which needs `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`)
under a name made of its content hash, then requested by that name; the server must be able to read the path
(the same machine or a shared file system). Any other `lora` is an adapter name the server already serves
(`--lora-modules name=path`). A server that cannot load an adapter raises `AdapterError`, saying how to start
one that can.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx

from lendata.engines.base import AdapterError, OnResult, Request, Result, refuse_unenforced_options
from lendata.engines.chains import Chain, Chains, OnChainResult, one_call

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# tokenize routes: (path, the body for a text and a model, the answer's field)
_ROUTES = {
    "vllm": ("/tokenize", lambda text, model: {"model": model, "prompt": text, "add_special_tokens": False}, "count"),
    "llama_server": ("/tokenize", lambda text, model: {"content": text, "add_special": False}, "tokens"),
    "llama_cpp": ("/extras/tokenize", lambda text, model: {"model": model, "input": text}, "tokens"),
}
log = logging.getLogger("lendata.engines")
T = TypeVar("T")


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 600.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        context_window: int | None = None,
        # "json_schema" (OpenAI, vLLM) or "json_object" (llama_cpp.server: {"type": "json_object", "schema": S})
        json_format: str = "json_schema",
        send_min_tokens: bool = True,
        tokenizer: str | None = None,
        # a chain's next request goes out as soon as its previous one is answered (engines/chains.py); False:
        # rounds, every request of a round waits for the round's slowest
        continuous_batching: bool = True,
        # whether the server continues a chat's final assistant turn (vLLM's and SGLang's
        # continue_final_message); None: as the server's /models says (owned_by vllm or sglang)
        continue_final_message: bool | None = None,
    ):
        if json_format not in {"json_schema", "json_object"}:
            raise ValueError(f"json_format must be json_schema or json_object, got {json_format!r}")
        self.base_url = base_url.rstrip("/")
        self._api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.json_format = json_format
        self.send_min_tokens = send_min_tokens
        self.continuous_batching = bool(continuous_batching)
        self._continues = continue_final_message
        self._continues_lock = threading.Lock()
        self._tokenizer = tokenizer
        self._route: str | None = None  # the tokenize route found on first use: a key of _ROUTES, or none
        self._client: httpx.Client | None = None
        self._bos = 0  # tokens llama_cpp.server's route adds to every text (its BOS)
        self._told_window = False  # the repetition-penalty window warning, once per engine
        self._counted: OrderedDict[bytes, int] = OrderedDict()  # counts by the text's sha256, least recent first
        self._adapters: dict[str, str] = {}  # local adapter folder -> the name the server serves it under
        self.retries = 0  # retried attempts over the engine's life, for reports
        served = self._models() if (model is None or context_window is None) else []
        self.model_id = model or (served[0]["id"] if served else "")
        if not self.model_id:
            raise ValueError(f"{self.base_url}/models lists no model; pass model=")
        window = next((m.get("max_model_len") for m in served if m.get("id") == self.model_id), None)
        if not (context_window or window):  # llama_cpp.server and hosted APIs do not report their window
            log.warning("%s does not report the context window of %s: assuming 8192 tokens; set "
                        "engine_options.context_window", self.base_url, self.model_id)
        self.context_window = int(context_window or window or 8192)
        if self._continues is None and served:
            self._continues = _owned_by_continuing_server(served, self.model_id)

    @property
    def continues_prefill(self) -> bool:
        """Whether the server continues a prefilled assistant turn: `continue_final_message`, else what its
        /models says. llama_cpp.server and hosted APIs answer such a chat with a new turn. Asked once per engine,
        on first need (an engine given `model` and `context_window` has not read /models), retried like a call;
        a server that never answers is taken not to continue, with a warning."""
        with self._continues_lock:
            if self._continues is None:
                served, why = [], ""
                for attempt in range(self.max_retries + 1):
                    try:
                        served = self._models()
                        break
                    except ConnectionError as e:
                        why = str(e)
                        if attempt < self.max_retries:
                            time.sleep(self._delay(attempt, None))
                else:
                    log.warning("%s: cannot tell whether the server continues a prefilled assistant turn (%s); "
                                "assuming not (set engine_options.continue_final_message)", self.base_url, why)
                self._continues = _owned_by_continuing_server(served, self.model_id)
            return self._continues

    def identity(self) -> dict[str, Any]:
        """The server (URL without credentials) and its served model, and the options that change outputs."""
        from lendata.engines.identity import server_url

        return {"engine": self.name, "server": server_url(self.base_url), "model": self.model_id,
                "json_format": self.json_format, "send_min_tokens": self.send_min_tokens}

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self._api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _models(self) -> list[dict[str, Any]]:
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=30)
            r.raise_for_status()
            body = r.json()
            listed = body.get("data") if isinstance(body, dict) else None
            return [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
        except (httpx.HTTPError, ValueError) as e:
            raise ConnectionError(f"cannot list models at {self.base_url}/models: {type(e).__name__}") from e

    def _body(self, req: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": list(req.messages),
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        if req.seed is not None:
            body["seed"] = req.seed
        if req.top_k is not None:  # vLLM's and llama_cpp.server's extension (0 = off in both)
            body["top_k"] = req.top_k
        if req.repetition_penalty != 1.0:  # vLLM's name and llama_cpp.server's name
            body["repetition_penalty"] = req.repetition_penalty
            body["repeat_penalty"] = req.repetition_penalty
            if not self._told_window:  # no server takes the window per request: say so once
                self._told_window = True
                log.warning("%s: the server applies its own repetition-penalty window (llama_cpp.server: the "
                            "last 64 tokens written, its last_n_tokens_size; vLLM: the prompt and all the output), "
                            "not repetition_window=%d", self.base_url, req.repetition_window)
        if req.stop:
            body["stop"] = list(req.stop)
        if req.min_tokens and self.send_min_tokens:
            body["min_tokens"] = req.min_tokens  # vLLM's extension; servers without it ignore the field
        if req.json_schema is not None:
            if self.json_format == "json_object":
                body["response_format"] = {"type": "json_object", "schema": req.json_schema}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": req.json_schema, "strict": True},
                }
        if req.prefill is not None:  # vLLM / SGLang chat extension; servers without it open a new turn
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        if req.lora:
            body["model"] = self._adapters.get(req.lora, req.lora)  # vLLM serves each adapter under its own name
        return body

    supports_lora = True  # a vLLM server with runtime loading, or adapters it serves by name

    def _load_adapters(self, requests: Sequence[Request]) -> dict[str, str]:
        """Load every local adapter folder the batch names into the server; the error of each that failed."""
        from lendata.engines.identity import content_identity

        failed = {}
        for path in dict.fromkeys(r.lora for r in requests if r.lora and r.lora not in self._adapters):
            folder = Path(path).expanduser()
            if not folder.is_dir():
                continue  # an adapter name the server already serves
            name = f"lendata-{content_identity(folder)[:16]}"
            try:
                r = self._http().post(f"{self.base_url}/load_lora_adapter", headers=self._headers(),
                                      json={"lora_name": name, "lora_path": str(folder.resolve())})
            except httpx.HTTPError as e:
                failed[path] = f"cannot load LoRA adapter {path} into {self.base_url}: {type(e).__name__}: {e}"
                continue
            if r.status_code == 200 or (r.status_code == 400 and "already" in r.text):
                self._adapters[path] = name
            elif r.status_code in (404, 405):
                failed[path] = (f"{self.base_url} cannot load LoRA adapters at run time (HTTP {r.status_code} on "
                                "load_lora_adapter): start vLLM with --enable-lora and the environment variable "
                                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or serve the adapter with --lora-modules "
                                "NAME=PATH and name it in lora")
            else:
                failed[path] = f"{self.base_url} refused LoRA adapter {path}: HTTP {r.status_code}: {r.text[:300]}"
        return failed

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self.max_backoff, self.backoff * 2**attempt)
        return base * (0.5 + random.random() / 2)  # jitter keeps retries of a batch apart

    async def _one(self, client: httpx.AsyncClient, req: Request) -> Result:
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                r = await client.post("/chat/completions", json=self._body(req), headers=self._headers())
                if r.status_code == 200:
                    data = r.json()
                    choice = data["choices"][0]
                    usage = data.get("usage") or {}
                    reason = choice.get("finish_reason") or "stop"
                    text = (choice.get("message") or {}).get("content")
                    # a 200 without text is a failed call, never a cached success; retried like a bad body. On a
                    # server that continues a prefill, a continuation may end at once (its prefill stopped where
                    # the model ends): empty is then its answer
                    if not isinstance(text, str) or not (text or (req.prefill is not None and self._continues)):
                        raise ValueError(f"HTTP 200 with {'empty' if text == '' else 'no'} content")
                    text.encode("utf-8")  # a lone surrogate from the server: UnicodeEncodeError, retried
                    prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    return Result(
                        text=text,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=int(usage.get("completion_tokens") or 0),
                        finish_reason="length" if reason == "length" else "stop",
                        prompt_cached_tokens=_cached_tokens(usage, prompt_tokens),
                    )
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in RETRYABLE_STATUS:
                    return Result.failed(last)
                retry_after = r.headers.get("retry-after")
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:.0f}s"
            except httpx.TransportError as e:
                last = f"connection failed: {type(e).__name__}: {e}"
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                last = f"unreadable response: {type(e).__name__}: {str(e)[:200]}"
            if attempt < self.max_retries:
                self.retries += 1
                await asyncio.sleep(self._delay(attempt, retry_after))
        return Result.failed(f"gave up after {self.max_retries + 1} attempts; last error: {last}")

    def _check(self, requests: Sequence[Request]) -> None:
        """Setup errors, raised: a decoding option the server cannot enforce, an adapter it cannot load."""
        refuse_unenforced_options(self.name, requests)
        failed = self._load_adapters(requests)
        if failed:
            raise AdapterError("; ".join(dict.fromkeys(failed.values())))

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]:
        if not requests:
            return []
        self._check(requests)  # setup errors before any request is sent
        return self.generate_chains([one_call(r) for r in requests], on_result)

    def generate_chains(self, chains: Sequence[Chain[Any]], on_result: OnChainResult | None = None) -> list[Any]:
        """Chains (engines/chains.py) with at most `concurrency` requests in flight or answered but not yet handed
        to their chain: each chain sends its next request as soon as its previous one is answered and recorded,
        never waiting for a round's slowest. Chain code (which may count tokens through the server,
        synchronously) runs on a worker thread, one chain at a time, so the event loop keeps receiving answers
        meanwhile; the first error cancels every other chain's call."""
        state = Chains(chains, on_result)

        async def drive() -> None:
            sem = asyncio.Semaphore(self.concurrency)
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, limits=limits) as client:

                async def follow(i: int, req: Request | None) -> None:
                    while req is not None:
                        await asyncio.to_thread(self._check, [req])
                        # the slot is held until the answer is handed to its chain (where a response cache
                        # stores it), so a kill repeats at most `concurrency` calls; freeing it when the answer
                        # arrived let more calls go out while answers waited their turn to be stored. The cost:
                        # the chain's next-step code runs inside the slot too (a few ms against seconds of
                        # generation)
                        async with sem:
                            res = await self._one(client, req)
                            req = await asyncio.to_thread(state.send, i, res)

                firsts = await asyncio.to_thread(state.start)
                async with asyncio.TaskGroup() as group:  # an error cancels the other chains' calls
                    for i, req in firsts.items():
                        group.create_task(follow(i, req))

        try:
            self._in_loop(drive)
        except BaseExceptionGroup as group:  # TaskGroup wraps: the caller gets the first error itself
            raise group.exceptions[0] from None
        finally:
            state.close()
        return state.values

    @staticmethod
    def _in_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(make())
        # called from inside an event loop (a notebook, an async flow): run on a thread of its own
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(make())).result()

    @property
    def _root(self) -> str:
        """The server's root: tokenize routes live beside /v1, not under it."""
        return self.base_url.removesuffix("/v1")

    def _http(self) -> httpx.Client:
        """One kept-alive connection for token counts (thousands of small calls while prompts are fitted)."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        return self._client

    def _probe(self, path: str, body: dict[str, Any]) -> Any:
        """The JSON a tokenize route answers, or None for anything else (no route, an error, another shape)."""
        try:
            r = self._http().post(f"{self._root}{path}", json=body, headers=self._headers(),
                                  timeout=min(self.timeout, 30))
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _find_route(self) -> str:
        """vLLM's /tokenize answers a `count`; llama.cpp's llama-server has /tokenize too but takes `content`
        and answers `tokens`; llama_cpp.server (Python) has /extras/tokenize. Only an answer of the right shape
        counts as a route: a server that answers 200 to anything is not taken for one."""
        if self._route is None:
            for route, (path, body, field) in _ROUTES.items():
                got = self._probe(path, body("", self.model_id))
                # vLLM answers a `count`; llama-server answers `tokens` to the vLLM body too, so order matters
                if isinstance(got, dict) and isinstance(got.get(field), int if field == "count" else list):
                    self._route, self._bos = route, len(got["tokens"]) if route == "llama_cpp" else 0
                    break
            if self._route is None:
                self._route = "none"
                log.warning("%s has no tokenize route (/tokenize, /extras/tokenize): token counts are approximated "
                            "with the bundled tokenizer; set engine_options.tokenizer to the model's tokenizer.json",
                            self._root)
        return self._route

    def _count_one(self, text: str) -> int:
        """One text's count from the server's route, retried like a generation call."""
        path, make_body, field = _ROUTES[self._route or "none"]
        body = make_body(text, self.model_id)
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                r = self._http().post(f"{self._root}{path}", json=body, headers=self._headers(), timeout=self.timeout)
                if r.status_code == 200:
                    got = r.json()[field]
                    n = got if field == "count" else len(got) - (self._bos if self._route == "llama_cpp" else 0)
                    return max(0, int(n))
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in RETRYABLE_STATUS:
                    break
                retry_after = r.headers.get("retry-after")
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            except (ValueError, KeyError, TypeError) as e:
                last = f"unreadable answer: {type(e).__name__}: {str(e)[:200]}"
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        raise ConnectionError(f"cannot count tokens at {self._root}{path}: {last}")

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        from lendata.lengths import count_tokens

        if self._tokenizer:
            return count_tokens(texts, self._tokenizer)
        if self._find_route() == "none":
            return count_tokens(texts)
        counts: dict[str, int] = {}
        for text in dict.fromkeys(texts):
            key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
            if key in self._counted:
                self._counted.move_to_end(key)
                counts[text] = self._counted[key]
                continue
            counts[text] = self._count_one(text) if text else 0
            self._counted[key] = counts[text]
            if len(self._counted) > 50_000:  # prompt fitting counts the same texts again and again: an LRU
                self._counted.popitem(last=False)
        return [counts[t] for t in texts]

    @property
    def tokenizer(self) -> str:
        """What `count_tokens` counts with: a file by content, the server's route and model, or the bundled
        tokenizer as an approximation (a server without a tokenize route)."""
        from lendata.engines.identity import server_url, tokenizer_file

        if self._tokenizer:
            return tokenizer_file(self._tokenizer)
        route = self._find_route()
        if route == "none":
            return (f"approximate:bundled SmolLM2-135M tokenizer ({server_url(self._root)} has no tokenize route; "
                    "set engine_options.tokenizer)")
        path = _ROUTES[route][0]
        return f"server:{server_url(self._root)}{path} model={self.model_id}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:  # no key in reprs
        return f"OpenAIEngine(base_url={self.base_url!r}, model={self.model_id!r})"


def _owned_by_continuing_server(served: list[dict[str, Any]], model: str) -> bool:
    """vLLM and SGLang report themselves as the model's `owner` in /models, and both continue a final assistant
    turn with `continue_final_message`; other servers are not assumed to. `served` is `_models()`'s list of
    dicts (an odd body is already an empty list there)."""
    owner = next((m.get("owned_by") for m in served if m.get("id") == model), None)
    return owner in {"vllm", "sglang"}


def _cached_tokens(usage: Any, prompt_tokens: int) -> int | None:
    """`usage.prompt_tokens_details.cached_tokens` (OpenAI's field; vLLM sends it with
    `--enable-prompt-tokens-details`), or None when the server does not say or says something odd (not a
    count, or more than the prompt it reports)."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= max(prompt_tokens, 0)
    return value if ok else None
