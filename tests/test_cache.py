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


def test_key_covers_sampling_messages_schema_sample_and_model():
    base = ask("a", max_tokens=10, seed=1)
    key = request_key("e", "m", base)
    variants = [
        ask("b", max_tokens=10, seed=1),
        ask("a", max_tokens=11, seed=1),
        ask("a", max_tokens=10, seed=2),
        ask("a", max_tokens=10, seed=1, temperature=0.1),
        ask("a", max_tokens=10, seed=1, min_tokens=3),
        ask("a", max_tokens=10, seed=1, stop=("x",)),
        ask("a", max_tokens=10, seed=1, json_schema={"type": "object"}),
        ask("a", max_tokens=10, seed=1, sample_index=1),
        ask("a", max_tokens=10, seed=1, lora="/a"),
    ]
    keys = {request_key("e", "m", v) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert request_key("e", "m2", base) != key and request_key("e2", "m", base) != key
    assert request_key("e", "m", ask("a", max_tokens=10, seed=1)) == key


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
