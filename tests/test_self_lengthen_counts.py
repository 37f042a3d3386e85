"""Self-Lengthen's counts as the reference makes them (METHODS §4, corrected 2026-11-26; QwenLM/Self-Lengthen
qwen/step1_gen_initial_responses.py, step2_ext_responses.py, llm_client.py): every kept initial response is
submitted for extension twice, each submission retried up to `extend_retries` times; drop_short runs on the
initial responses before any extension; sampling T=0.7, top_p=0.8, top_k=20, repetition penalty 1.1;
self-instruct and the judge use the base model; an instruction may span lines."""

import json
from collections import Counter

from lendata.engines.base import Result
from lendata.methods.self_lengthen import steps as sl

INITIAL = "P1 has five words here.\n\nP2 has five words too."
GROWN = "A1 is a fresh sentence.\n\nA2 is another one.\n\nA3 is the last one."


def _initial(rid: str, text: str = INITIAL) -> sl.Response:
    return sl.Response(rid, "i" + rid, "Write about rivers.", "en", 1, 0, initial=text)


def _grows(req):
    """A: a longer first half; B: a longer continuation. Every round passes the check and grows the text."""
    if req.prefill is None:
        return Result(text=GROWN)
    return Result(text="B1 adds new facts about rivers here. B2 closes it with more words.")


def test_one_initial_response_yields_two_extended_responses(scripted):
    s = sl.Settings(micro_rounds=1, extend_retries=3, word_counter="longwriter")
    out = sl.extend([_initial("r")], scripted(_grows), s)
    assert len(out) == 2, "each initial response is submitted for extension twice"
    assert [r.extension for r in out] == [0, 1]
    assert len({r.id for r in out}) == 2 and all(r.id != "r" for r in out)
    assert all(r.extended and r.initial == INITIAL and r.failed is None for r in out)
    assert all(r.extend_attempts == 1 for r in out)


def test_two_submissions_sample_differently(scripted):
    eng = scripted(_grows)
    sl.extend([_initial("r")], eng, sl.Settings(micro_rounds=1, extend_retries=1, word_counter="longwriter"))
    seeds = [req.seed for req in eng.seen]
    assert len(set(seeds)) == len(seeds), "the two extensions of one response must not share a seed"


def test_retries_stop_at_extend_retries(scripted):
    eng = scripted(lambda req: Result(text="and then it stops mid"))  # never passes the check
    s = sl.Settings(micro_rounds=3, extend_retries=5)
    out = sl.extend([_initial("r")], eng, s)
    assert len(eng.seen) == 2 * 5 * 3 * 2  # 2 submissions x 5 attempts x 3 rounds x (A + B)
    assert all(r.extended is None and r.extend_attempts == 5 for r in out)
    assert all(r.failed.startswith("extend: not > 1.2x after 5 attempts") for r in out)


def test_drop_short_runs_on_the_initial_responses_before_extension(scripted):
    lengths = {f"ins{i}": 5 + 3 * i for i in range(40)}  # 40 instructions, initial responses of rising length

    def answer(req):
        text = req.messages[0]["content"]
        if req.prefill is not None or text.startswith(sl.EXTEND["en"][:30]):
            return _grows(req)
        key = text.split()[-1].rstrip(".")  # distinct words: the repeated-n-gram check must pass
        return Result(text=f"About {key}: " + " ".join(f"w{j}" for j in range(lengths[key])) + ".")

    eng = scripted(answer)
    s = sl.Settings(samples=1, micro_rounds=1, extend_retries=1, word_counter="longwriter")
    instructions = [{"id": k, "instruction": f"Write about {k}.", "iteration": 1} for k in lengths]
    extended, rejected = sl.generate_and_extend(instructions, eng, eng, s)
    dropped = [json.loads(r["record"]) for r in rejected if r["stage"] == "drop_short_initial"]
    assert dropped, "drop_short must run on the initial responses"
    # the extender never sees a dropped initial response
    extend_prompts = [req.messages[0]["content"] for req in eng.seen
                      if req.messages[0]["content"].startswith(sl.EXTEND["en"][:30])]
    for rec in dropped:
        assert not any(rec["initial_response"] in p for p in extend_prompts)
    # the shortest ~20% are always dropped (the rank formula), and two extensions come from each kept one
    shortest = sorted(lengths, key=lengths.get)[:8]
    assert not {r.instruction_id for r in extended} & set(shortest)
    assert len(extended) == 2 * (40 - len(dropped))
    assert all(r.failed is None and r.extended for r in extended)


def test_sampling_is_the_reference_s_and_self_instruct_and_judge_use_the_base_model(scripted):
    def answer(req):
        if req.json_schema is not None:
            return Result(text='{"answer": "yes"}')
        return Result(text=" Write a long history of rivers and the cities built on them.")

    eng = scripted(answer)
    s = sl.Settings(n=1, repetition_window=40)
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty) == (0.7, 0.8, 20, 1.1)
    seeds = [{"instruction": "Write a long essay about mountains.", "language": "en"},
             {"instruction": "Write a long story about the sea.", "language": "en"}]
    kept, _ = sl.self_instruct(seeds, eng, s, iteration=2)
    assert kept
    assert all(req.lora is None for req in eng.seen), "self-instruct and the judge use the base model"
    sampled = [req for req in eng.seen if req.json_schema is None]
    assert all(req.top_k == 20 and req.top_p == 0.8 and req.repetition_penalty == 1.1 for req in sampled)
    assert all(req.repetition_window == 40 for req in sampled)  # the setting reaches self-instruct too
    assert all(any("Instruction 4" in stop for stop in req.stop) for req in sampled)
    assert not any(stop == "\n" for req in sampled for stop in req.stop), "an instruction may span lines"
    gen = sl.generate(kept, eng, s, lora="/adapters/gen")
    assert gen and all(req.top_k == 20 and req.lora == "/adapters/gen" for req in eng.seen[-len(gen):])


def test_an_instruction_spans_lines_up_to_the_next_marker():
    body = "Write a history of rivers.\nCover the Nile, the Danube and the Mekong.\nEnd with floods."
    assert sl.clean_instruction(f"{body}\nInstruction 4: Write a poem.") == body
    assert sl.clean_instruction(f" {body}\n\nInstruction 5: x") == body
    zh = "写一篇关于河流的文章。\n包括长江和黄河。"
    assert sl.clean_instruction(f"{zh}\n指令4：写一首诗。") == zh


def test_the_extend_prompt_asks_for_a_long_rich_engaging_text():
    prompt = sl.EXTEND["en"].lower()
    assert all(w in prompt for w in ("long", "rich", "engaging"))
    assert all(w in sl.EXTEND["zh"] for w in ("长", "丰富", "引人入胜"))


def test_extension_ids_are_stable_and_distinct_across_initial_responses(scripted):
    s = sl.Settings(micro_rounds=1, extend_retries=1, word_counter="longwriter")
    a = sl.extend([_initial("r1"), _initial("r2")], scripted(_grows), s)
    b = sl.extend([_initial("r1"), _initial("r2")], scripted(_grows), s)
    assert [r.id for r in a] == [r.id for r in b]
    assert Counter(r.instruction_id for r in a) == {"ir1": 2, "ir2": 2}
