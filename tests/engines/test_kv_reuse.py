"""Deterministic KV prefix reuse (engines/kv_states.py) and no-repeat-n-gram decoding on the real llama.cpp engine.

The reuse must be invisible in the output: the same seeded request gives the same text whether its prefix came
from a saved state, from the live context, or was evaluated from nothing, in any order of calls.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from lendata.engines.base import JSON_SAMPLING, Request, UnsupportedOption, refuse_unenforced_options, request_key
from lendata.engines.kv_states import CHUNK, KVStates, aligned_common
from lendata.engines.no_repeat import NoRepeatNgram, word_keys

_TOPICS = ("the history of lighthouses", "how bees make honey")


def _chains() -> list[list[Request]]:
    """Two samples of three growing steps each, laid out as AgentWrite lays out its steps: a fixed head, the text
    so far, then a directive that changes every step."""
    chains = []
    for t, topic in enumerate(_TOPICS):
        text = ""
        chain = []
        for step in range(3):
            text += f"\n\nParagraph {step} about {topic}. " + " ".join(
                f"Sentence {i} of paragraph {step} says something specific about {topic}." for i in range(8))
            prompt = (f"Task: write an essay on {topic}.\n\nText written so far:{text}\n\n"
                      f"Write section {step + 2} now.")
            chain.append(Request(messages=({"role": "user", "content": prompt},), max_tokens=20,
                                 temperature=0.8, seed=100 * t + step))
        chains.append(chain)
    return chains


def _fresh(engine) -> None:
    engine.kv_states.clear()
    engine._prefill.forget_live()


def test_reused_prefixes_give_the_same_text_as_evaluation_from_nothing_in_any_order(llama):
    chains = _chains()
    by_round = [req for step in zip(*chains, strict=True) for req in step]  # AgentWrite's rounds
    by_sample = [req for chain in chains for req in chain]
    # reference: every request from an empty context, nothing kept
    reference = {}
    for req in by_sample:
        _fresh(llama)
        reference[req.seed] = llama.generate([req])[0].text
    _fresh(llama)
    before = llama.kv_states.reused_tokens
    results = llama.generate(by_round)
    in_rounds = {req.seed: res.text for req, res in zip(by_round, results, strict=True)}
    reused_in_rounds = llama.kv_states.reused_tokens - before
    # each result says how much of its prompt came from a kept prefix; the first call had nothing to reuse
    assert results[0].prompt_cached_tokens == 0
    assert sum(r.prompt_cached_tokens for r in results) == reused_in_rounds
    _fresh(llama)
    in_reverse = {req.seed: llama.generate([req])[0].text for req in reversed(by_sample)}
    assert in_rounds == reference
    assert in_reverse == reference
    # and the reuse really happened: each later step restored its sample's earlier prefix
    assert reused_in_rounds >= 4 * CHUNK
    assert llama.kv_states.restores > 0


def test_a_continuation_of_generated_text_does_not_depend_on_the_generation_running_just_before(llama):
    # the flaw of llama-cpp-python's own reuse: the KV of generated tokens (decoded one at a time) was continued,
    # so a continuation differed from the same request on a clean context (6 of 6 differed when measured)
    for seed in range(3):
        first = Request(messages=({"role": "user", "content": f"Write a story about dragon number {seed}."},),
                        max_tokens=120, min_tokens=120, temperature=0.9, seed=seed)
        _fresh(llama)
        written = llama.generate([first])[0].text
        cont = Request(messages=(*first.messages, {"role": "assistant", "content": written}), max_tokens=60,
                       temperature=0.9, seed=seed + 50)
        right_after = llama.generate([cont])[0].text
        _fresh(llama)
        assert llama.generate([cont])[0].text == right_after


def _next_token_logits(engine, text: str) -> np.ndarray:
    """Position the context for `text` as a request would be, evaluate the rest, return the last logits."""
    llm = engine._llm
    tokens = llm.tokenize(text.encode(), add_bos=True)
    engine._prefill.position(tokens)
    llm.eval(tokens[llm.n_tokens:])
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def test_logits_after_a_reused_prefix_are_bit_identical_to_logits_from_nothing(llama):
    # sampled text can hide a difference in the last bits; the logits cannot
    prompts = [req.messages[0]["content"] for chain in _chains() for req in chain]
    reference = []
    for p in prompts:
        _fresh(llama)
        reference.append(_next_token_logits(llama, p))
    _fresh(llama)
    reused = [_next_token_logits(llama, p) for p in prompts]  # each sample's steps grow from the last
    assert llama.kv_states.reused_tokens > 0
    for ref, got in zip(reference, reused, strict=True):
        assert np.array_equal(ref, got)


def test_a_budget_of_nothing_keeps_no_state_and_changes_no_text(llama):
    chains = _chains()
    by_round = [req for step in zip(*chains, strict=True) for req in step]
    _fresh(llama)
    with_cache = [r.text for r in llama.generate(by_round)]
    saved = llama.kv_states.ram_budget, llama.kv_states.disk_budget
    try:
        llama.kv_states.ram_budget = llama.kv_states.disk_budget = 0
        _fresh(llama)
        without = [r.text for r in llama.generate(by_round)]
        assert llama.kv_states.ram_bytes == 0
    finally:
        llama.kv_states.ram_budget, llama.kv_states.disk_budget = saved
    assert with_cache == without


def test_states_spill_to_disk_within_its_budget_and_come_back_the_same(tmp_path):
    states = KVStates(ram_mb=1 / 1024, disk_mb=1, disk_dir=str(tmp_path))  # 1 KiB of RAM, 1 MiB of disk
    a, b = np.arange(CHUNK * 2), np.arange(CHUNK * 2) + 1
    states.save(None, a, b"x" * 800)
    states.save(None, b, b"y" * 800)  # pushes the first one to disk
    assert states.ram_bytes == 800 and states.disk_bytes == 800
    key, n = states.best(None, list(a) + [5, 6])
    assert n == 2 * CHUNK and states.load(key) == b"x" * 800
    # a longer prefix of the same tokens supersedes the shorter one
    states.save(None, np.concatenate([a, np.arange(CHUNK)]), b"z" * 500)
    assert states.best(None, list(a))[1] == 2 * CHUNK
    # the superseded state's file is gone; the new state pushed the other one to disk
    assert len(list(tmp_path.iterdir())) == 1
    assert states.ram_bytes == 500 and states.disk_bytes == 800
    key, _ = states.best(None, list(b))
    assert states.load(key) == b"y" * 800
    # another adapter's state is never a candidate
    assert states.best("adapter", list(a)) == (None, 0)
    states.clear()
    assert states.ram_bytes == states.disk_bytes == 0


def test_the_next_steps_state_replaces_the_last_steps_which_differs_only_in_its_closing_chunks():
    states = KVStates(ram_mb=1)
    step1 = np.arange(6 * CHUNK)
    step2 = np.concatenate([step1[: 4 * CHUNK], np.arange(4 * CHUNK) + 10_000])  # same text, new instruction
    other = np.arange(6 * CHUNK) + 50_000
    states.save(None, step1, b"1")
    states.save(None, other, b"o")
    states.save(None, step2, b"2")
    assert len(states._entries) == 2 and states.best(None, list(step1))[1] == 4 * CHUNK  # from step2's state
    assert states.best(None, list(other))[1] == 6 * CHUNK


def test_any_sequence_of_saves_and_loads_keeps_budgets_and_returns_what_was_saved(tmp_path):
    # saves, loads (which move a state read back from disk to the front) and evictions in random order, with
    # budgets of a few states: never an exception, never over budget, every load returns the saved bytes
    rng = random.Random(5)
    for trial in range(30):
        states = KVStates(ram_mb=rng.choice([0, 2, 3]) * 1000 / 2**20, disk_mb=rng.choice([0, 1, 2]) * 1000 / 2**20,
                          disk_dir=str(tmp_path / f"t{trial}"))
        saved = {}
        for _ in range(40):
            if saved and rng.random() < 0.4:
                first = rng.choice(list(saved))
                key, n = states.best(None, list(saved[first][0]))
                if key is not None:
                    got = states.load(key)
                    assert any(got == data for _, data in saved.values())
            else:
                first = rng.randrange(10_000)
                tokens = np.concatenate([[first], np.arange(rng.choice([2, 3, 4]) * CHUNK - 1)])
                data = bytes([first % 251]) * rng.choice([300, 700, 1000])
                states.save(None, tokens, data)
                saved[first] = (tokens, data)
            assert states.ram_bytes <= states.ram_budget and states.disk_bytes <= states.disk_budget
        states.clear()


def test_two_caches_sharing_a_disk_directory_never_read_each_others_states(tmp_path):
    one, two = (KVStates(ram_mb=0.0001, disk_mb=1, disk_dir=str(tmp_path)) for _ in range(2))
    tokens = np.arange(2 * CHUNK)
    one.save(None, tokens, b"1" * 500)
    one.save(None, tokens + 1, b"3" * 500)  # pushes the first to disk
    two.save(None, tokens, b"2" * 500)
    two.save(None, tokens + 1, b"4" * 500)
    assert one.load(one.best(None, list(tokens))[0]) == b"1" * 500
    assert two.load(two.best(None, list(tokens))[0]) == b"2" * 500
    two.clear()
    assert one.load(one.best(None, list(tokens))[0]) == b"1" * 500


def test_a_state_that_cannot_be_read_back_is_recomputed_to_the_same_text(llama):
    chains = _chains()
    _fresh(llama)
    expected = [r.text for r in llama.generate([chains[0][0], chains[1][0], chains[0][1]])]
    _fresh(llama)
    saved = llama.kv_states.ram_budget, llama.kv_states.disk_budget
    try:
        llama.kv_states.ram_budget, llama.kv_states.disk_budget = 1, 2**30  # every state goes to disk
        got = [r.text for r in llama.generate(chains[0][:1] + chains[1][:1])]
        for e in llama.kv_states._entries.values():  # lose every spilled file
            e.path.unlink()
        got += [r.text for r in llama.generate(chains[0][1:2])]
    finally:
        llama.kv_states.ram_budget, llama.kv_states.disk_budget = saved
        _fresh(llama)
    assert got == expected


def test_aligned_common_rounds_down_to_whole_chunks():
    a = np.arange(3 * CHUNK)
    b = a.copy()
    b[2 * CHUNK + 5] = -1
    assert aligned_common(a, b) == 2 * CHUNK
    b[CHUNK - 1] = -1
    assert aligned_common(a, b) == 0
    assert aligned_common(a, a[: CHUNK + 3]) == CHUNK


# --- no-repeat-n-gram -------------------------------------------------------------------------------------


def _reference_banned(seq: list[int], n: int) -> list[int]:
    if len(seq) < n - 1:
        return []
    key = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
    return sorted({seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == key})


def test_the_incremental_index_bans_exactly_what_a_full_scan_bans():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 6)
        index, seq = NoRepeatNgram(n), [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
        for _ in range(25):
            assert index.banned(seq) == _reference_banned(seq, n)
            seq += [rng.randint(0, 3) for _ in range(rng.choice([1, 1, 2, 5]))]


def _keyed_reference_banned(seq: list[int], n: int, keys, members) -> list[int]:
    units = [int(keys[t]) for t in seq if keys[t] >= 0]
    return sorted(t for k in _reference_banned(units, n) for t in members[k])


def test_the_word_key_index_bans_exactly_what_a_full_scan_of_the_keys_bans():
    # a toy vocabulary: tokens 0-2 share key 0 ("the", " The", "THE"), 3 is punctuation (skipped), 4-6 own keys
    keys, members = word_keys([b"the", b" The", b"THE", b", ", b" cat", b"sat", b"\xe9\x95", b" \xe9\x95", b" "])
    assert list(keys) == [0, 0, 0, -1, 1, 2, 3, 3, -1] and members[0] == [0, 1, 2] and members[3] == [6, 7]
    rng = random.Random(11)
    for _ in range(200):
        n = rng.randint(1, 5)
        index, seq = NoRepeatNgram(n, keys, members), [rng.randint(0, 8) for _ in range(rng.randint(0, 12))]
        for _ in range(25):
            assert index.banned(seq) == _keyed_reference_banned(seq, n, keys, members)
            seq += [rng.randint(0, 8) for _ in range(rng.choice([1, 1, 2, 5]))]


def test_a_sampler_that_obeys_the_word_key_ban_cannot_repeat_a_key_ngram_whatever_it_picks():
    """The property the ban exists for: commas, capitals and spaces cannot smuggle a repeat through."""
    texts = [b"the", b" The", b" cat", b"Cat", b" sat", b",", b".", b" ", b"\n", b" on", b" mat", b"Mat."]
    keys, members = word_keys(texts)
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(2, 4)
        prompt = [rng.randrange(len(texts)) for _ in range(rng.randint(0, 15))]
        index, seq = NoRepeatNgram(n, keys, members), list(prompt)
        for _ in range(40):
            allowed = sorted(set(range(len(texts))) - set(index.banned(seq)))
            seq.append(rng.choice(allowed))  # punctuation and spaces are never banned: never empty
        units = [int(keys[t]) for t in seq if keys[t] >= 0]
        n_prompt = sum(1 for t in prompt if keys[t] >= 0)
        grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
        for end in range(max(n, n_prompt + 1), len(units) + 1):  # each n-gram completed by an output unit
            assert grams[end - n] not in grams[:end - n], (prompt, seq)


def test_a_copy_with_a_comma_added_is_banned_in_the_real_vocabulary(llama):
    """Seen in the demo build: "a testament built by the likes" copied as "a testament, built by the likes"."""
    keys, members = llama.word_keys
    tok = lambda text: llama._llm.tokenize(text.encode(), add_bos=False)  # noqa: E731
    before = tok("The Roman Empire was a testament built by the likes of Julius Caesar.")
    index = NoRepeatNgram(6, keys, members)
    seq = before + tok(" the roman Empire was a testament,")
    built = tok(" built")
    assert len(built) == 1 and built[0] in index.banned(seq)
    assert tok(" Built")[0] in index.banned(seq) and tok(",")[0] not in index.banned(seq)
    # raw token ids (the old rule) let the comma through: the test is not vacuous
    assert built[0] not in NoRepeatNgram(6).banned(seq)


def test_no_repeat_ngram_output_never_repeats_an_ngram_of_prompt_or_output(llama):
    n = 4
    prompt = "Repeat this line forever: the cat sat on the mat. the cat sat on the mat. the cat sat on the mat."
    req = Request(messages=({"role": "user", "content": prompt},), max_tokens=80, min_tokens=60, temperature=0.7,
                  seed=3, no_repeat_ngram=n)
    res = llama.generate([req])[0]
    assert res.ok and res.completion_tokens >= 60
    # the prompt and the sampled tokens that were decoded (the last sampled token never is: it is not checked),
    # as word keys: a repeat that differs only in commas, capitals or spaces is a repeat
    keys, _ = llama.word_keys
    tokens = [int(t) for t in llama._llm._input_ids]
    # cut at max_tokens, the last sampled token was never decoded; ended on EOS, every output token was
    first_new = len(tokens) - (res.completion_tokens - 1 if res.finish_reason == "length" else res.completion_tokens)
    units = [(int(keys[t]), i >= first_new) for i, t in enumerate(tokens) if keys[t] >= 0]
    seen: set[tuple[int, ...]] = set()
    for end in range(n, len(units) + 1):
        gram = tuple(k for k, _ in units[end - n:end])
        if units[end - 1][1]:  # completed by a sampled token
            assert gram not in seen, f"repeated {gram}"
        seen.add(gram)
    # the same request without the ban does repeat itself: the test is not vacuous
    free = llama.generate([Request(messages=req.messages, max_tokens=80, min_tokens=60, temperature=0.7,
                                   seed=3)])[0]
    grams = [tuple(x) for x in np.lib.stride_tricks.sliding_window_view(
        np.array(llama._llm._input_ids[-free.completion_tokens - n:]), n)]
    assert len(set(grams)) < len(grams)


def test_output_scope_may_copy_the_prompt_but_never_repeats_its_own_output(llama):
    n = 4
    prompt = "Repeat this line forever: the cat sat on the mat. the cat sat on the mat. the cat sat on the mat."
    req = Request(messages=({"role": "user", "content": prompt},), max_tokens=80, min_tokens=60, temperature=0.7,
                  seed=3, no_repeat_ngram=n, no_repeat_scope="output")
    res = llama.generate([req])[0]
    assert res.ok and res.completion_tokens >= 60
    keys, _ = llama.word_keys
    tokens = [int(t) for t in llama._llm._input_ids]
    first_new = len(tokens) - (res.completion_tokens - 1 if res.finish_reason == "length" else res.completion_tokens)
    prompt_units = [int(keys[t]) for t in tokens[:first_new] if keys[t] >= 0]
    out_units = [int(keys[t]) for t in tokens[first_new:] if keys[t] >= 0]
    out_grams = [tuple(out_units[i:i + n]) for i in range(len(out_units) - n + 1)]
    assert len(set(out_grams)) == len(out_grams), "the output repeated one of its own n-grams"
    # the prompt is not banned: the output copies at least one of its n-grams (the test is not vacuous)
    prompt_grams = {tuple(prompt_units[i:i + n]) for i in range(len(prompt_units) - n + 1)}
    assert prompt_grams & set(out_grams)


def test_output_scope_covers_a_prefilled_assistant_text(llama):
    """Self-Lengthen's round B continues a prefilled head: the continuation may not repeat the head either."""
    n = 4
    head = "The cat sat on the mat. The dog sat on the rug. The cat sat on the mat again, and"
    req = Request(messages=({"role": "user", "content": "Write about a cat and a dog."},
                            {"role": "assistant", "content": head}),
                  max_tokens=80, min_tokens=60, temperature=0.7, seed=3, no_repeat_ngram=n, no_repeat_scope="output")
    res = llama.generate([req])[0]
    assert res.ok and res.completion_tokens >= 60
    keys, _ = llama.word_keys
    tokens = [int(t) for t in llama._llm._input_ids]
    first_new = len(tokens) - (res.completion_tokens - 1 if res.finish_reason == "length" else res.completion_tokens)
    head_units = [int(keys[t]) for t in llama._llm.tokenize(head.encode(), add_bos=False) if keys[t] >= 0]
    out_units = [int(keys[t]) for t in tokens[first_new:] if keys[t] >= 0]
    units = head_units + out_units
    seen = {tuple(units[i:i + n]) for i in range(len(head_units) - n + 1)}
    for end in range(max(n, len(head_units) + 1), len(units) + 1):
        gram = tuple(units[end - n:end])
        assert gram not in seen, f"the continuation repeated {gram}"
        seen.add(gram)
    # not vacuous: without the ban the same seeded continuation does repeat the head
    free = llama.generate([dataclasses.replace(req, no_repeat_ngram=0)])[0]
    free_units = head_units + [int(keys[t]) for t in llama._llm._input_ids[-free.completion_tokens + 1:]
                               if keys[t] >= 0]
    free_grams = [tuple(free_units[i:i + n]) for i in range(len(free_units) - n + 1)]
    assert len(set(free_grams)) < len(free_grams)


def test_output_scope_with_a_prefill_still_lets_the_answer_copy_the_prompt(llama):
    """Only the assistant turn is banned: a continuation may copy the user's text (the extender's whole job)."""
    n = 4
    prompt = "Repeat this line forever: the cat sat on the mat. the cat sat on the mat. the cat sat on the mat."
    req = Request(messages=({"role": "user", "content": prompt}, {"role": "assistant", "content": "Sure:"}),
                  max_tokens=60, min_tokens=40, temperature=0.7, seed=3, no_repeat_ngram=n,
                  no_repeat_scope="output")
    res = llama.generate([req])[0]
    assert res.ok
    keys, _ = llama.word_keys
    prompt_units = [int(keys[t]) for t in llama._llm.tokenize(prompt.encode(), add_bos=False) if keys[t] >= 0]
    out_units = [int(keys[t]) for t in llama._llm._input_ids[-res.completion_tokens + 1:] if keys[t] >= 0]
    prompt_grams = {tuple(prompt_units[i:i + n]) for i in range(len(prompt_units) - n + 1)}
    assert prompt_grams & {tuple(out_units[i:i + n]) for i in range(len(out_units) - n + 1)}


def test_no_repeat_scope_is_validated_and_keyed_only_when_it_changes_something():
    base = Request(messages=({"role": "user", "content": "x"},), no_repeat_ngram=8)
    out = Request(messages=base.messages, no_repeat_ngram=8, no_repeat_scope="output")
    off = Request(messages=base.messages, no_repeat_scope="output")  # no ban: the scope changes nothing
    assert "no_repeat_scope" not in base.sampling() and out.sampling()["no_repeat_scope"] == "output"
    assert request_key({"p": 1}, base) != request_key({"p": 1}, out)
    assert request_key({"p": 1}, off) == request_key({"p": 1}, Request(messages=base.messages))
    with pytest.raises(ValueError, match="no_repeat_scope"):
        Request(messages=base.messages, no_repeat_scope="prompt")


def test_no_repeat_ngram_is_part_of_the_cache_key_and_off_leaves_old_keys_alone():
    base = Request(messages=({"role": "user", "content": "x"},))
    on = Request(messages=base.messages, no_repeat_ngram=8)
    assert request_key({"p": 1}, base) != request_key({"p": 1}, on)
    assert "no_repeat_ngram" not in base.sampling() and "no_repeat_rule" not in base.sampling()
    # the rule's version: outputs banned over raw token ids (rule 1) are not replayed under word keys
    assert on.sampling()["no_repeat_rule"] == 2
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        Request(messages=base.messages, no_repeat_ngram=-1)
    # end_at_sentence keys carry the rule's version: text a cache holds from an older rule (the key said only
    # `true`) is not replayed as if the current rule had ended it
    ends = Request(messages=base.messages, end_at_sentence=True)
    assert "end_at_sentence" not in base.sampling()
    assert ends.sampling()["end_at_sentence"] == 2 and request_key({"p": 1}, ends) != request_key({"p": 1}, base)


def test_the_grammar_sampler_changes_the_keys_of_json_requests_only(llama):
    """The sampled-token-first grammar sampler changed JSON outputs, not free text: cached free text (AgentWrite's
    step texts) keeps its keys."""
    ident = llama.identity()
    before = {k: v for k, v in ident.items() if k != JSON_SAMPLING}
    free = Request(messages=({"role": "user", "content": "x"},), max_tokens=5)
    plan = Request(messages=free.messages, max_tokens=5, json_schema={"type": "boolean"})
    assert request_key(ident, free) == request_key(before, free)
    assert request_key(ident, plan) != request_key(before, plan)


def test_engines_that_cannot_enforce_it_refuse_instead_of_ignoring_it():
    plain = Request(messages=({"role": "user", "content": "x"},))
    refuse_unenforced_options("openai", [plain])  # nothing asked, nothing refused
    with pytest.raises(UnsupportedOption, match="no_repeat_ngram=6.*engine=llamacpp"):
        refuse_unenforced_options("openai", [plain, Request(messages=plain.messages, no_repeat_ngram=6)])


# --- end at sentence ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ends"), [
    ("It rained.", True), ("He said \"go!\"", True), ("Why?", True), ("长江很长。", True),
    ("The value is 3.", False), ("Written by A.", False), ("Fruit, e.g.", False), ("Ask Dr.", False),
    ("no end here", False), ("a list:", False), ("Acme Inc.", False), ("Smith et al.", False),
    ("He said “go.", False), ("He said “go.”", True), ('She wrote "stop.', False), ("他说：“走吧。", False),
    ("他说：“走吧。”", True), ("(See above.", False), ("Made in the U.S.", False),
    # a stray closing quote (a small model's typo, or the close of a quotation opened before the output began)
    # must not keep a step from ever ending; an opening quote still does
    ('the end." Then she left.', True), ('It was 5" long. Then she left.', True),
    ('"Go," he said. Then she wrote "stop.', False), ('He said "go." Then "run.', False),
    # an opening quote is anything not closing a word or a clause: after ':', a dash, a CJK character, the start
    ('He said:"Go now.', False), ('He said—"Go now.', False), ('他说："走吧。', False), ('他说"走吧。', False),
    ('"Go.', False), (' "Go.', False), ('x"Go."', True), ('He said,"Go."', True), ('“Fine,” he said."', True),
])
def test_sentence_ends_skip_numbers_initials_and_abbreviations(text, ends):
    from lendata.engines.sentence_end import ends_sentence

    assert ends_sentence(text) is ends


def test_end_at_sentence_stops_on_a_whole_sentence_after_the_minimum(llama):
    from lendata.engines.sentence_end import ends_sentence

    req = Request(messages=({"role": "user", "content": "Write a long essay about the sea."},), max_tokens=300,
                  min_tokens=40, temperature=0.7, seed=11, end_at_sentence=True)
    res = llama.generate([req])[0]
    assert res.finish_reason == "stop" and 40 <= res.completion_tokens < 300
    assert ends_sentence(res.text.rstrip())
    plain = llama.generate([Request(messages=req.messages, max_tokens=300, min_tokens=40, temperature=0.7,
                                    seed=11)])[0]
    assert plain.text.startswith(res.text.rstrip()[:-1])  # the same text up to where it was ended


class _Vocab:
    """A byte vocabulary for the logits processor: token i is the i-th piece (some pieces are half a character)."""

    def __init__(self, pieces):
        self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]

    def detokenize(self, ids):
        return b"".join(self.pieces[i] for i in ids)


def _ends_after(pieces, n=1, prefill=""):
    """The index of the generated token after which the processor allows only end-of-sequence (None: never)."""
    import numpy as np

    from lendata.engines.llamacpp import _EndAtSentence

    vocab = _Vocab(["<eos>", *pieces])
    proc = _EndAtSentence(n, 0, vocab.detokenize, prefill=prefill)
    prompt = [0, 0, 0]
    for k in range(len(pieces) + 1):
        scores = proc(np.array(prompt + list(range(1, k + 1))), np.zeros(len(vocab.pieces)))
        if np.isinf(scores[1:]).all():
            return k
    return None


def test_end_at_sentence_reads_the_output_token_by_token_with_split_characters_and_the_prefill():
    close = "”".encode()
    assert _ends_after(["It", " rained", "."]) == 3
    assert _ends_after(["It", " rained", ".", " Then"], n=4) is None  # not before the minimum, then no end
    assert _ends_after(["He", " said", " “", "go", ".", close[:1], close[1:]]) == 7  # only once ” is whole
    # a continuation: the prefilled text is part of the sentence ("3" + "." is a number cut, not an end;
    # a quotation opened before the cut must be closed), but the end needs one generated token at least
    assert _ends_after([".", "5", " percent", "."], prefill="It grew by 3") == 4
    assert _ends_after([" store", ".", "\"", " Then"], prefill='She said "go to the') == 3
    assert _ends_after([" more", "."], prefill="It ended.") == 2


def test_a_cached_engine_says_what_its_engine_enforces(tmp_path):
    from lendata.engines.base import enforces
    from lendata.engines.cache import CachedEngine, ResponseCache
    from tests.conftest import ScriptedEngine

    class Plain(ScriptedEngine):
        decoding_options = frozenset()
        continues_prefill = False

    cache = ResponseCache(tmp_path / "responses.sqlite")
    for inner, able in ((ScriptedEngine(), True), (Plain(), False)):
        wrapped = CachedEngine(inner, cache)
        assert enforces(wrapped, "end_at_sentence") is able and enforces(wrapped, "no_repeat_ngram") is able
        assert wrapped.continues_prefill is able  # whether a continuation may be sent at all


def test_the_vocabulary_read_from_a_tokenizers_file_is_byte_for_byte_llama_cpp_s(llama):
    """Differential: engines without a llama.cpp vocabulary (vLLM) read each token's bytes from the model's
    `tokenizers` file; for the bundled model they must be exactly what llama.cpp detokenizes, so the word-key
    ban and the sentence rule see the same text on every engine (half characters included)."""
    from tokenizers import Tokenizer

    from lendata.engines.no_repeat import vocabulary_bytes
    from lendata.models import gguf_tokenizer_path

    tok = Tokenizer.from_file(str(gguf_tokenizer_path(llama.model_path)))
    ours = vocabulary_bytes(tok)
    theirs = [llama._llm.detokenize([t]) for t in range(llama._llm.n_vocab())]
    assert len(ours) == len(theirs)
    differ = [(t, ours[t], theirs[t]) for t in range(len(ours)) if ours[t] != theirs[t]]
    # llama-cpp-python detokenizes one token into a 32-byte buffer: its longer tokens (runs of spaces, dashes,
    # hashes: no letter or digit, so no word key either way) come back empty. Every other token is identical.
    assert differ and all(theirs == b"" and len(ours) > 32 for _, ours, theirs in differ), differ[:10]
    assert any(b"\xe4" in p for p in ours) and word_keys(ours)[0].tolist() == word_keys(theirs)[0].tolist()


@pytest.mark.parametrize("decoder", ["replace", "metaspace"])
def test_a_sentencepiece_vocabulary_keeps_the_space_its_pieces_stand_for(decoder):
    """Decoding one sentencepiece token alone strips its leading space ("▁Dr" -> "Dr"): read that way, the
    sentence rule would see "toldDr." and end there. The pieces keep the space, byte tokens are their byte,
    control tokens are empty (as llama.cpp renders them)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    from lendata.engines.no_repeat import vocabulary_bytes

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0xE4>": 3, "▁Dr": 4, ".": 5, "▁the": 6, "A": 7}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = (decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)]) if decoder == "replace" else decoders.Metaspace())
    tok.add_special_tokens([AddedToken("</s>", special=True), AddedToken("<s>", special=True)])
    got = vocabulary_bytes(tok)
    assert got[1:] == [b"", b"", b"\xe4", b" Dr", b".", b" the", b"A"]
