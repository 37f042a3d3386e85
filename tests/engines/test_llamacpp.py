import json

import pytest

from lendata.engines import Request, make_engine
from lendata.engines.llamacpp import LlamaCppEngine


def ask(text, **kw):
    return Request(messages=({"role": "user", "content": text},), **kw)


def test_generates_with_token_counts_and_is_seed_deterministic(llama):
    reqs = [ask("Write one sentence about cats.", max_tokens=30, seed=7, temperature=0.8)] * 2
    a, b = llama.generate(reqs)
    assert a.ok and a.text and a.text == b.text
    assert a.prompt_tokens > 5 and 0 < a.completion_tokens <= 30
    assert a.finish_reason in {"stop", "length"}


def test_min_tokens_suppresses_end_of_sequence(llama):
    short = llama.generate([ask("Say hi.", max_tokens=200, seed=1)])[0]
    forced = llama.generate([ask("Say hi.", max_tokens=200, min_tokens=150, seed=1)])[0]
    assert short.completion_tokens < 150  # the model stops early on its own...
    assert forced.completion_tokens >= 150  # ...and cannot while min_tokens is unmet


def test_json_schema_output_is_valid(llama):
    schema = {
        "type": "object",
        "properties": {"paragraphs": {"type": "array", "items": {
            "type": "object",
            "properties": {"main_point": {"type": "string", "maxLength": 80}, "words": {"type": "integer"}},
            "required": ["main_point", "words"]}, "minItems": 1, "maxItems": 5}},
        "required": ["paragraphs"],
    }
    res = llama.generate([ask("Plan an essay about rivers as paragraphs.", max_tokens=300, seed=3,
                              json_schema=schema)])[0]
    assert res.ok
    data = json.loads(res.text)
    assert data["paragraphs"] and all(isinstance(p["words"], int) for p in data["paragraphs"])


PLAN_SCHEMA = {
    "type": "object",
    "properties": {"paragraphs": {"type": "array", "items": {
        "type": "object",
        "properties": {"main_point": {"type": "string", "maxLength": 120}, "words": {"type": "integer"}},
        "required": ["main_point", "words"]}, "minItems": 2, "maxItems": 6}},
    "required": ["paragraphs"],
}


def test_grammar_is_checked_on_the_sampled_token_and_the_vocabulary_only_on_a_rejection(llama):
    """The stock chain runs the grammar over all 49k tokens for every token (plans at ~22 tok/s against ~50);
    the engine checks the sampled token first, as llama.cpp's own sampler does."""
    before = dict(llama.grammar_tokens)
    res = llama.generate([ask("Plan an essay about rivers as paragraphs.", max_tokens=300, seed=3,
                              temperature=0.8, json_schema=PLAN_SCHEMA)])[0]
    assert res.ok and json.loads(res.text)["paragraphs"]
    sampled = llama.grammar_tokens["sampled"] - before["sampled"]
    resampled = llama.grammar_tokens["resampled"] - before["resampled"]
    assert sampled in (res.completion_tokens, res.completion_tokens + 1)  # + the end-of-sequence token
    assert 0 < resampled < sampled / 2, (resampled, sampled)  # the rejection path ran, and seldom


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_grammar_output_is_the_stock_samplers_token_for_token(llama, penalty):
    """Differential against llama-cpp-python's own grammar-first chain: at temperature 0 both pick the most
    likely valid token at every step (after the same repetition penalty), so the texts must be identical."""
    from llama_cpp import Llama

    prompts = ["Plan an essay about rivers as paragraphs.", "Plan a story about a lighthouse keeper.",
               "Plan a report on solar power in 2030 with numbers."]
    reqs = [ask(p, max_tokens=200, temperature=0.0, repetition_penalty=penalty, json_schema=PLAN_SCHEMA)
            for p in prompts]
    before = dict(llama.grammar_tokens)
    ours = llama.generate(reqs)
    # ours went through the sampled-token-first path, rejections included
    assert llama.grammar_tokens["sampled"] > before["sampled"]
    assert llama.grammar_tokens["resampled"] > before["resampled"]
    llm = llama._llm
    llm._init_sampler = Llama._init_sampler.__get__(llm)  # the stock chain, on the same weights and context
    try:
        stock = llama.generate(reqs)
    finally:
        del llm._init_sampler
    assert [r.text for r in ours] == [r.text for r in stock]
    # greedy decoding can loop until max_tokens: only a finished plan must parse
    assert all(json.loads(r.text, strict=False)["paragraphs"] for r in ours if r.finish_reason == "stop")
    assert any(r.finish_reason == "stop" for r in ours)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_sampled_grammar_output_is_schema_valid_and_seed_deterministic(llama, seed):
    req = ask("Plan a long article about the history of bread.", max_tokens=400, seed=seed, temperature=1.0,
              json_schema=PLAN_SCHEMA)
    a, b = llama.generate([req, req])
    assert a.text == b.text
    if a.finish_reason == "stop":  # a plan cut at max_tokens is incomplete JSON, whatever the sampler
        paragraphs = json.loads(a.text)["paragraphs"]
        assert 2 <= len(paragraphs) <= 6
        assert all(isinstance(p["words"], int) and len(p["main_point"]) <= 120 for p in paragraphs)


def test_a_grammar_that_leaves_no_token_raises_instead_of_aborting(llama):
    """Logits processors that allow only end-of-sequence, under a grammar that needs an "x" first, leave no token.
    llama.cpp aborts the whole process when told to accept such a token; the sampler raises instead (the engine
    turns that into the row's error) and the engine goes on."""
    import numpy as np
    from llama_cpp import LlamaGrammar, LogitsProcessorList

    eos = llama._llm.token_eos()

    def only_eos(_ids, scores):
        keep = scores[eos]
        scores[:] = -np.inf
        scores[eos] = keep
        return scores

    grammar = LlamaGrammar.from_string('root ::= "x"', verbose=False)
    with pytest.raises(RuntimeError, match="no token"):
        llama._llm.create_completion("Say x.", max_tokens=5, grammar=grammar,
                                     logits_processor=LogitsProcessorList([only_eos]))
    assert llama.generate([ask("Say yes.", max_tokens=5)])[0].ok


def test_prompt_over_context_window_is_an_error_result_not_a_crash(llama):
    too_long = ask("word " * (llama.context_window + 100), max_tokens=10)
    fine = ask("Say yes.", max_tokens=5)
    bad, good = llama.generate([too_long, fine])
    assert bad.finish_reason == "error" and "context window" in bad.error
    assert good.ok


def test_an_adapter_that_cannot_be_applied_is_a_setup_error_and_the_engine_still_works(llama):
    from lendata.engines.base import AdapterError

    # raised, not a row's failure: every row naming it would fail, and a build would publish nothing
    with pytest.raises(AdapterError, match="LoRA adapter /nonexistent cannot be applied"):
        llama.generate([ask("hi", max_tokens=4, lora="/nonexistent")])
    assert llama.generate([ask("hi", max_tokens=4)])[0].ok


def test_engine_exposes_context_window_and_token_counts(llama):
    assert llama.context_window == 2048
    assert llama.count_tokens(["hello world", ""]) == [2, 0]


def test_make_engine_rejects_unknown_names():
    import pytest

    with pytest.raises(ValueError, match="llamacpp"):
        make_engine("gpt5")


def test_prefill_continues_the_assistant_message(llama):
    # greedy: continuing the first words of an answer must give back the rest of that same answer
    full = llama.generate([ask("Write two sentences about cats.", max_tokens=40, temperature=0.0)])[0].text
    words = full.split(" ")
    head = " ".join(words[: len(words) // 2])
    chat = ({"role": "user", "content": "Write two sentences about cats."}, {"role": "assistant", "content": head})
    cont = llama.generate([Request(messages=chat, max_tokens=40, temperature=0.0)])[0]
    assert cont.ok and cont.text.strip()
    assert (head + cont.text).startswith(full[: len(head) + 20])
    assert not cont.text.lstrip().startswith(head[:15])  # the continuation, not the prefix again


def test_seeded_request_does_not_depend_on_what_ran_before(llama):
    x = ask("Write one sentence about dogs.", max_tokens=30, seed=5, temperature=0.9)
    alone = llama.generate([x])[0]
    other = ask("Write one sentence about dogs and their owners.", max_tokens=20, seed=1)  # shares a prefix
    after = llama.generate([other, x])[1]
    assert alone.text == after.text


def test_two_gguf_files_of_one_name_never_share_cached_answers(tmp_path, monkeypatch):
    """Same file name, other weights (here: other metadata bytes): the cache key names the weights' content."""
    from lendata.engines import CachedEngine, ResponseCache
    from lendata.models import bundled_gguf_path

    monkeypatch.setenv("LENDATA_CACHE", str(tmp_path / "user-cache"))
    data = bundled_gguf_path().read_bytes()
    name = data.index(b"Smollm2 135M")
    for d, blob in (("a", data), ("b", data[:name] + b"Smollm3" + data[name + 7:])):
        (tmp_path / d).mkdir()
        (tmp_path / d / "model.gguf").write_bytes(blob)
    req = Request(messages=({"role": "user", "content": "Name a colour."},), max_tokens=8, seed=3)
    cache = tmp_path / "c.sqlite"
    first = LlamaCppEngine(model_path=str(tmp_path / "a" / "model.gguf"), n_ctx=512)
    second = LlamaCppEngine(model_path=str(tmp_path / "b" / "model.gguf"), n_ctx=512)
    try:
        assert first.model_id == second.model_id == "model.gguf"
        assert first.identity()["weights"] != second.identity()["weights"]
        a = CachedEngine(first, ResponseCache(cache))
        a.generate([req])
        b = CachedEngine(second, ResponseCache(cache))
        b.generate([req])
        assert (a.calls, b.calls, b.hits) == (1, 1, 0)
        # other output-changing options are other producers too
        assert first.identity() != {**first.identity(), "n_ctx": 2048}
    finally:
        first.close()
        second.close()


def test_context_window_max_opens_the_models_own_window_for_the_probe():
    """LongWrite-Ruler probes with the largest window the model has: for llama.cpp its trained context."""
    from lendata import recipes
    from lendata.engines import make_engine

    options = recipes.load("longwrite_ruler").run.engine_options
    assert options == {"context_window": "max"}
    engine = make_engine("llamacpp", **options)
    try:
        assert engine.context_window == int(engine._llm.metadata["llama.context_length"]) == 8192
    finally:
        engine.close()
    small = make_engine("llamacpp", context_window=1024)
    assert small.context_window == 1024
    small.close()


def test_an_option_the_engine_does_not_have_is_named_with_the_ones_it_has():
    import pytest

    from lendata.engines import make_engine

    with pytest.raises(ValueError, match=r"openai has no option 'n_ctx'.*base_url"):
        make_engine("openai", n_ctx=0)


def _repeats_within(ids, window):
    """(position, id) of every id that occurs again within `window` tokens after itself."""
    return [(i, t) for i, t in enumerate(ids) if t in ids[max(0, i - window):i]]


def test_repetition_penalty_counts_the_last_window_of_written_tokens_not_the_prompt(llama):
    """The penalty's rule, the same on every engine (Request.repetition_window; llama.cpp's penalty_last_n):
    it counts the ids among the last `repetition_window` tokens this call wrote. With a prohibitive penalty and
    greedy decoding no id comes back within the window, but the prompt's ids (never penalized) still appear."""
    prompt = "Repeat this sentence: the cat and the dog sat in the sun, and the sun was warm."
    prompt_ids = set(llama._llm.tokenize(prompt.encode(), add_bos=False, special=False))
    for window in (4, 12):
        res = llama.generate([ask(prompt, max_tokens=60, min_tokens=60, temperature=0.0, repetition_penalty=1e4,
                                  repetition_window=window)])[0]
        ids = llama._llm.tokenize(res.text.encode(), add_bos=False, special=False)
        assert res.ok and len(ids) > 2 * window
        assert _repeats_within(ids, window) == [], (window, res.text)
        assert prompt_ids & set(ids), res.text  # the prompt is not penalized
    # the window is what the engine applied: a wider one than the text's repeats changes the text
    narrow, wide = llama.generate([ask(prompt, max_tokens=60, min_tokens=60, temperature=0.0, repetition_penalty=1e4,
                                       repetition_window=w) for w in (4, 64)])
    assert narrow.text != wide.text


def test_the_engines_own_identity_keys_a_penalized_request_by_the_window_it_applies(llama):
    """Through the engine's real identity (not a made-up producer): another window is another key, the default
    window keeps the key of the code before the window (llama.cpp's window was always 64), no penalty: no
    window in the key."""
    from lendata.engines.base import PENALTY_RULE, request_key
    from lendata.engines.identity import producer

    ident = producer(llama)

    def key(**kw):
        return request_key(ident, ask("Write about rivers.", max_tokens=20, seed=1, **kw))

    assert key(repetition_penalty=1.2, repetition_window=8) != key(repetition_penalty=1.2)
    before = {k: v for k, v in ident.items() if k != PENALTY_RULE}  # the identity's shape before the rule
    assert key(repetition_penalty=1.2) == request_key(before, ask("Write about rivers.", max_tokens=20, seed=1,
                                                                  repetition_penalty=1.2))
    assert key(repetition_window=8) == key()
