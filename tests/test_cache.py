import pytest

from lendata.engines import CachedEngine, Request, ResponseCache, Result, request_key


def ask(text, **kw):
    return Request(messages=({"role": "user", "content": text},), **kw)


def test_replays_hits_and_sends_only_misses(tmp_path, scripted):
    inner = scripted()
    eng = CachedEngine(inner, ResponseCache(tmp_path / "c.sqlite"))
    first = eng.generate([ask("a", min_tokens=2, max_tokens=4), ask("b", min_tokens=3, max_tokens=4)])
    assert eng.calls == 2 and eng.hits == 0
    # a new process (new cache object) replays from disk
    eng2 = CachedEngine(scripted(), ResponseCache(tmp_path / "c.sqlite"))
    again = eng2.generate([ask("b", min_tokens=3, max_tokens=4), ask("c", min_tokens=1, max_tokens=4),
                           ask("a", min_tokens=2, max_tokens=4)])
    assert eng2.calls == 1 and eng2.hits == 2
    assert again[0].text == first[1].text and again[2].text == first[0].text
    assert again[0].cached and not again[1].cached


def test_errors_are_not_cached(tmp_path, scripted):
    flaky = scripted(lambda r: Result.failed("boom"))
    eng = CachedEngine(flaky, ResponseCache(tmp_path / "c.sqlite"))
    assert eng.generate([ask("a")])[0].finish_reason == "error"
    good = CachedEngine(scripted(), ResponseCache(tmp_path / "c.sqlite"))
    assert good.generate([ask("a", min_tokens=1)])[0].ok and good.calls == 1


P = {"engine": "e", "model": "m"}


def test_key_covers_sampling_messages_schema_sample_and_producer(tmp_path):
    base = ask("a", max_tokens=10, seed=1)
    key = request_key(P, base)
    a1, a2 = tmp_path / "a1", tmp_path / "a2"
    for d, w in ((a1, b"one"), (a2, b"two")):
        d.mkdir()
        (d / "adapter.safetensors").write_bytes(w)
    variants = [
        ask("b", max_tokens=10, seed=1),
        ask("a", max_tokens=11, seed=1),
        ask("a", max_tokens=10, seed=2),
        ask("a", max_tokens=10, seed=1, temperature=0.1),
        ask("a", max_tokens=10, seed=1, min_tokens=3),
        ask("a", max_tokens=10, seed=1, stop=("x",)),
        ask("a", max_tokens=10, seed=1, json_schema={"type": "object"}),
        ask("a", max_tokens=10, seed=1, sample_index=1),
        ask("a", max_tokens=10, seed=1, lora=str(a1)),
        ask("a", max_tokens=10, seed=1, lora=str(a2)),
        ask("a", max_tokens=10, seed=1, top_k=20),
        ask("a", max_tokens=10, seed=1, top_k=0),  # off everywhere, unlike None (the engine's own default)
    ]
    keys = {request_key(P, v) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert request_key({**P, "model": "m2"}, base) != key and request_key({**P, "engine": "e2"}, base) != key
    assert request_key({**P, "weights": "abc"}, base) != key
    assert request_key(dict(P), ask("a", max_tokens=10, seed=1)) == key
    # an adapter is known by its content: the same files in another folder give the same key
    a3 = tmp_path / "elsewhere"
    a3.mkdir()
    (a3 / "adapter.safetensors").write_bytes(b"one")
    assert request_key(P, ask("a", lora=str(a3))) == request_key(P, ask("a", lora=str(a1)))


def test_empty_texts_are_not_cached(tmp_path, scripted):
    empty = scripted(lambda r: Result(text="", completion_tokens=0))
    eng = CachedEngine(empty, ResponseCache(tmp_path / "c.sqlite"))
    eng.generate([ask("a")])
    assert len(eng.cache) == 0


def test_content_identity_is_remembered_by_path_size_and_mtime(tmp_path, monkeypatch):
    import hashlib
    import os

    from lendata.engines import identity

    monkeypatch.setenv("LENDATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(identity, "_memo", None)
    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights-1")
    reads = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda p: (reads.append(p), real(p))[1])
    first = identity.file_sha256(f)
    assert first == hashlib.sha256(b"weights-1").hexdigest() and len(reads) == 1
    monkeypatch.setattr(identity, "_memo", None)  # a new process: read from the memo file
    assert identity.file_sha256(f) == first and len(reads) == 1
    f.write_bytes(b"weights-2")
    os.utime(f, ns=(1, 1))
    assert identity.file_sha256(f) == hashlib.sha256(b"weights-2").hexdigest() and len(reads) == 2


def test_server_urls_are_normalised_without_credentials():
    from lendata.engines.identity import server_url

    assert server_url("http://User:secret@LOCALHOST:8000/v1/") == "http://localhost:8000/v1"
    assert server_url("https://api.example.com/v1?api_key=sk-1&api-version=2") == \
        "https://api.example.com:443/v1?api-version=2"
    assert server_url("http://127.0.0.1/v1") == "http://127.0.0.1:80/v1"


def test_finished_rows_are_stored_as_they_finish(tmp_path, scripted):
    """A crash mid-batch keeps every row that finished before it."""
    calls = []

    def answer(r):
        calls.append(r)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies on the third row
        return Result(text="done", completion_tokens=1)

    eng = CachedEngine(scripted(answer), ResponseCache(tmp_path / "c.sqlite"))
    reqs = [ask(str(i)) for i in range(5)]
    try:
        eng.generate(reqs)
    except KeyboardInterrupt:
        pass
    resumed = CachedEngine(scripted(), ResponseCache(tmp_path / "c.sqlite"))
    resumed.generate(reqs)
    assert resumed.hits == 2 and resumed.calls == 3


def test_a_penalized_requests_key_holds_the_window_its_engine_applied():
    """The window enters a penalized request's key through its engine's rule: on llama.cpp (whose window was
    64 before it was an option) keys at 64 stay as they were and other windows differ; on vLLM with lendata's
    processor every penalized key differs from the keys of vLLM's own rule (the prompt and all the output),
    which its fallback and an OpenAI-compatible server keep, where the window changes nothing."""
    from lendata.engines.base import MARKED_WINDOW_RULE, MAX_REPETITION_WINDOW, PENALTY_RULE, WINDOW_RULE

    for bad in (0, -1, 2.5, True, None, MAX_REPETITION_WINDOW + 1, 2**32 + 5):
        with pytest.raises(ValueError, match="repetition_window"):
            ask("a", repetition_penalty=1.2, repetition_window=bad)
    assert Request(messages=()).repetition_window == 64

    def key(rule, **kw):
        producer = {**P, **({PENALTY_RULE: rule} if rule else {})}
        return request_key(producer, ask("a", max_tokens=10, seed=1, **kw))

    before = {kw: request_key(P, ask("a", max_tokens=10, seed=1, **dict(kw)))  # keys of the earlier shape
              for kw in ((), (("repetition_penalty", 1.2),))}
    for rule in (None, WINDOW_RULE, MARKED_WINDOW_RULE):  # no penalty: the window changes nothing anywhere
        assert key(rule) == key(rule, repetition_window=8) == before[()]
    assert key(WINDOW_RULE, repetition_penalty=1.2) == before[(("repetition_penalty", 1.2),)]
    assert key(WINDOW_RULE, repetition_penalty=1.2, repetition_window=8) != key(WINDOW_RULE, repetition_penalty=1.2)
    assert key(MARKED_WINDOW_RULE, repetition_penalty=1.2) != before[(("repetition_penalty", 1.2),)]
    assert key(MARKED_WINDOW_RULE, repetition_penalty=1.2, repetition_window=8) != key(
        MARKED_WINDOW_RULE, repetition_penalty=1.2)
    assert key(None, repetition_penalty=1.2, repetition_window=8) == before[(("repetition_penalty", 1.2),)]
    # the key 80b7064 (before the window) gave this request: llama.cpp's penalized entries are still found
    old = "57bfd4c8a4930bd81b5cf4cf3c39fb7b2065383e7bd155c8fd17f5bd224726f5"
    assert key(WINDOW_RULE, repetition_penalty=1.2) == old
