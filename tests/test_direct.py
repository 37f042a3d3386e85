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
