"""The vLLM engine, for real: run by `make test-vllm` in a venv with the vLLM CPU build.

The default suite (`make test`) has no vLLM and skips these with the reason.
"""

import dataclasses
import importlib.util
import json
import os

import pytest

from lendata.engines import Request

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed here; `make test-vllm` runs these with the vLLM CPU build",
    ),
]


def ask(text, **kw):
    return Request(messages=({"role": "user", "content": text},), **kw)


@pytest.fixture(scope="module")
def model_dir():
    path = os.environ.get("LENDATA_VLLM_MODEL")
    if not path or not os.path.isdir(path):
        pytest.skip("LENDATA_VLLM_MODEL must point at a converted checkpoint (`lendata convert-model DIR`)")
    return path


@pytest.fixture(scope="module")
def adapter(model_dir, tmp_path_factory):
    """A real LoRA adapter (r=8 on q_proj/v_proj) with random weights, so it visibly changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    lora.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def engine(model_dir):
    from lendata.engines.vllm_offline import VLLMEngine

    eng = VLLMEngine(model=model_dir, max_model_len=2048, enable_lora=True, max_lora_rank=8)
    yield eng
    eng.close()


def test_batch_with_per_row_min_max_tokens_seed_and_stop(engine):
    reqs = [
        ask("Say hi.", max_tokens=64, min_tokens=50, seed=1, temperature=0.8),
        ask("Say hi.", max_tokens=64, min_tokens=50, seed=1, temperature=0.8),
        ask("Write about the sea.", max_tokens=12, seed=2),
        ask("Count: one, two, three, four, five, six", max_tokens=64, seed=3, temperature=0.0, stop=(",",)),
    ]
    seen = []
    res = engine.generate(reqs, on_result=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3] and all(r.ok for r in res)
    assert res[0].completion_tokens >= 50 and res[0].text == res[1].text  # min_tokens and seed hold
    assert res[2].completion_tokens == 12 and res[2].finish_reason == "length"
    assert "," not in res[3].text and res[3].finish_reason == "stop"
    assert res[0].prompt_tokens > 5


def test_guided_json(engine):
    schema = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40},
                                               "words": {"type": "integer"}}, "required": ["title", "words"]}
    res = engine.generate([ask("Plan one paragraph about rivers as JSON.", max_tokens=120, seed=5, json_schema=schema)])
    data = json.loads(res[0].text, strict=False)
    assert isinstance(data["title"], str) and isinstance(data["words"], int)


def test_overlong_prompt_is_a_row_error_and_the_rest_of_the_batch_runs(engine):
    res = engine.generate([ask("word " * 3000, max_tokens=8), ask("Say yes.", max_tokens=8, seed=1)])
    assert res[0].finish_reason == "error" and "context window" in res[0].error
    assert res[1].ok


def test_lora_adapter_per_request(engine, adapter):
    base, tuned = engine.generate([
        ask("Describe a cat.", max_tokens=24, temperature=0.0, seed=1),
        ask("Describe a cat.", max_tokens=24, temperature=0.0, seed=1, lora=adapter),
    ])
    assert base.ok and tuned.ok and base.text != tuned.text


def test_count_tokens_matches_the_bundled_tokenizer(engine):
    from lendata.lengths import count_tokens

    texts = ["The Roman Empire was vast.", "中国旅游指南"]
    assert engine.count_tokens(texts) == count_tokens(texts)
    # the manifest names the checkpoint's own tokenizer file by content
    assert engine.tokenizer.startswith("file:tokenizer.json@sha256:")


def test_max_tokens_past_the_window_is_capped_not_fatal(engine):
    res = engine.generate([ask("word " * 1900, max_tokens=500, seed=1), ask("Say yes.", max_tokens=8, seed=1)])
    assert res[0].ok and res[0].prompt_tokens + res[0].completion_tokens <= engine.context_window
    assert res[1].ok


def test_prefill_continues_the_assistant_message(engine):
    full = engine.generate([ask("Write two sentences about cats.", max_tokens=40, temperature=0.0)])[0].text
    words = full.split(" ")
    head = " ".join(words[: len(words) // 2])
    chat = ({"role": "user", "content": "Write two sentences about cats."}, {"role": "assistant", "content": head})
    fresh, cont = engine.generate([ask("Say hi.", max_tokens=5), Request(messages=chat, max_tokens=40,
                                                                             temperature=0.0)])
    assert fresh.ok and cont.ok and cont.text.strip()
    assert (head + cont.text).startswith(full[: len(head) + 20])


def test_direct_continues_a_cut_row_through_the_chains(engine):
    """`direct` on vLLM: a row cut at its budget is continued through continuous batching (a chain per row),
    counted apart, and the row stays one its budget stopped."""
    from lendata.methods.direct.generate import Settings, direct

    rows = [{"instruction": f"Write a 20-word story about a {t}.", "target": 20} for t in ("fox", "ship", "clock")]
    table, failed = direct(rows, engine, Settings(seed=5, min_ratio=1.0, max_ratio=1.0, temperature=0.7,
                                                  continue_attempts=1))
    got = table.to_pylist()
    assert not failed and len(got) == 3
    assert engine.continues_prefill and any(r["continued_tokens"] > 0 for r in got)
    for r in got:
        if r["continued_tokens"]:
            assert r["stopped_by"] == "max_tokens" and r["response_tokens"] > r["max_tokens"] - 8


def test_self_lengthen_iteration_two_runs_on_the_built_in_trainer_s_adapters(engine, model_dir, tmp_path):
    """Iteration 1 on the base model -> the built-in LoRA trainer (peft, this venv's transformers) trains the
    Generator on gen_sft and the Extender on ext_sft -> iteration 2's requests run on those adapters in vLLM."""
    from pathlib import Path

    from lendata.methods.self_lengthen import sets
    from lendata.methods.self_lengthen import steps as sl
    from lendata.methods.self_lengthen.trainer import train_builtin
    from lendata.training.lora import LoraSettings

    seeds_file = Path(__file__).resolve().parents[2] / "pipelines/data/self_lengthen_seeds.jsonl"
    seeds = [r for r in map(json.loads, seeds_file.read_text().splitlines()) if r["language"] == "en"]
    s = sl.Settings(n=2, samples=1, max_tokens=200, micro_rounds=2, generate_attempts=3, extend_retries=2,
                    drop_short=False, judge=False)
    ins = sl.self_instruct(seeds, engine, s, 1)[0]
    responses, _ = sl.generate_and_extend(ins, engine, engine, s)
    usable = [r for r in responses if r.initial]
    assert usable
    for r in usable:  # the adapters' route is under test here, not the 135M model's extensions
        r.extended = r.extended or r.initial
    gen_sft, ext_sft = sets.sft_tables(usable, s)
    settings = LoraSettings(epochs=1, max_length=256, learning_rate=5e-3)
    adapters = train_builtin(settings, tmp_path, gen_sft, ext_sft, {}, {"generator": model_dir,
                                                                        "extender": model_dir})
    assert adapters["generator"] != adapters["extender"]
    assert all((Path(a) / "adapter_model.safetensors").is_file() for a in adapters.values())
    ins2 = sl.self_instruct(seeds, engine, s, 2)[0]
    assert ins2 and all(r["iteration"] == 2 for r in ins2)
    with_adapter = sl.generate(ins2, engine, s, adapters["generator"])
    base = sl.generate(ins2, engine, s)
    assert not any("LoRA" in (r.failed or "") or "error" in (r.failed or "") for r in with_adapter)
    assert [(r.initial, r.failed) for r in with_adapter] != [(r.initial, r.failed) for r in base]  # it is used
    extended = sl.extend([r for r in with_adapter if r.failed is None] or usable[:1], engine, s,
                         adapters["extender"])
    assert extended and not any("LoRA" in (r.failed or "") for r in extended)


def test_each_row_reaches_the_cache_the_moment_it_finishes(engine, tmp_path):
    """A kill loses only the rows still running: a short row is handed on (and cached) before a long row that
    came first in the batch has finished."""
    from lendata.engines import CachedEngine, ResponseCache

    cached = CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite"))
    order = []
    reqs = [ask("Write a story.", max_tokens=160, min_tokens=160, seed=1),
            *[ask(f"Name a fruit ({i}).", max_tokens=4, seed=i) for i in range(3)]]
    cached.generate(reqs, on_result=lambda i, r: order.append((i, len(cached.cache))))
    assert [i for i, _ in order] == [1, 2, 3, 0]
    assert [stored for _, stored in order] == [1, 2, 3, 4]  # stored before the caller hears of it


def test_chains_batch_continuously(engine):
    """A chain's next request joins the running batch when its previous one finishes: a chain of three short
    calls is done while a long call that started with it still runs (in rounds it would wait for it).

    The texts are not compared with a plain batch's: vLLM's CPU kernels are not batch-invariant (measured: a
    seeded request alone and the same request beside others diverge after 44 characters; the same batch twice
    gives the same text), so a text depends on what else was running, in rounds as in chains."""
    from lendata.engines.chains import in_rounds, run_chains

    long = ask("Write a story about a ship.", max_tokens=200, min_tokens=200, seed=7, temperature=0.8)
    shorts = [ask(f"Name a colour ({k}).", max_tokens=6, min_tokens=6, seed=k, temperature=0.8) for k in range(3)]
    finished = []

    def chain(name, reqs):
        out = []
        for r in reqs:
            res = yield r
            assert res.ok and res.completion_tokens == r.max_tokens
            out.append(res.text)
        finished.append(name)
        return out

    values = run_chains(engine, [chain("long", [long]), chain("shorts", shorts)])
    assert finished == ["shorts", "long"] and [len(v) for v in values] == [1, 3]
    finished.clear()
    in_rounds(engine, [chain("long", [long]), chain("shorts", shorts)])
    assert finished == ["long", "shorts"]  # the control: rounds make the short chain wait
    engine.continuous_batching = False  # the engine option that turns it off: rounds again
    try:
        finished.clear()
        run_chains(engine, [chain("long", [long]), chain("shorts", shorts)])
        assert finished == ["long", "shorts"]
    finally:
        engine.continuous_batching = True


def test_a_chain_that_fails_mid_run_leaves_nothing_running_and_loses_no_finished_row(engine, tmp_path):
    """A method's bug (or a kill) in one chain: the error reaches the caller, the other chains' requests are
    aborted (the engine's next call does not decode them for nothing), every chain is closed, and a row that
    finished is in the cache."""
    from lendata.engines import CachedEngine, ResponseCache
    from lendata.engines.chains import run_chains

    closed = []

    def chain(name, reqs, fail_after=None):
        try:
            for k, r in enumerate(reqs):
                yield r
                if k == fail_after:
                    raise ValueError("a bug in a method")
        finally:
            closed.append(name)

    long = ask("Write a long story about a ship.", max_tokens=400, min_tokens=400, seed=7)
    short = ask("Name a colour.", max_tokens=4, seed=1)
    cached = CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite"))
    with pytest.raises(ValueError, match="a bug"):
        run_chains(cached, [chain("long", [long]), chain("short", [short], fail_after=0)])
    assert not engine._llm.llm_engine.has_unfinished_requests()
    assert sorted(closed) == ["long", "short"]
    assert len(cached.cache) == 1  # the short row finished before its chain failed: stored
    # a prompt too long for the window inside a chain: that chain gets a row error and goes on
    got = run_chains(engine, [chain("too long", [ask("word " * 3000, max_tokens=8), short])])
    assert got == [None] and engine.generate([short])[0].ok


def test_a_chain_that_calls_the_engine_it_runs_on_is_a_clear_error(engine):
    """A nested drive on the same LLM would abort the outer drive's requests and eat their outputs."""
    from lendata.engines.chains import run_chains

    def chain():
        yield ask("Say hi.", max_tokens=4, seed=1)
        engine.generate([ask("Say yes.", max_tokens=4, seed=2)])

    with pytest.raises(RuntimeError, match="already running chains"):
        run_chains(engine, [chain()])
    assert engine.generate([ask("Say yes.", max_tokens=4, seed=2)])[0].ok  # and the engine goes on


def test_requests_left_in_the_engine_by_an_earlier_call_are_aborted(engine):
    """A kill inside enqueue_chat can leave a request vLLM added but whose id never came back: the next call
    aborts it instead of decoding it beside its own rows."""
    engine._llm.enqueue_chat([[{"role": "user", "content": "Write a long story."}]],
                             [engine._params(ask("x", max_tokens=400, min_tokens=400), 10)], use_tqdm=False)
    assert engine._llm.llm_engine.has_unfinished_requests()
    res = engine.generate([ask("Say yes.", max_tokens=4, seed=1)])
    assert res[0].ok and not engine._llm.llm_engine.has_unfinished_requests()


def test_the_cache_key_names_the_weights_not_the_folder(engine, model_dir):
    ident = engine.identity()
    assert ident["weights"] != model_dir and len(ident["weights"]) == 64
    assert engine.model_id == os.path.basename(model_dir.rstrip("/"))  # no local path in the data


# --- no_repeat_ngram and end_at_sentence inside vLLM (engines/vllm_decoding.py) -------------------------

REPEAT = "Repeat this line forever: the cat sat on the mat. the cat sat on the mat. the cat sat on the mat."


@pytest.fixture(scope="module")
def keys(model_dir):
    """The model's word keys, read independently of the engine's processor (from its tokenizer file)."""
    from tokenizers import Tokenizer

    from lendata.engines.no_repeat import vocabulary_bytes, word_keys

    return word_keys(vocabulary_bytes(Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))))[0]


def _run(engine, req):
    """`req` through the engine, then once more straight through vLLM (same parameters, a batch of one as
    well, so the same text) for the token ids the engine does not return."""
    res = engine.generate([req])[0]
    n = engine._prompt_lengths([req])[0]
    out = engine._llm.chat([list(req.messages)], [engine._params(req, n)], use_tqdm=False,
                           add_generation_prompt=req.prefill is None, continue_final_message=req.prefill is not None)
    assert out[0].outputs[0].text == res.text  # the ids below are this result's
    return res, list(out[0].prompt_token_ids), list(out[0].outputs[0].token_ids)


def _grams(units, n):
    return [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]


def test_no_repeat_ngram_never_repeats_an_ngram_of_prompt_or_output(engine, keys):
    from lendata.engines.base import enforces

    n = 4
    assert enforces(engine, "no_repeat_ngram") and enforces(engine, "end_at_sentence")
    req = ask(REPEAT, max_tokens=80, min_tokens=60, temperature=0.7, seed=3, no_repeat_ngram=n)
    res, prompt, output = _run(engine, req)
    assert res.ok and res.completion_tokens >= 60
    units = [(int(keys[t]), False) for t in prompt if keys[t] >= 0]
    units += [(int(keys[t]), True) for t in output if t < len(keys) and keys[t] >= 0]
    seen: set[tuple[int, ...]] = set()
    for end in range(n, len(units) + 1):
        gram = tuple(k for k, _ in units[end - n:end])
        if units[end - 1][1]:  # completed by a sampled token: never one seen before
            assert gram not in seen, f"repeated {gram}"
        seen.add(gram)
    # the same request without the ban repeats itself: the test is not vacuous
    _, _, free = _run(engine, dataclasses.replace(req, no_repeat_ngram=0))
    grams = _grams([int(keys[t]) for t in free if t < len(keys) and keys[t] >= 0], n)
    assert len(set(grams)) < len(grams)


def test_output_scope_with_a_prefill_bans_the_head_and_the_answer_but_not_the_prompt(engine, keys):
    """Self-Lengthen's round B: a continuation may not repeat its prefilled head nor itself, but may copy the
    user's text (the extender's whole job)."""
    n = 4
    tok = engine._llm.get_tokenizer()
    head = "The cat sat on the mat. The dog sat on the rug. The cat sat on the mat again, and"
    chat = ({"role": "user", "content": "Write about a cat and a dog."}, {"role": "assistant", "content": head})
    req = Request(messages=chat, max_tokens=80, min_tokens=60, temperature=0.7, seed=3, no_repeat_ngram=n,
                  no_repeat_scope="output")
    head_units = [int(keys[t]) for t in tok.encode(head, add_special_tokens=False) if keys[t] >= 0]

    def continued(r):
        res, _, output = _run(engine, r)
        assert res.ok and res.completion_tokens >= 60
        return head_units + [int(keys[t]) for t in output if t < len(keys) and keys[t] >= 0]

    units = continued(req)
    seen = set(_grams(head_units, n))
    for end in range(max(n, len(head_units) + 1), len(units) + 1):
        gram = tuple(units[end - n:end])
        assert gram not in seen, f"the continuation repeated {gram}"
        seen.add(gram)
    # not vacuous: unbanned, the same continuation completes an n-gram of the head or of itself again (only
    # grams completed by generated tokens count: the head repeats itself already)
    free = continued(dataclasses.replace(req, no_repeat_ngram=0))
    grams = _grams(free, n)
    first_out = len(head_units) - n + 1  # the first gram that ends on a generated token
    assert any(grams[k] in grams[:k] for k in range(max(0, first_out), len(grams)))
    # the user's text is not banned: an answer begun with "Sure:" copies one of its n-grams
    copy = Request(messages=({"role": "user", "content": REPEAT}, {"role": "assistant", "content": "Sure:"}),
                   max_tokens=60, min_tokens=40, temperature=0.7, seed=3, no_repeat_ngram=n, no_repeat_scope="output")
    _, _, output = _run(engine, copy)
    user = [int(keys[t]) for t in tok.encode(REPEAT, add_special_tokens=False) if keys[t] >= 0]
    out = [int(keys[t]) for t in output if t < len(keys) and keys[t] >= 0]
    assert set(_grams(user, n)) & set(_grams(out, n))


def test_end_at_sentence_stops_on_a_whole_sentence_after_the_minimum(engine):
    from lendata.engines.sentence_end import ends_sentence

    req = ask("Write a long essay about the sea.", max_tokens=300, min_tokens=40, temperature=0.7, seed=11,
              end_at_sentence=True)
    res = engine.generate([req])[0]
    assert res.finish_reason == "stop" and 40 <= res.completion_tokens < 300
    assert ends_sentence(res.text.rstrip())
    plain = engine.generate([dataclasses.replace(req, end_at_sentence=False)])[0]
    assert plain.text.startswith(res.text.rstrip()[:-1])  # the same text up to where it was ended
    assert plain.completion_tokens > res.completion_tokens  # it did not end there by itself


def test_rows_with_and_without_the_rules_share_a_batch_and_only_the_asking_rows_change(engine):
    # every row decodes exactly 60 tokens, so both batches have the same shape at every step (vLLM's CPU build
    # is not batch-invariant: a neighbour that ends early could change a row's last bits by itself)
    plain = ask(REPEAT, max_tokens=60, min_tokens=60, temperature=0.7, seed=3)
    banned = dataclasses.replace(plain, no_repeat_ngram=4)
    with_ban = engine.generate([banned, plain])
    without = engine.generate([plain, plain])
    assert all(r.ok for r in with_ban + without)
    assert with_ban[0].text != without[0].text  # the asking row changed
    assert with_ban[1].text == without[1].text  # its neighbour decoded as if the rule did not exist


def test_agentwrite_on_vllm_keeps_the_recipe_s_decoding_options(engine, caplog):
    """The shipped recipe asks for both rules; on vLLM they now hold instead of being dropped with a warning."""
    from lendata.methods.agentwrite import plan_and_write as aw

    s = aw.Settings(min_paragraph=60, max_paragraph=90, no_repeat_ngram=8, end_at_sentence=True, plan_attempts=1)
    with caplog.at_level("WARNING", logger="lendata.agentwrite"):
        rows, _, samples = aw.agentwrite([{"instruction": "Write a 200-word story about a lighthouse.",
                                           "source": ""}], engine, s)
    assert "cannot enforce" not in caplog.text
    assert samples[0].step_words and sum(samples[0].step_words) > 50


def test_agentwrite_turns_layout_steps_are_served_from_the_prefix_cache(engine):
    """With `step_layout: turns` each step's prompt is the previous step's prompt and the paragraph vLLM just
    decoded: vLLM serves it from its prefix cache, the paragraph's KV from the decode itself, up to the last
    whole KV block (and a few tokens where the kept paragraph differs from what was decoded). The reference's
    layout evaluates the new paragraph and the closing ask again at every step."""
    from lendata.methods.agentwrite import plan_and_write as aw

    block = engine._llm.llm_engine.vllm_config.cache_config.block_size
    rows = [{"instruction": f"Write a 240-word article about {t}.", "source": ""} for t in ("rivers", "bees")]
    shares, reusable, served = {}, 0, 0
    for layout in ("single", "turns"):
        s = aw.Settings(min_paragraph=60, max_paragraph=80, no_repeat_ngram=8, end_at_sentence=True,
                        plan_attempts=1, step_attempts=1, continue_attempts=0, write_prompt="concise",
                        step_layout=layout)
        calls: dict[int, list] = {}

        def note(i, res, calls=calls):
            calls.setdefault(i, []).append(res)

        engine._llm.reset_prefix_cache()
        _, _, samples = aw.agentwrite(rows, engine, s, on_result=note)
        assert all(len(x.paragraphs) >= 3 for x in samples), [x.step_words for x in samples]
        writes = {i: [r for r in rs if not r.text.lstrip().startswith("{")] for i, rs in calls.items()}  # no plans
        assert all(r.prompt_cached_tokens is not None for rs in calls.values() for r in rs)  # vLLM says
        every = [r for rs in writes.values() for r in rs]
        shares[layout] = sum(r.prompt_cached_tokens for r in every) / sum(r.prompt_tokens for r in every)
        if layout == "turns":  # each later step reused the previous step's prompt and what it decoded
            beyond_prompt = decoded = 0
            for rs in writes.values():
                for before, now in zip(rs, rs[1:], strict=False):
                    reusable += before.prompt_tokens + before.completion_tokens
                    served += now.prompt_cached_tokens
                    assert now.prompt_cached_tokens <= before.prompt_tokens + before.completion_tokens
                    # what was served past the previous prompt's whole blocks can only be the decoded paragraph
                    beyond_prompt += now.prompt_cached_tokens - before.prompt_tokens // block * block
                    decoded += before.completion_tokens
            steps_after_first = sum(len(rs) - 1 for rs in writes.values())
            assert served >= reusable - steps_after_first * (block + 24), (served, reusable, block)
            # block by block the decoded paragraphs came from the cache too (on average a paragraph's tokens; the
            # reference layout serves none of them)
            assert beyond_prompt >= decoded // 4, (beyond_prompt, decoded, block)
    assert shares["turns"] >= 0.5 and shares["turns"] > shares["single"] + 0.15, shares


def test_the_processor_is_registered_only_where_vllm_runs_its_interface(monkeypatch):
    """vLLM's V2 model runner (its default wherever Triton runs: CUDA) rejects a V1-interface processor at start
    and speculative decoding takes none: there the engine must start without it and claim neither option."""
    import vllm.envs
    import vllm.triton_utils

    from lendata.engines.vllm_offline import _decoding_unsupported

    vllm.envs.disable_envs_cache()  # a started engine caches the environment; this test changes it

    assert _decoding_unsupported({}) is None  # this CPU build: no Triton backend, the V1 runner
    assert "speculative" in _decoding_unsupported({"speculative_config": {"method": "ngram"}})
    monkeypatch.setattr(vllm.triton_utils, "HAS_TRITON", True)
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    assert "V2 model runner" in _decoding_unsupported({})
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    assert _decoding_unsupported({}) is None
    assert "V2" in _decoding_unsupported({"watermark_config": {}})
    assert _decoding_unsupported({"speculative_config": None, "watermark_config": None}) is None
    monkeypatch.setattr(vllm.triton_utils, "HAS_TRITON", False)  # asked for by name, V2 runs without Triton too
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    assert "V2 model runner" in _decoding_unsupported({})


def test_an_engine_started_without_the_processor_refuses_the_rules_instead_of_ignoring_them(engine, monkeypatch):
    """Under vLLM's V2 runner (or without a fast tokenizer) the engine claims neither option; a request that asks
    anyway must fail loudly, not come back decoded without the rule."""
    from lendata.engines.base import UnsupportedOption

    monkeypatch.setattr(engine, "decoding_options", frozenset())
    monkeypatch.setattr(engine, "_why_not", "the test says so")
    with pytest.raises(UnsupportedOption, match=r"no_repeat_ngram=4 here \(the test says so\)"):
        engine.generate([ask("Say hi.", max_tokens=8, no_repeat_ngram=4)])
    monkeypatch.setattr(engine, "decoding_options", frozenset({"no_repeat_ngram"}))  # a model without an eos
    with pytest.raises(UnsupportedOption, match="end_at_sentence"):
        engine.generate([ask("Say hi.", max_tokens=8, min_tokens=2, no_repeat_ngram=4, end_at_sentence=True)])
    assert engine.generate([ask("Say hi.", max_tokens=8, seed=1)])[0].ok  # and it goes on serving


def _vllm_filtered(logits, temperature, top_k, top_p, penalty, seen):
    """What vLLM's own sampler ops keep of a row, and the penalized values (the reference for lendata's)."""
    import torch
    from vllm._custom_ops import apply_repetition_penalties_torch
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    x = logits.clone()[None]
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, seen] = True
    apply_repetition_penalties_torch(x, mask, torch.zeros_like(mask), torch.tensor([penalty]))
    z = x / torch.tensor([[temperature]])
    k = torch.tensor([top_k]) if top_k else None
    kept = torch.isfinite(apply_top_k_top_p_pytorch(z, k, torch.tensor([top_p]) if top_p < 1 else None))[0]
    return x[0], kept


def test_top_k_top_p_and_repetition_penalty_in_the_processor_keep_what_vllm_s_sampler_keeps():
    """Differential against vLLM's own ops (its CPU sampler sorts the whole vocabulary for top-p each step;
    lendata's processor cuts the same nucleus from a top-k): over peaked and flat rows, bf16-valued rows (what
    the engine's default dtype hands the sampler: many equal logits), masked entries, top-k ties and every
    sampling setting lendata's methods use, the same number of tokens survives, with the same values. Two
    differences are allowed, both at the nucleus's edge: members of a group of equal logits swapped (vLLM's
    unstable sort leaves their order open), and a token whose mass before it is top_p to within 1e-4 (computed
    exactly, in float64), where vLLM's float32 sum of up to 49,152 masses from the bottom rounds to the other side
    (lendata's sum is float64; a float32 one erred by 7e-5 on a flat row)."""
    import random

    import torch

    from lendata.engines.vllm_decoding import filter_row, penalize

    rnd = random.Random(0)
    checked = swaps = edges = 0
    for trial in range(600):
        vocab = rnd.choice([50, 1000, 49152])
        g = torch.Generator().manual_seed(trial)
        logits = torch.randn(vocab, generator=g) * rnd.choice([0.3, 1.0, 3.0, 8.0, 20.0])
        if trial % 2 == 0:  # bf16-valued, as the engine's default dtype gives them
            logits = logits.to(torch.bfloat16).float()
        if trial % 5 == 0:  # a grammar's mask
            logits[torch.rand(vocab, generator=g) < 0.7] = -float("inf")
        if trial % 7 == 0:  # ties at the k-th value
            logits[: vocab // 4] = logits[0]
        temperature = rnd.choice([0.3, 0.7, 1.0, 1.3])
        top_p = rnd.choice([0.5, 0.8, 0.95, 0.99, 1.0])
        top_k = rnd.choice([0, 0, 1, 20, 200, 600, vocab + 5])
        penalty = rnd.choice([1.0, 1.1, 1.2, 2.0])
        seen = sorted(rnd.sample(range(vocab), rnd.randrange(0, min(vocab, 400))))
        ref_values, ref_kept = _vllm_filtered(logits, temperature, min(top_k, vocab), top_p, penalty, seen)
        ours = logits.clone()
        penalize(ours, torch.tensor(seen, dtype=torch.long), penalty)
        scaled = ours.double() / temperature
        if 0 < top_k < int(torch.isfinite(scaled).sum()):  # the candidates vLLM renormalizes over
            scaled[scaled < torch.topk(scaled, top_k).values[-1]] = -float("inf")
        exact = torch.softmax(scaled, 0)
        ours = filter_row(ours, temperature, top_k, top_p)
        kept = torch.isfinite(ours)
        both = kept & ref_kept
        assert torch.equal(ours[both], ref_values[both]), trial  # bit for bit, penalty included
        only_ours, only_ref = ours[kept & ~ref_kept], ref_values[ref_kept & ~kept]
        if len(only_ours) and len(only_ref) and torch.equal(only_ours.sort().values, only_ref.sort().values):
            assert int(kept.sum()) == int(ref_kept.sum())
            swaps += 1
            continue
        for token in (kept != ref_kept).nonzero().squeeze(1).tolist():
            before = float(exact[exact > exact[token]].sum())
            assert abs(before - top_p) < 1e-4, (trial, token, before, top_p, int(kept.sum()), int(ref_kept.sum()))
            edges += 1
        checked += int(top_p < 1 and 1 < int(ref_kept.sum()) < int(torch.isfinite(logits).sum()))
    assert checked > 150  # most trials cut a real nucleus (neither everything nor one token)
    # edges: vLLM's float32 error on flat rows (15 of 600 rows here), one token of thousands kept, the least likely
    assert edges <= 30 and swaps < 150, (edges, swaps)


def test_sampling_moves_to_the_processor_only_where_it_has_work():
    """What vLLM's sampler still does and what the processor does, per kind of row (vLLM's sampler skips top-p
    for the whole batch only when no row asks for it)."""
    from vllm import SamplingParams

    from lendata.engines.vllm_decoding import LendataDecoding, decoding_args, vllm_sampling_params

    def routed(**kw):
        req = ask("x", **kw)
        return vllm_sampling_params(req, True), (decoding_args(req, 0, True) or {}).get("lendata", {})

    own, opts = routed(temperature=0.7, top_p=0.95, repetition_penalty=1.2)
    assert own == {"top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    assert opts["sampling"] == {"top_p": 0.95, "top_k": 0, "repetition_penalty": 1.2, "repetition_window": 64}
    own, opts = routed(temperature=0.7, top_p=0.8, top_k=20)  # vLLM cuts top-p within the top-k: both move
    assert own["top_k"] == 0 and opts["sampling"]["top_k"] == 20
    own, opts = routed(temperature=0.7, top_p=1.0, top_k=20)  # top-k alone is cheap in vLLM: it stays
    assert own == {"top_p": 1.0, "top_k": 20, "repetition_penalty": 1.0} and not opts
    own, opts = routed(temperature=0.7, top_p=1.0, top_k=20, repetition_penalty=1.1)
    assert own["top_k"] == 20 and opts["sampling"]["top_k"] == 0  # the penalty moves, top-k stays
    own, opts = routed(temperature=0.0, top_p=0.9, repetition_penalty=1.3)  # greedy: top-p means nothing
    assert own == {"top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    assert opts["sampling"]["repetition_penalty"] == 1.3
    own, opts = routed(temperature=0.005, top_p=0.9)  # vLLM samples at 0.01 here, not greedily: top-p holds
    assert own["top_p"] == 1.0 and opts["sampling"]["top_p"] == 0.9
    assert vllm_sampling_params(ask("x", top_p=0.9), False)["top_p"] == 0.9  # off: vLLM's own sampler
    assert decoding_args(ask("x", top_p=0.9), 0, False) is None
    # the penalty moves wherever the processor runs (vLLM's counts the prompt and all output: no window) ...
    penalized = ask("x", top_p=0.9, top_k=20, repetition_penalty=1.2, repetition_window=16)
    assert vllm_sampling_params(penalized, False) == {"top_p": 0.9, "top_k": 20, "repetition_penalty": 1.0}
    assert decoding_args(penalized, 0, False)["lendata"]["sampling"] == {
        "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.2, "repetition_window": 16}
    # ... and stays with vLLM where the processor cannot run (V2 runner, speculative decoding, TPUs)
    assert vllm_sampling_params(penalized, False, False)["repetition_penalty"] == 1.2
    assert decoding_args(penalized, 0, False, False) is None

    bad = [{"top_p": 0.9, "top_k": None, "repetition_penalty": 1.1},
           {"top_p": 0.9, "top_k": 0, "repetition_penalty": float("inf")},
           {"top_p": 0.0, "top_k": 0, "repetition_penalty": 1.1},
           {"top_p": 0.9, "top_k": 2.5, "repetition_penalty": 1.1},
           {"top_p": 0.9, "top_k": 0, "repetition_penalty": 1.1, "repetition_window": 0}, "sampling"]
    for sampling in bad:
        with pytest.raises(ValueError, match="sampling"):
            LendataDecoding.validate_params(SamplingParams(extra_args={"lendata": {"sampling": sampling}}))


def test_a_row_reads_the_temperature_vllm_settled_on():
    """vLLM raises a temperature under 0.01 to 0.01 and samples; a row the processor took for greedy would skip
    its top-p cut while vLLM samples without one."""
    import torch
    from vllm import SamplingParams

    from lendata.engines.vllm_decoding import LendataDecoding

    params = SamplingParams(temperature=1e-6, top_p=1.0, extra_args={"lendata": {
        "sampling": {"top_p": 0.4, "top_k": 0, "repetition_penalty": 1.0}}})
    row = LendataDecoding.new_req_logits_processor(object.__new__(LendataDecoding), params)
    logits = torch.tensor([5.0, 5.0, 0.0, -1.0])
    kept = torch.isfinite(row([1], [], logits.clone()))
    assert kept.tolist() == [True, False, False, False] or kept.tolist() == [False, True, False, False]


def test_the_processor_is_registered_once_and_sampling_needs_it(model_dir, monkeypatch, caplog):
    """Listing lendata's processor yourself must not register it twice (the penalty would apply twice); an engine
    without the processor samples with vLLM's own sampler, with a warning only when it was asked for."""
    import lendata.engines.vllm_offline as vo

    seen = {}

    class Stop(Exception):
        pass

    class FakeLLM:  # records what the engine would start vLLM with
        enqueue_chat = None

        def __init__(self, **kw):
            seen.update(kw)
            raise Stop

    monkeypatch.setattr("vllm.LLM", FakeLLM)
    fqcn = "lendata.engines.vllm_decoding:LendataDecoding"
    with pytest.raises(Stop):
        vo.VLLMEngine(model=model_dir, logits_processors=[fqcn])
    assert seen["logits_processors"] == [fqcn]
    assert "repetition_window" not in caplog.text
    monkeypatch.setattr(vo, "_decoding_unsupported", lambda kw: "the test says so")
    with pytest.raises(Stop), caplog.at_level("WARNING", logger="lendata.engines"):
        vo.VLLMEngine(model=model_dir)
    assert seen["logits_processors"] == [] and "sample_in_processor" not in caplog.text
    # without the processor vLLM's own penalty applies, and the engine says so with the reason
    assert "not the last repetition_window tokens written as on the other engines (the test says so)" in caplog.text
    # and its identity names no rule: its texts keep the keys of vLLM's own rule, made before the window
    from lendata.engines.base import MARKED_WINDOW_RULE, PENALTY_RULE

    for windowed, rule in ((False, None), (True, MARKED_WINDOW_RULE)):
        bare = object.__new__(vo.VLLMEngine)
        bare._model, bare._options, bare._windowed_penalty = model_dir, {}, windowed
        assert bare.identity().get(PENALTY_RULE) == rule
    with pytest.raises(Stop), caplog.at_level("WARNING", logger="lendata.engines"):
        vo.VLLMEngine(model=model_dir, sample_in_processor=True)
    assert "sample_in_processor needs lendata's processor" in caplog.text


SAMPLED = [  # the settings lendata's methods send: AgentWrite's, Self-Lengthen, greedy with a penalty, plain
    {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2},
    {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1},
    {"temperature": 0.0, "repetition_penalty": 1.3},
    {"temperature": 0.7, "top_p": 1.0},
    {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1, "no_repeat_ngram": 4},
    {"temperature": 1.0, "top_p": 0.9, "top_k": 0},
]


def test_sampling_in_the_processor_draws_the_same_tokens_as_vllm_s_sampler(engine):
    """The same seeds through vLLM's sampler and through lendata's processor give the same texts (vLLM's CPU
    sampler draws with per-token noise from the seed, so the same kept tokens with the same values are the same
    draw; the penalty runs in the processor both ways, over its window: vLLM's own has none); every row decodes
    48 tokens so both batches have the same shape at every step. A draw can differ only
    where it lands on a tie-group member swapped at the nucleus's edge (see the differential test above): edge
    tokens hold the least mass, and AgentWrite's top_p 0.95 is run at 0.9 here to keep the edge out of the
    densest ties of the tail."""
    assert engine.sample_in_processor  # the default on vLLM's CPU build
    topics = ["rivers", "owls", "salt", "trains", "glass", "kites"]
    reqs = [ask(f"Write a long story about {t}.", max_tokens=48, min_tokens=48, seed=i, **kw)
            for i, (t, kw) in enumerate(zip(topics, SAMPLED, strict=True))]
    routed = [engine._params(r, engine._prompt_lengths([r])[0]) for r in reqs]
    assert all(p.repetition_penalty == 1.0 and p.top_p == 1.0 for p in routed)  # vLLM's sampler does no work
    assert routed[1].extra_args["lendata"]["sampling"]["top_k"] == 20
    ours = engine.generate(reqs)
    engine.sample_in_processor = False
    try:
        assert engine._params(reqs[0], 10).top_p == 0.9
        theirs = engine.generate(reqs)
    finally:
        engine.sample_in_processor = True
    assert all(r.ok and r.completion_tokens == 48 for r in ours + theirs)
    assert [r.text for r in ours] == [r.text for r in theirs]
    assert len({r.text for r in ours}) == len(reqs)


def test_repetition_penalty_counts_the_last_window_of_written_tokens_not_the_prompt(engine):
    """The penalty's rule, the same on every engine (Request.repetition_window, the llama.cpp engine's rule):
    the ids among the last `repetition_window` tokens this call wrote. vLLM's own penalty counts the prompt and
    all the output (on step prompts that hold the plan and the text so far it penalized every common word and
    punctuation mark, and the bundled model wrote word salad): with a prohibitive penalty and greedy decoding, no
    id comes back within the window, the prompt's ids still appear, with and without the processor's sampling."""
    tok = engine._llm.get_tokenizer()
    prompt = "Repeat this sentence: the cat and the dog sat in the sun, and the sun was warm."
    prompt_ids = set(tok.encode(prompt, add_special_tokens=False))
    before = engine.sample_in_processor
    try:
        for moved in (True, False):
            engine.sample_in_processor = moved
            for window in (4, 12):
                res = engine.generate([ask(prompt, max_tokens=60, min_tokens=60, temperature=0.0,
                                           repetition_penalty=1e4, repetition_window=window)])[0]
                ids = tok.encode(res.text, add_special_tokens=False)
                assert res.ok and len(ids) > 2 * window
                repeats = [(i, t) for i, t in enumerate(ids) if t in ids[max(0, i - window):i]]
                assert repeats == [], (moved, window, res.text)
                assert prompt_ids & set(ids), (moved, res.text)
        # the window is what the processor applied: a wider one than the text's repeats changes the text
        narrow, wide = engine.generate([ask(prompt, max_tokens=60, min_tokens=60, temperature=0.0,
                                            repetition_penalty=1e4, repetition_window=w) for w in (4, 64)])
        assert narrow.text != wide.text
        # the rule is in the engine's identity, so these texts never answer a key of vLLM's own rule
        from lendata.engines.base import MARKED_WINDOW_RULE, PENALTY_RULE

        assert engine.identity()[PENALTY_RULE] == MARKED_WINDOW_RULE
    finally:
        engine.sample_in_processor = before


def test_the_penalty_window_in_the_processor_row():
    """A row penalizes exactly the distinct ids among its last `window` output ids: not the prompt's, not older
    output's."""
    import torch
    from vllm import SamplingParams

    from lendata.engines.vllm_decoding import LendataDecoding

    params = SamplingParams(temperature=1.0, extra_args={"lendata": {
        "sampling": {"top_p": 1.0, "top_k": 0, "repetition_penalty": 2.0, "repetition_window": 3}}})
    row = LendataDecoding.new_req_logits_processor(object.__new__(LendataDecoding), params)
    logits = torch.full((10,), 4.0)
    out = row([7, 8], [1, 2, 3, 4, 3], logits.clone())
    assert out.tolist() == [4.0, 4.0, 4.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    out = row([7, 8], [1, 2, 3, 4, 3, 9], logits.clone())  # one more token: 4, 3 and 9 are the window
    assert out.tolist() == [4.0, 4.0, 4.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0, 2.0]
