"""The OpenAI-compatible engine against a real llama_cpp.server on 127.0.0.1, and its retry behaviour."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lendata.engines import Request
from lendata.engines.openai_http import OpenAIEngine


def ask(text, **kw):
    return Request(messages=({"role": "user", "content": text},), **kw)


def test_batch_against_real_llama_cpp_server(llama_server):
    _, url = llama_server
    engine = OpenAIEngine(base_url=url, json_format="json_object", concurrency=2)
    assert engine.model_id == "smollm2"
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"]}
    reqs = [ask(f"Name a colour. ({i})", max_tokens=16, seed=i) for i in range(3)]
    reqs.append(ask("Answer in JSON: what is 2+2?", max_tokens=40, seed=1, json_schema=schema))
    seen = []
    results = engine.generate(reqs, on_result=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(r.ok and r.completion_tokens > 0 and r.prompt_tokens > 0 for r in results)
    assert "answer" in json.loads(results[3].text, strict=False)  # grammars allow raw newlines in strings
    again = engine.generate([reqs[0]])[0]
    assert again.text == results[0].text  # the seed reaches the server


def test_server_killed_mid_batch_gives_per_row_errors(llama_server):
    proc, url = llama_server
    engine = OpenAIEngine(base_url=url, concurrency=1, max_retries=2, backoff=0.05, timeout=20)
    reqs = [ask(f"Write a long story number {i}.", max_tokens=120, seed=i) for i in range(6)]
    done = []

    def on_result(i, r):
        done.append(r)
        if len(done) == 1:
            proc.kill()  # the server dies after the first row

    t0 = time.monotonic()
    results = engine.generate(reqs, on_result=on_result)
    assert time.monotonic() - t0 < 120
    assert len(results) == 6
    assert results[0].ok and results[0].text  # the first row finished before the server died
    failed = [r for r in results if r.finish_reason == "error"]
    assert len(failed) >= 4
    assert all("gave up after 3 attempts" in r.error for r in failed)


class FaultServer(ThreadingHTTPServer):
    """Scripted OpenAI peer for retry control flow: a queue of (status, headers, body) per request."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(n))
        self.server.requests.append((dict(self.headers), body, time.monotonic()))
        status, headers, payload = self.server.script.pop(0) if self.server.script else (200, {}, None)
        if payload is None:
            payload = json.dumps({
                "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            })
        data = payload.encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fault_server(request):
    srv = FaultServer(request.param)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


@pytest.mark.parametrize(
    "fault_server",
    [[(429, {"retry-after": "0.3"}, "slow down"), (500, {}, "boom"), (200, {}, "{not json")]],
    indirect=True,
)
def test_retries_429_5xx_and_bad_bodies_then_succeeds(fault_server, monkeypatch):
    monkeypatch.setenv("LENDATA_TEST_KEY", "sk-secret-123")
    engine = OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024, api_key_env="LENDATA_TEST_KEY",
                          backoff=0.01, max_retries=4)
    res = engine.generate([ask("hi", max_tokens=5, min_tokens=2, seed=3)])[0]
    assert res.ok and res.text == "ok"
    assert engine.retries == 3
    times = [t for _, _, t in fault_server.requests]
    assert times[1] - times[0] >= 0.28  # Retry-After was honoured
    headers, body, _ = fault_server.requests[0]
    assert headers["Authorization"] == "Bearer sk-secret-123"
    assert body["min_tokens"] == 2 and body["seed"] == 3 and body["max_tokens"] == 5
    assert "sk-secret" not in repr(engine) and "sk-secret" not in json.dumps(vars(engine), default=str)


@pytest.mark.parametrize("fault_server", [[(503, {}, "down")] * 10], indirect=True)
def test_exhausted_retries_become_an_error_result(fault_server):
    engine = OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024, backoff=0.01, max_retries=2)
    res = engine.generate([ask("hi", max_tokens=5)])[0]
    assert res.finish_reason == "error" and "HTTP 503" in res.error and "3 attempts" in res.error


@pytest.mark.parametrize("fault_server", [[(400, {}, "bad request")]], indirect=True)
def test_client_errors_are_not_retried(fault_server):
    engine = OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024, backoff=0.01)
    res = engine.generate([ask("hi", max_tokens=5)])[0]
    assert res.finish_reason == "error" and "HTTP 400" in res.error
    assert len(fault_server.requests) == 1


@pytest.mark.parametrize("fault_server", [[]], indirect=True)
def test_json_schema_request_shapes(fault_server):
    schema = {"type": "object"}
    for fmt, expected in (("json_schema", "json_schema"), ("json_object", "json_object")):
        engine = OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024, json_format=fmt)
        engine.generate([ask("hi", max_tokens=5, json_schema=schema)])
        rf = fault_server.requests[-1][1]["response_format"]
        assert rf["type"] == expected
        assert (rf["json_schema"]["schema"] if fmt == "json_schema" else rf["schema"]) == schema


def _serve(script):
    srv = FaultServer(script)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _answer(text):
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


def test_two_servers_with_one_model_name_never_share_cached_answers(tmp_path):
    """Both servers call their model "default"; the cache key names the server, so B is asked, not A's
    answer replayed."""
    from lendata.engines import CachedEngine, ResponseCache

    a, b = _serve([(200, {}, _answer("from A"))]), _serve([(200, {}, _answer("from B"))])
    try:
        cache = tmp_path / "c.sqlite"
        ea = CachedEngine(OpenAIEngine(base_url=a.url, model="default", context_window=1024), ResponseCache(cache))
        eb = CachedEngine(OpenAIEngine(base_url=b.url, model="default", context_window=1024), ResponseCache(cache))
        req = ask("hi", max_tokens=5, seed=1)
        assert ea.generate([req])[0].text == "from A"
        got = eb.generate([req])[0]
        assert got.text == "from B" and eb.calls == 1 and not got.cached
        # the same server under another spelling of its URL is the same producer
        again = CachedEngine(OpenAIEngine(base_url=a.url.replace("http://", "HTTP://") + "/", model="default",
                                          context_window=1024), ResponseCache(cache))
        assert again.generate([req])[0].text == "from A" and again.calls == 0
    finally:
        a.shutdown()
        b.shutdown()


@pytest.mark.parametrize("fault_server", [[(200, {}, _answer(None)), (200, {}, _answer("")),
                                           (200, {}, json.dumps({"choices": [{"message": None}]}))] * 2],
                         indirect=True)
def test_a_200_without_content_is_an_error_not_a_cached_success(fault_server, tmp_path):
    from lendata.engines import CachedEngine, ResponseCache

    engine = OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024, backoff=0.01, max_retries=2)
    cached = CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite"))
    res = cached.generate([ask("hi", max_tokens=5)])[0]
    assert res.finish_reason == "error" and "content" in res.error, res
    assert len(cached.cache) == 0
    res = cached.generate([ask("hi", max_tokens=5)])[0]  # the next three answers are the same kinds of empty
    assert res.finish_reason == "error" and len(cached.cache) == 0


def test_output_changing_options_are_part_of_the_identity():
    a = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m", context_window=1024)
    b = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m", context_window=1024, json_format="json_object")
    c = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m", context_window=1024, send_min_tokens=False)
    assert len({json.dumps(e.identity(), sort_keys=True) for e in (a, b, c)}) == 3


# --- token counts with the served model's own tokenizer (issue 15, item 4) ---------------------------------

class _JsonHandler(BaseHTTPRequestHandler):
    """A quiet loopback handler that answers JSON."""

    def log_message(self, *args):
        pass

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _TokenizeHandler(_JsonHandler):
    """A server whose tokenizer is not the bundled one (3 tokens per character), on vLLM's or llama_cpp.server's
    route, or on none (a hosted API)."""

    def do_GET(self):
        self._send(200, {"data": [{"id": "m", "max_model_len": 4096}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        route = self.server.route
        if route == "vllm" and self.path == "/tokenize":
            n = 3 * len(body["prompt"]) + (0 if body.get("add_special_tokens") is False else 1)
            return self._send(200, {"count": n, "tokens": list(range(n)), "max_model_len": 4096})
        if route == "llama_cpp" and self.path == "/extras/tokenize":
            n = 3 * len(body["input"]) + 1  # llama_cpp.server adds the BOS token
            return self._send(200, {"tokens": list(range(n))})
        if route == "llama_server" and self.path == "/tokenize":  # llama.cpp's server: `content`, no `count`
            return self._send(200, {"tokens": list(range(3 * len(body.get("content", ""))))})
        if route == "anything":  # a server that answers 200 to every path is not a tokenize route
            return self._send(200, {"choices": [{"message": {"content": "ok"}}]})
        self._send(404, {"detail": "Not Found"})



@pytest.fixture
def tokenize_server(request):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _TokenizeHandler)
    srv.route = request.param
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


@pytest.mark.parametrize("tokenize_server", ["vllm", "llama_cpp", "llama_server"], indirect=True)
def test_counts_tokens_with_the_servers_tokenizer(tokenize_server):
    srv, url = tokenize_server
    engine = OpenAIEngine(base_url=url)
    assert engine.count_tokens(["abc", "", "héllo wörld", "abc"]) == [9, 0, 33, 9]
    assert engine.count_tokens(["x" * i for i in range(300)]) == [3 * i for i in range(300)]
    path = "/extras/tokenize" if srv.route == "llama_cpp" else "/tokenize"
    from lendata.engines import make_engine

    assert make_engine("openai", base_url=url, context_window="max").context_window == 4096  # as reported
    assert engine.tokenizer == f"server:{url.removesuffix('/v1')}{path} model=m"


@pytest.mark.parametrize("tokenize_server", ["none", "anything"], indirect=True)
def test_a_server_without_a_tokenize_route_counts_approximately_and_says_so(tokenize_server, caplog):
    _, url = tokenize_server
    engine = OpenAIEngine(base_url=url)
    with caplog.at_level("WARNING", logger="lendata"):
        from lendata.lengths import count_tokens

        assert engine.count_tokens(["abc"]) == count_tokens(["abc"])
    assert engine.tokenizer.startswith("approximate:") and "tokenizer" in engine.tokenizer
    assert any("tokenize" in r.getMessage() for r in caplog.records)


def test_a_configured_tokenizer_file_wins_and_is_named_by_content(tmp_path):
    from lendata.models import bundled_tokenizer_path

    engine = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m", context_window=2048,
                          tokenizer=str(bundled_tokenizer_path()))
    assert engine.tokenizer.startswith("file:") and "@sha256:" in engine.tokenizer


def test_llama_cpp_server_counts_as_the_model_does(llama_server, llama):
    _, url = llama_server
    engine = OpenAIEngine(base_url=url)
    texts = ["The river runs to the sea.", "河流流向大海。", ""]
    assert engine.count_tokens(texts) == llama.count_tokens(texts)
    assert engine.tokenizer.endswith("/extras/tokenize model=smollm2")


# --- LoRA adapters through an OpenAI-compatible server (issue 16) -------------------------------------------

class _LoraHandler(_JsonHandler):
    """vLLM's runtime LoRA loading (`POST /v1/load_lora_adapter` {lora_name, lora_path}; 400 "already loaded"
    when loaded twice) and a chat route that answers with the model it was asked for."""

    def do_GET(self):
        self._send(200, {"data": [{"id": "base", "max_model_len": 4096}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        if self.path == "/v1/load_lora_adapter":
            self.server.loads.append(body)
            if body["lora_name"] in self.server.loaded:
                return self._send(400, {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."})
            self.server.loaded[body["lora_name"]] = body["lora_path"]
            return self._send(200, {"ok": True})
        if self.path == "/v1/chat/completions":
            if body["model"] not in {"base", *self.server.loaded}:
                return self._send(404, {"message": f"model {body['model']} does not exist"})
            return self._send(200, {"choices": [{"message": {"content": f"from {body['model']}"},
                                                 "finish_reason": "stop"}], "usage": {}})
        self._send(404, {"detail": "Not Found"})



def test_a_local_adapter_is_loaded_into_the_server_once_and_requested_by_name(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _LoraHandler)
    srv.loads, srv.loaded = [], {}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        adapter = tmp_path / "gen"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("{}")
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        engine = OpenAIEngine(base_url=url, model="base", backoff=0.01, max_retries=0)
        res = engine.generate([ask("a"), ask("b", lora=str(adapter)), ask("c", lora=str(adapter))])
        name = srv.loads[0]["lora_name"]
        assert [r.text for r in res] == ["from base", f"from {name}", f"from {name}"]
        assert len(srv.loads) == 1 and srv.loads[0]["lora_path"] == str(adapter.resolve())
        assert name.startswith("lendata-")  # named by content: another folder with these files is this adapter
        assert engine.generate([ask("d", lora=str(adapter))])[0].text == f"from {name}" and len(srv.loads) == 1
        # a second engine (a rerun) finds it loaded already: vLLM's 400 "already loaded" is not an error
        again = OpenAIEngine(base_url=url, model="base", backoff=0.01, max_retries=0)
        assert again.generate([ask("e", lora=str(adapter))])[0].text == f"from {name}"
        # a name the server serves itself (--lora-modules) is passed through as the model
        srv.loaded["served-adapter"] = "/srv/a"
        assert engine.generate([ask("f", lora="served-adapter")])[0].text == "from served-adapter"
    finally:
        srv.shutdown()


def test_a_server_that_cannot_load_adapters_is_a_clear_error(llama_server, tmp_path):
    from lendata.engines.base import AdapterError

    _, url = llama_server
    adapter = tmp_path / "gen"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    engine = OpenAIEngine(base_url=url, max_retries=0)
    assert engine.generate([ask("Say hi.", max_tokens=4)])[0].ok
    with pytest.raises(AdapterError, match="cannot load LoRA adapters at run time.*VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        engine.generate([ask("Say hi.", max_tokens=4), ask("Say hi.", max_tokens=4, lora=str(adapter))])


class _SlowOnRequest(_Handler):
    """Answers at once, except a request whose prompt says "slow", which takes a second."""

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(n))
        prompt = body["messages"][-1]["content"]
        self.server.requests.append((prompt, time.monotonic()))
        if "slow" in prompt:
            time.sleep(1.0)
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"re: {prompt}"},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_chains_send_their_next_request_without_waiting_for_a_round():
    """Against a server, a chain's next request goes out when its previous one is answered: three quick calls
    of one chain are done while another chain's slow call is still running (rounds would wait for it)."""
    from lendata.engines.chains import in_rounds, run_chains

    srv = FaultServer([])
    srv.RequestHandlerClass = _SlowOnRequest
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        engine = OpenAIEngine(base_url=srv.url, model="m", context_window=1024, backoff=0.01)
        finished = []

        def chain(name, prompts):
            texts = []
            for p in prompts:
                texts.append((yield ask(p, max_tokens=5)).text)
            finished.append(name)
            return texts

        values = run_chains(engine, [chain("slow", ["slow one"]), chain("quick", ["a", "b", "c"])])
        assert finished == ["quick", "slow"]
        assert values == [["re: slow one"], ["re: a", "re: b", "re: c"]]
        finished.clear()
        in_rounds(engine, [chain("slow", ["slow one"]), chain("quick", ["a", "b", "c"])])
        assert finished == ["slow", "quick"]  # the control
    finally:
        srv.shutdown()


def test_a_chain_request_the_server_cannot_enforce_is_refused():
    from lendata.engines.base import UnsupportedOption
    from lendata.engines.chains import one_call, run_chains

    engine = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m", context_window=1024)  # refused before any call
    with pytest.raises(UnsupportedOption):
        run_chains(engine, [one_call(ask("hi", max_tokens=5, no_repeat_ngram=4))])


def test_a_failing_chain_stops_the_others_instead_of_letting_them_run_on():
    from lendata.engines.chains import run_chains

    srv = FaultServer([])
    srv.RequestHandlerClass = _SlowOnRequest
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    closed = []
    try:
        engine = OpenAIEngine(base_url=srv.url, model="m", context_window=1024, backoff=0.01)

        def chain(name, prompts, fail=False):
            try:
                for p in prompts:
                    yield ask(p, max_tokens=5)
                    if fail:
                        raise ValueError("a bug in a method")
            finally:
                closed.append(name)

        with pytest.raises(ValueError, match="a bug"):
            run_chains(engine, [chain("slow", ["slow one", "after the slow one"]), chain("quick", ["q"], fail=True)])
        time.sleep(1.2)  # the slow answer has come back by now: nothing more may go out
        sent = [p for p, _ in srv.requests]
        assert "after the slow one" not in sent and sorted(closed) == ["quick", "slow"]
    finally:
        srv.shutdown()


# --- continuing a prefilled assistant turn (issue 19) -------------------------------------------------------


class _ModelsHandler(_JsonHandler):
    """/models as a server reports it (`owned_by`), and a chat answer with empty content."""

    def do_GET(self):
        self.server.gets += 1
        if self.server.owner == "odd":  # a body that is not a list of models
            return self._send(200, {"data": None})
        self._send(200, {"data": ["m", {"id": "m", "owned_by": self.server.owner, "max_model_len": 4096}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 0}})


@pytest.fixture
def models_server(request):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _ModelsHandler)
    srv.owner, srv.gets = request.param, 0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()


def test_llama_cpp_server_is_not_taken_to_continue_a_prefill(llama_server):
    """llama_cpp.server ignores `continue_final_message` and answers a chat that ends on an assistant turn with a
    new turn: a continuation there would glue a fresh answer onto the cut text."""
    _, url = llama_server
    assert OpenAIEngine(base_url=url).continues_prefill is False
    assert OpenAIEngine(base_url=url, continue_final_message=True).continues_prefill is True


@pytest.mark.parametrize("models_server, claims", [("vllm", True), ("sglang", True), ("me", False),
                                                   ("openai", False)], indirect=["models_server"])
def test_a_server_that_says_it_is_vllm_or_sglang_continues_a_prefill(models_server, claims):
    url = models_server.url
    engine = OpenAIEngine(base_url=url, model="m", context_window=1024)  # /models not read yet
    assert models_server.gets == 0
    assert engine.continues_prefill is claims and engine.continues_prefill is claims
    assert models_server.gets == 1  # asked once
    assert OpenAIEngine(base_url=url).continues_prefill is claims  # read from /models in the constructor
    assert models_server.gets == 2
    # the option wins over what the server says
    assert OpenAIEngine(base_url=url, continue_final_message=not claims).continues_prefill is (not claims)


@pytest.mark.parametrize("models_server", ["odd"], indirect=True)
def test_an_odd_models_body_means_no_continuation_not_a_crash(models_server):
    assert OpenAIEngine(base_url=models_server.url, model="m", context_window=1024).continues_prefill is False


def test_a_server_that_cannot_be_asked_is_taken_not_to_continue(caplog):
    engine = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m", context_window=1024, max_retries=1,
                          backoff=0.01)
    with caplog.at_level("WARNING", logger="lendata.engines"):
        assert engine.continues_prefill is False
    assert "continue_final_message" in caplog.text


@pytest.mark.parametrize("models_server", ["vllm"], indirect=True)
def test_an_empty_continuation_is_an_answer_not_an_error(models_server, tmp_path):
    """A continuation can end at once (the cut fell where the model ends a paragraph): empty content is its
    answer, stored in the cache like any other; a fresh question answered with nothing stays an error."""
    from lendata.engines import CachedEngine, ResponseCache
    from lendata.engines.chains import one_call, run_chains

    engine = OpenAIEngine(base_url=models_server.url, context_window=1024, backoff=0.01, max_retries=1)
    cached = CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite"))
    more = Request(messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "Cut here."}),
                   max_tokens=5)
    res = cached.generate([more])[0]
    assert res.ok and res.text == "" and engine.retries == 0
    assert cached.generate([more])[0].cached  # replayed, not asked again
    assert not cached.generate([ask("hi", max_tokens=5)])[0].ok
    # the way the methods send continuations: chains through the cache (continuous batching)
    other = Request(messages=(*more.messages[:1], {"role": "assistant", "content": "Cut elsewhere."}), max_tokens=5)
    assert cached.continuous_batching
    [first] = run_chains(cached, [one_call(other)])
    [again] = run_chains(cached, [one_call(other)])
    assert first.ok and first.text == "" and not first.cached and again.cached


@pytest.mark.parametrize("models_server", ["me"], indirect=True)
def test_an_empty_answer_to_a_prefill_on_a_server_that_does_not_continue_is_an_error(models_server):
    engine = OpenAIEngine(base_url=models_server.url, context_window=1024, backoff=0.01, max_retries=1)
    more = Request(messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "Cut here."}),
                   max_tokens=5)
    assert not engine.generate([more])[0].ok


def _usage_answer(usage):
    return (200, {}, json.dumps({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                                 "usage": usage}))


@pytest.mark.parametrize("fault_server", [[
    _usage_answer({"prompt_tokens": 40, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 32}}),
    _usage_answer({"prompt_tokens": 40, "completion_tokens": 1}),
    _usage_answer({"prompt_tokens": 40, "completion_tokens": 1, "prompt_tokens_details": None}),
    _usage_answer({"prompt_tokens": 40, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": "32"}}),
    _usage_answer({"prompt_tokens": 40, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": -1}}),
    _usage_answer({"prompt_tokens": 40, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": True}}),
    _usage_answer({"prompt_tokens": 40, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 41}}),
    _usage_answer({"prompt_tokens": 40, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 40}}),
]], indirect=True)
def test_prefix_cache_hits_are_read_from_the_usage_and_odd_values_are_unknown(fault_server):
    """A server's `prompt_tokens_details.cached_tokens` (vLLM with --enable-prompt-tokens-details) becomes
    `prompt_cached_tokens`; a server that does not say, or says something that is not a count or is more than
    the prompt it reports, gives None."""
    eng = OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024, concurrency=1, max_retries=0)
    out = [eng.generate([Request(messages=({"role": "user", "content": f"q{i}"},), max_tokens=4)])[0]
           for i in range(8)]
    assert all(r.ok for r in out)
    assert [r.prompt_cached_tokens for r in out] == [32, None, None, None, None, None, None, 40]


@pytest.mark.parametrize("fault_server", [[]], indirect=True)
def test_a_penalty_goes_out_under_both_names_and_the_servers_own_window_is_named_once(fault_server, caplog):
    """No OpenAI-compatible server takes the penalty's window per request: the engine sends the penalty and
    says, once, that the server's own window applies (repetition_window is not enforced here)."""
    engine = OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024)
    with caplog.at_level("WARNING", logger="lendata"):
        engine.generate([ask("hi", max_tokens=5)])
        assert "repetition_window" not in caplog.text  # no penalty, nothing to say
        engine.generate([ask("hi", max_tokens=5, repetition_penalty=1.2, repetition_window=32)] * 2)
    body = fault_server.requests[-1][1]
    assert body["repetition_penalty"] == body["repeat_penalty"] == 1.2
    assert caplog.text.count("not repetition_window=32") == 1


@pytest.mark.parametrize("fault_server", [[]], indirect=True)
def test_a_window_the_server_does_not_apply_stays_out_of_the_key(fault_server):
    from lendata.engines.base import request_key
    from lendata.engines.identity import producer

    ident = producer(OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024))
    keys = {request_key(ident, ask("hi", max_tokens=5, repetition_penalty=1.2, repetition_window=w)) for w in (8, 64)}
    assert len(keys) == 1


@pytest.mark.parametrize("fault_server", [[]], indirect=True)
def test_a_call_holds_its_slot_until_its_answer_is_recorded(fault_server):
    """A kill repeats at most `concurrency` calls: a slot is freed only once its answer has been handed to its
    chain (where the response cache stores it). Freed on arrival, answers waiting for their turn to be recorded
    let more calls go out (a fault-injection build repeated 17 calls after two kills at concurrency 8)."""
    engine = OpenAIEngine(base_url=fault_server.url, model="m", context_window=1024, concurrency=2)
    release, recorded = threading.Event(), []

    def on_result(i, res):
        recorded.append(i)
        release.wait(10)  # a slow cache write

    run = threading.Thread(target=engine.generate, args=([ask(f"q{i}", max_tokens=5) for i in range(6)], on_result))
    run.start()
    deadline = time.monotonic() + 10
    while not recorded and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # room for a freed slot to send more
    sent = len(fault_server.requests)
    release.set()
    run.join(30)
    assert recorded and sent <= 2, sent
    assert len(fault_server.requests) == 6 and sorted(recorded) == list(range(6))
