"""AgentWrite's `step_layout: turns` (issue 19, goal 3): each step is the next turn of one conversation, so a
step's prompt is the previous step's prompt plus the paragraph the model just wrote plus a short request, the
prefix an engine with a prefix cache (vLLM) reuses instead of evaluating the text again."""

import json

import pytest

from lendata.engines import Result, estimate_prompt_tokens
from lendata.methods.agentwrite import plan_and_write as aw


def _words(n, start):
    def word(i):
        w, i = "", i + 26
        while i:
            i, r = divmod(i, 26)
            w = chr(97 + r) + w
        return w
    return " ".join(word(i) for i in range(start, start + n))


def _writer(label=True):
    """Valid plans of three points; paragraphs of min_tokens words (new words each call), with a label the
    method strips, so the kept paragraph differs from what the model wrote."""
    def answer(req):
        if req.json_schema is not None:
            return Result(text=json.dumps({"paragraphs": [{"main_point": f"point {i}", "words": 10}
                                                          for i in range(3)]}), completion_tokens=20)
        n = max(1, req.min_tokens)
        seen = sum(len(m["content"]) for m in req.messages)
        return Result(text=("Paragraph 9: " if label else "") + _words(n - 1, start=seen * 1000) + " end.",
                      completion_tokens=n)
    return answer


def _steps_of(seen, instruction):
    """The first call of every step of one sample (no resample, no continuation), in order."""
    return [r for r in seen if r.json_schema is None and r.sample_index == 0 and r.messages[-1]["role"] == "user"
            and instruction in r.messages[0]["content"]]


def test_step_layout_is_one_of_single_and_turns():
    assert aw.Settings().step_layout == "single"  # the reference's layout stays the default
    aw.Settings(step_layout="turns")
    for bad in ("chat", "", None, 1):
        with pytest.raises(ValueError, match="step_layout"):
            aw.Settings(step_layout=bad)


@pytest.mark.parametrize("prompt", ["longwriter", "concise"])
def test_each_turns_step_is_the_previous_step_plus_its_paragraph_plus_a_request(scripted, prompt):
    eng = scripted(_writer())
    s = aw.Settings(min_paragraph=100, max_paragraph=150, write_prompt=prompt, step_layout="turns")
    rows = [{"instruction": f"Write about {t} in 450 words.", "source": ""} for t in ("rivers", "hills")]
    table, _, samples = aw.agentwrite(rows, eng, s)
    for smp in samples:
        reqs = _steps_of(eng.seen, smp.instruction)
        assert len(reqs) == len(smp.plan) == len(smp.paragraphs) == 3
        first = reqs[0].messages
        assert len(first) == 1 and smp.instruction in first[0]["content"]
        assert aw.render_plan(smp.plan) in first[0]["content"]
        for k in range(1, len(reqs)):
            before, now = reqs[k - 1].messages, reqs[k].messages
            assert now[: len(before)] == before  # the whole previous prompt is the prefix, byte for byte
            # then the paragraph as kept (its label stripped), then the request for this step alone
            assert now[len(before)] == {"role": "assistant", "content": smp.paragraphs[k - 1]}
            assert len(now) == len(before) + 2 and now[-1]["role"] == "user"
            assert smp.plan[k]["main_point"] in now[-1]["content"]
            assert f"{smp.step_targets[k]} words" in now[-1]["content"]
            assert smp.instruction not in now[-1]["content"]  # the instruction is said once, not per step
        assert all("Paragraph 9" not in p for p in smp.paragraphs)
    assert table.num_rows == 2


def test_turns_prompts_fit_the_window_by_dropping_the_oldest_turns(scripted):
    eng = scripted(_writer(label=False))
    eng.context_window = 900
    s = aw.Settings(min_paragraph=100, max_paragraph=150, write_prompt="longwriter", step_layout="turns")
    _, _, samples = aw.agentwrite([{"instruction": "Write about rivers in 1200 words.", "source": ""}], eng, s)
    smp = samples[0]
    writes = [r for r in eng.seen if r.json_schema is None]
    assert len(writes) >= 8
    for r in writes:
        assert estimate_prompt_tokens(eng, [r.messages])[0] + r.max_tokens <= eng.context_window
        roles = [m["role"] for m in r.messages]
        if roles[-1] == "assistant":  # a continuation: the cut paragraph as the assistant's own turn
            roles = roles[:-1]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]  # turns alternate
        assert smp.instruction in r.messages[0]["content"]  # the instruction and the plan are never dropped
    # the window could not hold every turn of the later steps, and their prompts kept the most recent ones
    last = [r for r in writes if r.messages[-1]["role"] == "user"][-1]
    assert last.messages[-2] == {"role": "assistant", "content": smp.paragraphs[-2]}
    assert len(last.messages) < 2 * len(smp.paragraphs) - 1


def test_a_turn_dropped_for_the_window_stays_dropped_so_later_steps_share_a_prefix(scripted):
    """Dropping turns one at a time would change the prompt's beginning at every step and nothing would be
    reused; turns are dropped in blocks, so consecutive steps after a drop share the conversation again."""
    eng = scripted(_writer(label=False))
    eng.context_window = 900
    s = aw.Settings(min_paragraph=100, max_paragraph=150, write_prompt="concise", step_layout="turns")
    aw.agentwrite([{"instruction": "Write about rivers in 1500 words.", "source": ""}], eng, s)
    reqs = [r for r in eng.seen if r.json_schema is None and r.sample_index == 0
            and r.messages[-1]["role"] == "user"]
    assert len(reqs) >= 10
    extends = drops = 0
    for before, now in zip(reqs, reqs[1:], strict=False):
        if now.messages[: len(before.messages)] == before.messages:
            extends += 1
            continue
        # otherwise a block of the oldest turns left: the first turn, "..." for what left, then a tail of the
        # previous prompt's turns from an ask on (each paragraph after its own ask), the newest paragraph, the ask
        drops += 1
        assert now.messages[0] == before.messages[0]
        assert now.messages[1] == {"role": "assistant", "content": "..."}
        kept = list(now.messages[2:-2])
        assert kept[0]["role"] == "user" and len(kept) < len(before.messages) - 1
        assert kept == list(before.messages[len(before.messages) - len(kept) :])
    assert extends > drops >= 1, (extends, drops)


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["longwriter", "concise"])
def test_no_two_asks_put_the_same_words_before_a_paragraph_so_the_ban_spares_earlier_openings(llama, prompt):
    """The no-repeat ban reads the prompt and the paragraph as one sequence, over the tokenizer's word keys: if
    the keyed tokens before two paragraphs were the same, opening like the earlier paragraph would complete a
    repeated n-gram. Checked with the bundled model's own tokenizer and keys, the chat template's turn ends
    included, on the hard case: equal word targets and main points that end in the same words."""
    from lendata.methods.agentwrite.writing import _conversation

    s = aw.Settings(write_prompt=prompt, step_layout="turns", no_repeat_ngram=8)
    smp = aw.prepare([{"instruction": "Write about rivers in 600 words.", "source": ""}], s)[0]
    smp.plan = [{"main_point": f"{w} the history of the river", "words": 150} for w in ("Open with", "Then", "End")]
    smp.step_targets, smp.paragraphs = [150, 150], ["First part.", "Second part."]
    keys = llama.word_keys[0]
    before_paragraph = []
    for m in _conversation(smp, 2, 150, s, 0):
        if m["role"] != "user":
            continue
        rendered = f"<|im_start|>user\n{m['content']}<|im_end|>\n<|im_start|>assistant\n"
        tokens = llama._llm.tokenize(rendered.encode(), add_bos=False, special=True)
        keyed = [int(keys[tok]) for tok in tokens if keys[tok] >= 0]
        before_paragraph.append(tuple(keyed[-(s.no_repeat_ngram - 1):]))
    assert len(before_paragraph) == 3
    assert len(set(before_paragraph)) == 3, before_paragraph


def test_the_last_step_drops_only_the_turns_it_must(scripted):
    """A block drop (down to half the room) pays off in the steps after it; the last step has none, so it
    drops only as many more turns as it must (turns earlier steps dropped stay dropped)."""
    from lendata.methods.agentwrite.writing import _conversation, _tokens

    eng = scripted(_writer(label=False))
    eng.context_window = 900
    s = aw.Settings(min_paragraph=100, max_paragraph=150, write_prompt="concise", step_layout="turns",
                    continue_attempts=0)
    _, _, samples = aw.agentwrite([{"instruction": "Write about rivers in 1500 words.", "source": ""}], eng, s)
    smp = samples[0]
    last = _steps_of(eng.seen, smp.instruction)[-1]
    step = len(smp.plan) - 1
    assert last.messages[1] == {"role": "assistant", "content": "..."}  # this step did drop turns
    frm = next(j for j in range(step) if {"role": "assistant", "content": smp.paragraphs[j]} in last.messages)
    budget = eng.context_window - last.max_tokens - 16
    assert _tokens(eng, list(last.messages)) <= budget
    one_more = _conversation(smp, step, smp.step_targets[step], s, frm - 1)
    assert _tokens(eng, one_more) > budget


def test_a_newest_paragraph_too_long_for_the_window_is_kept_by_its_end(scripted):
    eng = scripted()
    eng.context_window = 400
    s = aw.Settings(min_paragraph=10, max_paragraph=300, write_prompt="concise", step_layout="turns")
    smp = aw.prepare([{"instruction": "Write about rivers in 400 words.", "source": ""}], s)[0]
    smp.plan = [{"main_point": "a", "words": 60}, {"main_point": "b", "words": 60}]
    long = " ".join(f"w{i}" for i in range(600)) + "."
    smp.paragraphs, smp.step_targets, smp.words_out = [long], [60], 60
    req = aw.step_request(smp, 1, eng, s, {"en": 1.3})
    assert estimate_prompt_tokens(eng, [req.messages])[0] + req.max_tokens <= eng.context_window
    newest = req.messages[-2]
    assert newest["role"] == "assistant" and newest["content"].startswith("...")
    assert long.endswith(newest["content"][3:]) and len(newest["content"]) < len(long)


def test_max_steps_below_the_plan_length_and_empty_paragraphs_keep_the_turns_alternating(scripted):
    def answer(req):
        if req.json_schema is not None:
            return Result(text=json.dumps({"paragraphs": [{"main_point": f"p{i}", "words": 10} for i in range(5)]}))
        return Result(text="   ", completion_tokens=1)  # nothing kept of it: an empty assistant turn

    eng = scripted(answer)
    s = aw.Settings(min_paragraph=60, max_paragraph=80, write_prompt="concise", step_layout="turns", max_steps=3,
                    step_attempts=1)
    _, _, samples = aw.agentwrite([{"instruction": "Write about rivers in 400 words.", "source": ""}], eng, s)
    writes = [r for r in eng.seen if r.json_schema is None]
    assert len(writes) == 3 and len(samples[0].paragraphs) == 3
    assert [m["role"] for m in writes[-1].messages] == ["user", "assistant", "user", "assistant", "user"]


def test_a_write_prompt_that_does_not_exist_is_refused_when_the_settings_are_made():
    with pytest.raises(ValueError, match="write_prompt"):
        aw.Settings(write_prompt="fancy")


def test_braces_in_an_instruction_never_take_the_place_of_the_text_so_far(scripted):
    """The single layout used to put the text so far into the first '{text}' of the prompt, which could be
    inside the instruction or a plan point the model wrote."""
    s = aw.Settings(min_paragraph=60, max_paragraph=80, write_prompt="concise")
    smp = aw.prepare([{"instruction": "Explain the {text} placeholder in 300 words.", "source": ""}], s)[0]
    smp.plan = [{"main_point": "what {text} means", "words": 150}, {"main_point": "b", "words": 150}]
    smp.paragraphs, smp.step_targets, smp.words_out = ["First paragraph here."], [150], 3
    prompt = aw.step_request(smp, 1, scripted(), s, {"en": 1.3}).messages[0]["content"]
    assert "Explain the {text} placeholder" in prompt and "what {text} means" in prompt
    assert "Text written so far:\nFirst paragraph here." in prompt


def test_the_penalty_window_is_a_setting_that_reaches_every_step(scripted):
    """AgentWrite's and Self-Lengthen's `repetition_window` is checked before any call and sent with every
    penalized call (the engines apply the penalty over it: Request.repetition_window)."""
    from lendata.methods.self_lengthen import steps as sl

    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="repetition_window"):
            aw.Settings(repetition_window=bad)
        with pytest.raises(ValueError, match="repetition_window"):
            sl.Settings(repetition_window=bad)
    eng = scripted(_writer())
    aw.agentwrite([{"instruction": "Write about rivers in 300 words.", "source": ""}], eng,
                  aw.Settings(min_paragraph=100, max_paragraph=150, repetition_window=24))
    steps = [r for r in eng.seen if r.json_schema is None]
    assert steps and {(r.repetition_penalty, r.repetition_window) for r in steps} == {(1.1, 24)}
    chats = [({"role": "user", "content": "Write about hills."},)]
    made = sl._sampled(eng, chats, [1], sl.Settings(repetition_window=24), None)
    assert [(r.repetition_penalty, r.repetition_window) for r in made] == [(1.1, 24)]
