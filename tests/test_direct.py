import pytest

from lendata.engines import Result
from lendata.lengths import length_score
from lendata.methods.direct.generate import Settings, direct
from lendata.methods.shared.budget import budget_for, measure_tokens_per_word


def test_budget_scales_with_target_and_caps_to_the_window():
    b = budget_for(1000, prompt_tokens=50, context_window=8192, tokens_per_word=1.3, min_ratio=0.8, max_ratio=1.2)
    assert (b.min_tokens, b.max_tokens, b.capped, b.target_words) == (1040, 1560, False, 1000)
    c = budget_for(10000, prompt_tokens=192, context_window=2048, tokens_per_word=1.3, min_ratio=0.8, max_ratio=1.2)
    assert c.capped and c.requested_words == 10000 and c.max_tokens <= 2048 - 192
    assert c.target_words == int((2048 - 192) / 1.3)
    with pytest.raises(ValueError, match="no room"):
        budget_for(10, prompt_tokens=2046, context_window=2048, tokens_per_word=1.3)


def test_tokens_per_word_is_measured_per_language(llama):
    tpw = measure_tokens_per_word(llama)
    assert 1.0 < tpw["en"] < 2.5  # a BPE tokenizer on English prose
    assert tpw["zh"] > tpw["en"]  # SmolLM2's vocabulary is English-centred


def test_direct_rows_capped_flag_and_engine_errors(scripted):
    def answer(req):
        if "fail" in req.messages[0]["content"]:
            return Result.failed("engine exploded")
        return Result(text="word " * 100, completion_tokens=100)

    eng = scripted(answer)
    rows = [{"instruction": "write 100 words", "target": 100, "source": "f:1"},
            {"instruction": "write 100000 words", "target": 100000, "source": "f:2"},
            {"instruction": "please fail", "target": 10, "source": "f:3"}]
    table, quarantine = direct(rows, eng, Settings(seed=1))
    got = table.to_pylist()
    assert [r["capped"] for r in got] == [False, True]
    assert got[0]["length_score"] == 100.0 and got[0]["response_words"] == 100
    assert got[1]["target_words"] < 100000 and got[1]["requested_words"] == 100000
    # a capped row is scored against what was asked (LongWrite-Ruler: the window stopped it, not the model)
    assert got[1]["length_score"] == 0.0 and got[1]["goal_score"] == length_score(got[1]["target_words"], 100)
    assert all(r["max_tokens"] <= eng.context_window for r in got)
    assert quarantine[0]["reason"] == "engine exploded" and quarantine[0]["source"] == "f:3"
    assert [r.min_tokens > 0 for r in eng.seen] == [True, True, True]
    assert len({r.seed for r in eng.seen}) == 3


@pytest.mark.parametrize("served, shown", [("/home/alice/ckpt/step-1000", "step-1000"),
                                           ("C:\\models\\qwen.gguf", "qwen.gguf"),
                                           ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct")])
def test_rows_name_a_local_model_by_its_folder_not_its_path(scripted, served, shown):
    eng = scripted()
    eng.model_id = served  # what `vllm serve /home/alice/ckpt/step-1000` reports as its model id
    table, _ = direct([{"instruction": "write 10 words", "target": 10, "source": "f:1"}], eng, Settings(seed=1))
    assert table.column("model").to_pylist() == [shown]


class _CharTokens:
    """A scripted engine whose tokenizer is not the bundled one: 7 tokens per character."""

    tokenizer = "test:7-per-char"

    def count_tokens(self, texts):
        return [7 * len(t) for t in texts]


def test_response_tokens_are_counted_by_the_engine_that_wrote_them(scripted):
    eng = scripted()
    eng.count_tokens = _CharTokens().count_tokens
    table, _ = direct([{"instruction": "write 10 words", "target": 10, "source": "f:1"}], eng, Settings(seed=1))
    row = table.to_pylist()[0]
    assert row["response_tokens"] == 7 * len(row["messages"][1]["content"])


def test_the_manifest_names_the_tokenizer_that_counted(tmp_path, scripted):
    import json

    from lendata import build as builds
    from lendata import recipes
    from lendata import store as st
    from lendata.engines import CachedEngine, ResponseCache
    from lendata.engines.pool import EnginePool

    eng = scripted()
    eng.tokenizer, eng.count_tokens = _CharTokens.tokenizer, _CharTokens().count_tokens
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Write 30 words on rivers.", "length": 30}) + "\n")
    recipe = recipes.load("direct", {"input": str(src), "n": 1, "engine": "openai"})
    pool = EnginePool(lambda name, options: CachedEngine(eng, ResponseCache(tmp_path / "c.sqlite")), "openai")
    builds.run(recipe, tmp_path / "store", progress=False, engines=pool)
    assert st.open_version(tmp_path / "store", "direct").manifest["tokenizer"] == "test:7-per-char"


def test_rows_say_when_the_window_stopped_the_text_not_the_model(scripted):
    """LongWrite-Ruler: a row whose budget the window set and that ran to it was stopped by the window."""
    def answer(req):  # writes 2,000 tokens, or without end when asked for 100,000 words
        n = req.max_tokens if "100000" in req.messages[0]["content"] else min(req.max_tokens, 2000)
        return Result(text="word " * n, completion_tokens=n, finish_reason="length" if n == req.max_tokens else "stop")

    eng = scripted(answer)
    rows = [{"instruction": "write 250 words", "target": 250}, {"instruction": "write 100000 words", "target": 100000},
            {"instruction": "write 5 words", "target": 5}]
    table, _ = direct(rows, eng, Settings(seed=1, min_ratio=0.0, max_ratio=10.0))
    got = table.to_pylist()
    assert [r["window_limited"] for r in got] == [False, True, False]
    assert [r["stopped_by"] for r in got] == ["model", "window", "max_tokens"]


# --- continuing a row cut at max_tokens (issue 19) --------------------------------------------------------


def _cut_then_finish(req):
    """Cut at the budget on the first call; a continuation (a prefilled assistant turn) ends its sentence."""
    if req.messages[-1]["role"] == "assistant":
        return Result(text=" and ends here.", completion_tokens=4, finish_reason="stop")
    return Result(text="word " * (req.max_tokens - 1) + "mid", completion_tokens=req.max_tokens,
                  finish_reason="length")


def test_a_cut_row_is_continued_from_where_it_stopped(scripted):
    from lendata.methods.agentwrite.writing import continuation_tokens

    eng = scripted(_cut_then_finish)
    rows = [{"instruction": "write 100 words", "target": 100, "source": "f:1"}]
    table, quarantine = direct(rows, eng, Settings(seed=1, continue_attempts=1))
    first, more = eng.seen
    # the continuation carries the cut text as the assistant's own turn and asks for one sentence more
    assert more.messages == (*first.messages, {"role": "assistant", "content": "word " * (first.max_tokens - 1)
                                               + "mid"})
    assert more.max_tokens == continuation_tokens(first.max_tokens) and more.min_tokens == 0
    assert more.end_at_sentence and "\n\n" in more.stop and more.seed != first.seed
    row = table.to_pylist()[0]
    text = row["messages"][1]["content"]
    assert text == ("word " * (first.max_tokens - 1) + "mid and ends here.")
    # counted with the engine's tokenizer, as response_tokens is (the scripted one counts words)
    assert row["finish_reason"] == "stop" and row["continued_tokens"] == 3
    assert row["response_tokens"] == len(text.split())  # counted over the whole text, continuation included
    assert row["stopped_by"] == "max_tokens"  # the model did not end its answer: the budget stopped it first
    assert quarantine == []


def test_continuation_is_off_by_default_and_for_the_ruler(scripted):
    """The code default is LongBench-Write's baseline (one call per row); LongWrite-Ruler measures how long the
    model writes, so its recipe never continues; the `direct` recipe does."""
    from lendata import recipes

    eng = scripted(_cut_then_finish)
    table, _ = direct([{"instruction": "write 100 words", "target": 100}], eng, Settings(seed=1))
    assert len(eng.seen) == 1 and table.to_pylist()[0]["continued_tokens"] == 0
    assert table.to_pylist()[0]["finish_reason"] == "length"
    assert recipes.load("longwrite_ruler", {}).settings.continue_attempts == 0
    assert recipes.load("direct", {}).settings.continue_attempts >= 1


def test_a_failed_or_refused_continuation_keeps_the_cut_text(scripted):
    def answer(req):
        if req.messages[-1]["role"] == "assistant":
            return Result.failed("server went away")
        return Result(text="one two three", completion_tokens=req.max_tokens, finish_reason="length")

    eng = scripted(answer)
    table, quarantine = direct([{"instruction": "write 100 words", "target": 100}], eng,
                               Settings(seed=1, continue_attempts=2))
    row = table.to_pylist()[0]
    assert row["messages"][1]["content"] == "one two three" and row["finish_reason"] == "length"
    assert row["continued_tokens"] == 0 and quarantine == []
    assert len(eng.seen) == 3  # the first call, then both attempts (each with its own seed)
    assert len({r.seed for r in eng.seen}) == 3


def test_an_engine_that_cannot_end_at_a_sentence_continues_to_the_paragraph_break(scripted):
    eng = scripted(_cut_then_finish)
    eng.decoding_options = frozenset()
    direct([{"instruction": "write 100 words", "target": 100}], eng, Settings(seed=1, continue_attempts=1))
    assert not eng.seen[1].end_at_sentence and "\n\n" in eng.seen[1].stop


def test_a_row_the_window_stopped_is_not_continued(scripted):
    eng = scripted(lambda req: Result(text="word " * req.max_tokens, completion_tokens=req.max_tokens,
                                      finish_reason="length"))
    table, _ = direct([{"instruction": "write 100000 words", "target": 100000}], eng,
                      Settings(seed=1, continue_attempts=2))
    assert len(eng.seen) == 1 and table.to_pylist()[0]["stopped_by"] == "window"


def test_progress_counts_rows_not_calls(scripted):
    eng = scripted(_cut_then_finish)
    seen: list[int] = []
    direct([{"instruction": "write 100 words", "target": 100}, {"instruction": "write 50 words", "target": 50}],
           eng, Settings(seed=1, continue_attempts=1), on_result=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1] and len(eng.seen) == 4


def test_continued_rows_keep_their_first_text_on_the_bundled_model(llama):
    """The real model: a row cut at a small budget is continued and its first call's text is kept word for
    word (the same seed writes the same first call; the continuation only appends)."""
    rows = [{"instruction": "Write a 40-word story about a lighthouse keeper.", "target": 40}]
    s = dict(seed=3, min_ratio=1.0, max_ratio=1.0, temperature=0.7)
    base, _ = direct(rows, llama, Settings(**s))
    more, _ = direct(rows, llama, Settings(**s, continue_attempts=1))
    cut, continued = base.to_pylist()[0], more.to_pylist()[0]
    assert cut["finish_reason"] == "length"  # the budget of 40 words' tokens cut it
    assert continued["continued_tokens"] > 0
    assert continued["messages"][1]["content"].startswith(cut["messages"][1]["content"])
    assert len(continued["messages"][1]["content"]) > len(cut["messages"][1]["content"])
    assert continued["response_tokens"] > cut["response_tokens"]


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(cut=st.text(min_size=1).filter(str.strip), parts=st.lists(
    st.tuples(st.text(), st.sampled_from(["stop", "length"]), st.booleans()), min_size=1, max_size=3))
def test_continuations_only_append_to_the_cut_text(cut, parts):
    """Whatever the continuations return (text, cut again, failed), the result starts with the cut text word
    for word and is exactly the cut text plus the continuations that succeeded, in order."""
    from lendata.engines.base import Request
    from lendata.engines.chains import run_chains
    from lendata.methods.shared.continuation import continue_cut
    from tests.conftest import ScriptedEngine

    answers = iter(parts)

    def answer(req):
        text, reason, ok = next(answers)
        return Result(text=text, completion_tokens=len(text.split()), finish_reason=reason) if ok else \
            Result.failed("down")

    eng = ScriptedEngine(answer)
    req = Request(messages=({"role": "user", "content": "go"},), max_tokens=100, seed=1)
    first = Result(text=cut, completion_tokens=3, finish_reason="length")

    def chain():
        return (yield from continue_cut(req, first, eng, len(parts)))

    [res] = run_chains(eng, [chain()])
    expected, reason, calls = cut, "length", 0
    for text, why, ok in parts:
        if reason != "length":  # a continuation that ended the text is the last one asked for
            break
        calls += 1
        if ok:
            expected, reason = expected + text, why
    assert len(eng.seen) == calls
    assert res.text == expected and res.text.startswith(cut) and res.finish_reason == reason
    assert all(m.messages[-1]["content"].startswith(cut) for m in eng.seen)  # each call continues the cut text


def test_an_engine_that_cannot_continue_a_prefill_is_not_asked_to(scripted, caplog):
    """A server that answers an assistant turn with a new turn (llama_cpp.server) would glue a fresh answer onto
    the cut text: the row keeps its cut instead, and the log says why."""
    eng = scripted(_cut_then_finish)
    eng.continues_prefill = False
    with caplog.at_level("WARNING"):
        table, _ = direct([{"instruction": "write 100 words", "target": 100}], eng,
                          Settings(seed=1, continue_attempts=2))
    assert len(eng.seen) == 1 and table.to_pylist()[0]["finish_reason"] == "length"
    assert "continue" in caplog.text and "scripted" in caplog.text


def test_continued_tokens_are_counted_without_the_servers_usage(scripted):
    """A server that reports no usage gives 0 completion tokens: the continuation is counted with the
    tokenizer, and the row is still one its budget stopped, not the model."""
    def answer(req):
        if req.messages[-1]["role"] == "assistant":
            return Result(text=" and ends here.", completion_tokens=0, finish_reason="stop")
        return Result(text="word " * 10 + "mid", completion_tokens=0, finish_reason="length")

    table, _ = direct([{"instruction": "write 100 words", "target": 100}], scripted(answer),
                      Settings(seed=1, continue_attempts=1))
    row = table.to_pylist()[0]
    assert row["continued_tokens"] == 3 and row["stopped_by"] == "max_tokens" and row["finish_reason"] == "stop"


def test_an_empty_continuation_ends_the_row(scripted):
    """The cut fell where the model ends: the continuation says so with no text; the row is finished, nothing
    appended, and it is not asked again."""
    def answer(req):
        if req.messages[-1]["role"] == "assistant":
            return Result(text="", completion_tokens=0, finish_reason="stop")
        return Result(text="A whole sentence.", completion_tokens=req.max_tokens, finish_reason="length")

    eng = scripted(answer)
    table, _ = direct([{"instruction": "write 100 words", "target": 100}], eng,
                      Settings(seed=1, continue_attempts=3))
    row = table.to_pylist()[0]
    assert len(eng.seen) == 2 and row["messages"][1]["content"] == "A whole sentence."
    assert row["finish_reason"] == "stop" and row["continued_tokens"] == 0 and row["stopped_by"] == "max_tokens"


def test_a_window_limited_row_is_not_continued_even_when_its_text_counts_short(scripted):
    """The window set this row's budget: whatever a re-count of its text says, it is not continued."""
    eng = scripted(lambda req: Result(text="word " * req.max_tokens, completion_tokens=req.max_tokens,
                                      finish_reason="length"))
    words = eng.count_tokens
    eng.count_tokens = lambda texts: [n // 3 for n in words(texts)]  # a tokenizer that counts a third
    table, _ = direct([{"instruction": "write 100000 words", "target": 100000}], eng,
                      Settings(seed=1, continue_attempts=2))
    assert len(eng.seen) == 1 and table.to_pylist()[0]["stopped_by"] == "window"


def test_a_result_made_of_cached_parts_stays_cached():
    from lendata.engines.base import Request
    from lendata.engines.chains import run_chains
    from lendata.methods.shared.continuation import continue_cut
    from tests.conftest import ScriptedEngine

    eng = ScriptedEngine(lambda req: Result(text=" end.", completion_tokens=2, finish_reason="stop", cached=True))
    req = Request(messages=({"role": "user", "content": "go"},), max_tokens=100)

    def chain(first):
        return (yield from continue_cut(req, first, eng, 1))

    cut = Result(text="a b", completion_tokens=3, finish_reason="length", cached=True)
    fresh = Result(text="a b", completion_tokens=3, finish_reason="length")
    assert [r.cached for r in run_chains(eng, [chain(cut), chain(fresh)])] == [True, False]


@pytest.mark.parametrize("bad", [-1, 9, True, 1.5])
def test_continue_attempts_out_of_range_are_refused(bad):
    from lendata.methods.agentwrite.plan_and_write import Settings as AgentWriteSettings

    for settings in (Settings, AgentWriteSettings):
        with pytest.raises(ValueError, match="continue_attempts"):
            settings(continue_attempts=bad)


def test_continuing_off_never_asks_the_engine_whether_it_could():
    """With 0 attempts the engine is not consulted (an openai engine would ask its server)."""
    from lendata.engines.base import Request
    from lendata.engines.chains import run_chains
    from lendata.methods.shared.continuation import continue_cut
    from tests.conftest import ScriptedEngine

    class Asking(ScriptedEngine):
        @property
        def continues_prefill(self):
            raise AssertionError("asked")

    eng = Asking()
    req = Request(messages=({"role": "user", "content": "go"},), max_tokens=10)
    cut = Result(text="a b", completion_tokens=10, finish_reason="length")

    def chain():
        return (yield from continue_cut(req, cut, eng, 0))

    assert run_chains(eng, [chain()]) == [cut] and eng.seen == []
