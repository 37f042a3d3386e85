"""Chains (engines/chains.py): a sample's calls as one generator, driven in rounds or continuously."""

import pytest

from lendata.engines import CachedEngine, Request, ResponseCache, Result
from lendata.engines.chains import in_rounds, one_call, run_chains


def ask(text, **kw):
    return Request(messages=({"role": "user", "content": text},), **kw)


def counter(name, calls):
    """A chain of `calls` requests, each naming the last result it saw; returns every text it received."""
    seen = []
    last = ""
    for k in range(calls):
        res = yield ask(f"{name}{k} after {last!r}", min_tokens=1, max_tokens=4)
        seen.append(res.text)
        last = res.text
    return seen


def test_rounds_send_the_current_request_of_every_live_chain_per_call(scripted):
    eng = scripted(lambda r: Result(text=r.messages[0]["content"].split()[0], completion_tokens=1))
    batches = []
    real = eng.generate
    eng.generate = lambda reqs, on_result=None: (batches.append([r.messages[0]["content"].split()[0]
                                                                 for r in reqs]), real(reqs, on_result))[1]
    values = in_rounds(eng, [counter("a", 3), counter("b", 1), counter("c", 0), counter("d", 2)])
    assert batches == [["a0", "b0", "d0"], ["a1", "d1"], ["a2"]]
    assert values == [["a0", "a1", "a2"], ["b0"], [], ["d0", "d1"]]  # in chain order, whatever finished first
    # a chain's next request is built from its previous result: the result went to the right chain
    assert any("after 'a1'" in r.messages[0]["content"] for r in eng.seen)


def test_results_reach_on_result_with_the_chain_index(scripted):
    got = []
    run_chains(scripted(), [counter("a", 2), counter("b", 1)], on_result=lambda i, r: got.append(i))
    assert sorted(got) == [0, 0, 1]


def test_a_chain_that_yields_something_else_is_a_clear_error(scripted):
    def bad():
        yield "not a request"

    with pytest.raises(TypeError, match="chain 0 yielded str"):
        in_rounds(scripted(), [bad()])


def test_one_call_chains_are_a_plain_batch(scripted):
    reqs = [ask("x", min_tokens=2), ask("y", min_tokens=3)]
    assert run_chains(scripted(), [one_call(r) for r in reqs]) == scripted().generate(reqs)


class Continuous:
    """A stand-in for an engine with continuous batching: records that `generate_chains` was the driver."""

    name, model_id, context_window = "continuous", "c-1", 4096
    continuous_batching = True

    def __init__(self):
        self.used = []

    def generate(self, requests, on_result=None):
        self.used.append("generate")
        return [Result(text="g", completion_tokens=1) for _ in requests]

    def generate_chains(self, chains, on_result=None):
        self.used.append("chains")
        return in_rounds(self, chains, on_result)

    def count_tokens(self, texts):
        return [1 for _ in texts]

    def close(self):
        pass


def test_the_cache_replays_hits_inside_chains_and_sends_only_misses(tmp_path, scripted):
    first = CachedEngine(scripted(), ResponseCache(tmp_path / "c.sqlite"))
    a = run_chains(first, [counter("a", 3), counter("b", 2)])
    assert first.calls == 5 and first.hits == 0
    # resumed after a crash: the same chains replay every call from the cache and reach the same values
    again = CachedEngine(scripted(), ResponseCache(tmp_path / "c.sqlite"))
    assert run_chains(again, [counter("a", 3), counter("b", 2), counter("n", 1)]) == [*a, ["word "]]
    assert again.calls == 1 and again.hits == 5
    # an inner engine with continuous batching keeps it behind the cache
    inner = Continuous()
    cached = CachedEngine(inner, ResponseCache(tmp_path / "d.sqlite"))
    run_chains(cached, [counter("a", 2)])
    assert inner.used[0] == "chains"


def test_progress_sees_cache_hits_and_misses_alike(tmp_path, scripted):
    run_chains(CachedEngine(scripted(), ResponseCache(tmp_path / "c.sqlite")), [counter("a", 2)])
    got = []
    run_chains(CachedEngine(scripted(), ResponseCache(tmp_path / "c.sqlite")), [counter("a", 3)],
               on_result=lambda i, r: got.append(r.cached))
    assert got == [True, True, False]


def test_a_kill_mid_round_keeps_every_row_that_finished_before_it(tmp_path, scripted):
    """Rounds hand each row to its chain (and so to the cache) the moment the engine reports it, not when the
    round ends: a kill loses only the rows in flight."""
    calls = []

    def answer(r):
        calls.append(r)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies on the third row of the round
        return Result(text="done", completion_tokens=1)

    chains = [one_call(ask(str(i))) for i in range(5)]
    with pytest.raises(KeyboardInterrupt):
        run_chains(CachedEngine(scripted(answer), ResponseCache(tmp_path / "c.sqlite")), chains)
    resumed = CachedEngine(scripted(), ResponseCache(tmp_path / "c.sqlite"))
    run_chains(resumed, [one_call(ask(str(i))) for i in range(5)])
    assert resumed.hits == 2 and resumed.calls == 3


def test_a_failing_chain_closes_every_chain(scripted):
    closed = []

    def chain(name, fail):
        try:
            res = yield ask(name)
            if fail:
                raise ValueError("a bug in a method")
            yield ask(name + " again", min_tokens=len(res.text))
        finally:
            closed.append(name)

    try:
        in_rounds(scripted(), [chain("a", False), chain("b", True), chain("c", False)])
    except ValueError as error:  # the error (and its traceback, which holds the chains) is still alive here
        assert "a bug" in str(error)
        assert sorted(closed) == ["a", "b", "c"]  # closed by the driver, not by the garbage collector later
    else:
        pytest.fail("the chain's error did not reach the caller")


def test_counters_count_through_a_continuous_inner_engine(tmp_path):
    cached = CachedEngine(Continuous(), ResponseCache(tmp_path / "c.sqlite"))
    run_chains(cached, [counter("a", 2), counter("b", 1)])
    assert (cached.calls, cached.hits, cached.tokens) == (3, 0, 3)
    again = CachedEngine(Continuous(), ResponseCache(tmp_path / "c.sqlite"))
    run_chains(again, [counter("a", 2), counter("b", 1)])
    assert (again.calls, again.hits, again.tokens) == (0, 3, 0) and again.engine.used == ["chains"]


def test_the_cache_closes_the_method_s_own_chain_when_a_drive_ends_early(tmp_path, scripted):
    closed = []

    def chain(name, fail):
        try:
            yield ask(name)
            if fail:
                raise ValueError("a bug in a method")
            yield ask(name + " again")
        finally:
            closed.append(name)

    for inner in (scripted(), Continuous()):
        closed.clear()
        cached = CachedEngine(inner, ResponseCache(tmp_path / f"{inner.name}.sqlite"))
        try:
            run_chains(cached, [chain("a", False), chain("b", True), chain("c", False)])
        except ValueError:
            assert sorted(closed) == ["a", "b", "c"]  # the wrappers closed what they wrap, before the caller
        else:
            pytest.fail("the chain's error did not reach the caller")


def test_an_engine_that_answers_fewer_requests_than_it_was_sent_is_an_error_not_a_loop(scripted):
    eng = scripted()
    eng.generate = lambda reqs, on_result=None: [Result(text="x")] * (len(reqs) - 1)
    with pytest.raises(RuntimeError, match="answered 1 of 2"):
        in_rounds(eng, [counter("a", 2), counter("b", 2)])


@pytest.mark.parametrize("bad, message", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"repetition_penalty": float("inf")}, "repetition_penalty"),
    ({"top_k": 2.5}, "top_k"), ({"top_k": True}, "top_k"), ({"top_k": -1}, "top_k"),
])
def test_a_request_with_sampling_values_no_engine_can_use_is_refused_when_it_is_made(bad, message):
    """An infinite penalty turns a zero logit into NaN inside an engine's step; a fractional top_k is truncated by
    one engine and refused by another: refused here, where the caller made it, with the field's name."""
    with pytest.raises(ValueError, match=message):
        Request(messages=({"role": "user", "content": "x"},), **bad)
