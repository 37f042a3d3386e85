"""AgentWrite's writing (LongWriter, METHODS.md §3): each sample's steps as one chain (engines/chains.py).

A step's word target is what remains of the goal in the plan's proportions, its token budget that target times
the sample's own tokens per word; its prompt holds the instruction, the plan and the most recent text that fits
the window. A paragraph that fails or loops is resampled (a new seed), a last paragraph cut at its limit is
continued from where it stopped, and a paragraph cut anywhere else is trimmed to its last sentence. Deviations
from the reference are listed in plan_and_write.py.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lendata.engines.base import (
    DECODING_OPTIONS,
    Engine,
    OnResult,
    Request,
    continues_prefill,
    enforces,
    estimate_prompt_tokens,
)
from lendata.engines.chains import Chain, run_chains
from lendata.lengths import count_words
from lendata.methods.shared import checks
from lendata.methods.shared.budget import measure_tokens_per_word
from lendata.methods.shared.continuation import (  # noqa: F401 - re-exported for plan_and_write
    CONTINUE_MIN_TOKENS,
    PARAGRAPH_END,
    continuation_tokens,
    continue_cut,
)

if TYPE_CHECKING:  # the data types live beside the plan; at run time this module needs only their attributes
    from lendata.methods.agentwrite.plan_and_write import Sample, Settings

log = logging.getLogger("lendata.agentwrite")

WRITE_PROMPT = """You are an excellent writing assistant. I will give you an original writing instruction and \
my planned writing steps. I will also provide you with the text I have already written. Please help me \
continue writing the next paragraph based on the writing instruction, writing steps, and the already written \
text.

Writing instruction:
{instruction}

Writing steps:
{plan}

Already written text:
{text}

Please integrate the original writing instruction, writing steps, and the already written text, and now \
continue writing step {step}: {point} ({words} words). If needed, you can add a small subtitle at the \
beginning. Remember to only output the paragraph you write, without repeating the already written text. As \
this is an ongoing work, omit open-ended conclusions or other rhetorical hooks."""

# Small models answer the reference prompt conversationally ("I'm happy to help..."); this one asks only for
# the text. Same inputs: instruction, plan, text so far, current step.
WRITE_PROMPT_CONCISE = """Task: {instruction}

Outline:
{plan}

Text written so far:
{text}

Write section {step} of the outline now: {point}. Write about {words} words of the text itself, continuing \
from where the text so far ends. Do not greet, do not comment on the task, do not repeat earlier sections. \
This is an ongoing work: omit open-ended conclusions or other rhetorical hooks."""

WRITE_PROMPTS = {"longwriter": WRITE_PROMPT, "concise": WRITE_PROMPT_CONCISE}

# `step_layout: turns` (a deviation, issue 19): the steps as one conversation. The first turn asks for step 1
# with the instruction and the plan; each paragraph is the assistant's answer and the next step a user turn,
# so every step's prompt is the previous one plus the paragraph just written plus a request: an engine with a
# prefix cache (vLLM) reuses all of it, including the paragraph it just decoded, where the reference's one
# message per step puts the new paragraph before a closing request and evaluates it again. Same inputs and the
# same requests as WRITE_PROMPTS, reworded as turns, with the step's own ask last.
# Each ask ends in its step's number: the no-repeat ban reads prompt and paragraph as one sequence, and asks that
# all ended in the same words would put the same words before every paragraph (the chat template's role word
# after them is the same too), so opening like any earlier paragraph would complete a banned n-gram. The word
# target or the main point is not enough: steps often have equal targets, and the tokenizer splits "150" into
# three digits, which leaves no room for the point in the ban's window.
TURN_FIRST = """You are an excellent writing assistant. I will give you an original writing instruction and my \
planned writing steps. Please help me write the text one step at a time, one paragraph per step.

Writing instruction:
{instruction}

Writing steps:
{plan}

If needed, you can add a small subtitle at the beginning. Remember to only output the paragraph you write. As \
this is an ongoing work, omit open-ended conclusions or other rhetorical hooks. Now write step 1: {point} \
({words} words, step 1)."""

TURN_NEXT = """Integrating the writing instruction, the writing steps and the text already written, continue \
the text. If needed, you can add a small subtitle at the beginning. Remember to only output the paragraph you \
write, without repeating the already written text. As this is an ongoing work, omit open-ended conclusions or \
other rhetorical hooks. Now write step {step}: {point} ({words} words, step {step})."""

TURN_FIRST_CONCISE = """Task: {instruction}

Outline:
{plan}

I will ask for the text one section at a time. Write the text itself: do not greet, do not comment on the \
task. This is an ongoing work: omit open-ended conclusions or other rhetorical hooks. Write section 1 of the \
outline now: {point}, about {words} words (section 1)."""

TURN_NEXT_CONCISE = """Continue from where the text so far ends, writing the text itself: do not greet, do not \
comment on the task, do not repeat earlier sections. This is an ongoing work: omit open-ended conclusions or \
other rhetorical hooks. Write section {step} of the outline now: {point}, about {words} words (section \
{step})."""

TURN_PROMPTS = {"longwriter": (TURN_FIRST, TURN_NEXT), "concise": (TURN_FIRST_CONCISE, TURN_NEXT_CONCISE)}
STEP_LAYOUTS = ("single", "turns")


# --- 3. write, step by step --------------------------------------------------------------------------


def _seed(base: int, sid: str, what: str) -> int:
    return (base * 1_000_003 + int(hashlib.sha256(f"{sid}|{what}".encode()).hexdigest()[:8], 16)) % (2**31)


def render_plan(plan: list[dict[str, Any]]) -> str:
    return "\n".join(f"Step {i}: {p['main_point']} ({p['words']} words)" for i, p in enumerate(plan, 1))


def fit_text(
    fixed_tokens: int, text: str, budget: int, count: Callable[[list[str]], list[int]]
) -> str:
    """The most recent part of `text` that fits in `budget - fixed_tokens` tokens (whole paragraphs first)."""
    room = budget - fixed_tokens
    if room <= 0 or not text:
        return ""
    if count([text])[0] <= room:
        return text
    paras = text.split("\n\n")
    kept: list[str] = []
    for p in reversed(paras):  # newest paragraphs first
        if count(["\n\n".join([p, *kept])])[0] > room:
            break
        kept.insert(0, p)
    if kept:
        return "...\n\n" + "\n\n".join(kept)
    tail = paras[-1]  # even the last paragraph is too long: keep its end
    while tail and count([tail])[0] > room:
        tail = tail[len(tail) // 4 :]
    return "..." + tail


def step_request(smp: Sample, step: int, engine: Engine, s: Settings, tpw_prior: dict[str, float]) -> Request:
    """Step `step` of `smp`: its word target is what remains of the goal in the plan's proportions; its prompt
    holds the instruction, the plan and the most recent text that fits the window beside the step's budget."""
    remaining = max(1, smp.goal - smp.words_out)
    rest = smp.plan[step:]
    share = smp.plan[step]["words"] / max(1, sum(p["words"] for p in rest))
    words = max(10, round(remaining * share))
    # a server that reports no usage gives 0 tokens: the prior then, not a 16-token budget for every step
    tpw = (smp.tokens_out / smp.words_written if smp.words_written >= 50 and smp.tokens_out > 0
           else tpw_prior[smp.language])
    max_tokens = max(16, math.ceil(words * tpw * s.max_ratio))
    min_tokens = min(max_tokens, math.floor(words * tpw * s.min_ratio))
    turns = s.step_layout == "turns"
    if turns:
        fixed = _tokens(engine, _conversation(smp, step, words, s, frm=max(0, step - 1), last=""))
    else:  # the text so far goes in by format, never by replacing "{text}", which an instruction may hold
        def single(text: str) -> str:
            return WRITE_PROMPTS[s.write_prompt].format(
                instruction=smp.instruction, plan=render_plan(smp.plan), text=text, step=step + 1,
                point=smp.plan[step]["main_point"], words=words)

        fixed = _tokens(engine, [{"role": "user", "content": single("")}])
    # a last step may be continued (continue_step): its prompt leaves room for the continuations too
    reserve = s.continue_attempts * continuation_tokens(max_tokens) if step == len(smp.plan) - 1 else 0
    budget = engine.context_window - max_tokens - reserve - 16
    if budget - fixed < 0:  # the window cannot hold this step's output: shrink it to what fits
        max_tokens = max(16, engine.context_window - fixed - reserve - 16)
        min_tokens = min(min_tokens, max_tokens)
        budget = engine.context_window - max_tokens - reserve - 16
    if turns:
        messages = fit_turns(smp, step, words, s, engine, fixed, budget)
    else:
        text = fit_text(fixed, smp.text, budget, engine.count_tokens) or "(nothing yet)"
        messages = [{"role": "user", "content": single(text)}]
    smp.step_targets.append(words)
    return Request(
        messages=tuple(messages),
        max_tokens=max_tokens, min_tokens=min_tokens, temperature=s.temperature, top_p=s.top_p,
        # zh: a character is 1-3 byte-level tokens, so the same span takes about twice the n
        repetition_penalty=s.repetition_penalty, repetition_window=s.repetition_window,
        no_repeat_ngram=s.no_repeat_ngram * (2 if smp.language == "zh" else 1),
        end_at_sentence=s.end_at_sentence, seed=_seed(s.seed, smp.id, f"step{step}"),
    )


def _tokens(engine: Engine, messages: list[dict[str, str]]) -> int:
    return estimate_prompt_tokens(engine, [tuple(messages)])[0]


def _conversation(smp: Sample, step: int, words: int, s: Settings, frm: int,
                  last: str | None = None) -> list[dict[str, str]]:
    """Step `step`'s prompt in the turns layout: the first turn (instruction, plan, the ask for step 1), then
    paragraph j and the ask for step j + 2 for every earlier step j from `frm` on; every ask as it was sent
    (the word targets recorded in `step_targets`), so each step's prompt extends the previous one. When older
    paragraphs left (`frm` > 0), an assistant turn "..." stands for them and the ask for paragraph `frm` comes
    before it, so every paragraph still follows its own ask. `last` replaces the newest paragraph (a window
    too small for it)."""
    first, ask = TURN_PROMPTS[s.write_prompt]
    targets = [*smp.step_targets[:step], words]

    def asking(j: int) -> dict[str, str]:
        return {"role": "user", "content": ask.format(step=j + 1, point=smp.plan[j]["main_point"], words=targets[j])}

    out = [{"role": "user", "content": first.format(instruction=smp.instruction, plan=render_plan(smp.plan),
                                                     point=smp.plan[0]["main_point"], words=targets[0])}]
    if frm > 0:
        out += [{"role": "assistant", "content": "..."}, asking(frm)]
    for j in range(frm, step):
        text = last if last is not None and j == step - 1 else smp.paragraphs[j]
        out += [{"role": "assistant", "content": text}, asking(j + 1)]
    return out


def fit_turns(smp: Sample, step: int, words: int, s: Settings, engine: Engine, fixed: int,
              budget: int) -> list[dict[str, str]]:
    """The turns-layout prompt of step `step` within `budget` tokens. When the whole conversation does not
    fit, the oldest paragraphs (with their asks) are dropped in a block, down to half of the room they may
    take, and stay dropped (`smp.turns_from`): consecutive steps then extend one conversation again instead of
    each losing one more turn, which would change every prompt's beginning and leave nothing for a prefix
    cache. The last step has no step after it to gain from that, so it drops only what it must. The first
    turn (instruction, plan) is always kept, and so is the newest paragraph; if even that is too long, its
    end."""
    frm = min(smp.turns_from, max(0, step - 1))
    messages = _conversation(smp, step, words, s, frm)
    size = _tokens(engine, messages)  # each candidate conversation is counted once
    if size <= budget:
        return messages
    last_step = step == min(s.max_steps, len(smp.plan)) - 1
    room = budget if last_step else min(budget, fixed + (budget - fixed) // 2)
    while frm < step - 1 and size > room:
        frm += 1
        messages = _conversation(smp, step, words, s, frm)
        size = _tokens(engine, messages)
    smp.turns_from = frm
    if step == 0 or size <= budget:
        return messages
    tail = fit_text(fixed, smp.paragraphs[step - 1], budget, engine.count_tokens) or "..."
    return _conversation(smp, step, words, s, frm, last=tail)


def continue_step(req: Request, res: Any, engine: Engine, s: Settings) -> Chain[Any]:
    """A step that stopped at its token limit, continued from where it stopped (shared/continuation.py) up to
    `continue_attempts` times; failing every attempt, the cut paragraph stays and is trimmed as before."""
    return (yield from continue_cut(req, res, engine, s.continue_attempts))


def write_chain(smp: Sample, engine: Engine, s: Settings, tpw_prior: dict[str, float],
                on_step: Callable[[int], None] | None = None) -> Chain[None]:
    """A sample's steps in order (engines/chains.py): each step's call, its resamples when it failed or loops,
    its continuation when it is the last and was cut, then the paragraph recorded. `on_step(n)`: n more of
    the sample's steps are done (the rest at once when the sample fails)."""
    steps = min(s.max_steps, len(smp.plan))
    if smp.failed:  # failed before writing (a caller's own sample): nothing to write
        if on_step:
            on_step(steps)
        return
    for step in range(steps):
        req = step_request(smp, step, engine, s, tpw_prior)
        res = yield req
        # a failed or looping paragraph is sampled again (bounded); the least repetitive candidate wins
        # a paragraph that repeats itself or re-writes the recent text counts as a loop
        bad = _step_badness(res, smp, s)
        for attempt in range(1, s.step_attempts):
            if bad == 0:
                break
            again = yield _resample(req, attempt)
            if (worse := _step_badness(again, smp, s)) < bad:
                res, bad = again, worse
        # only a sample's last step is continued: a middle paragraph cut at its limit is trimmed to its last
        # sentence and the next step goes on from there, but the text's own ending must be the model's.
        # Without end_at_sentence a continuation runs to a paragraph break, so one already well over its word
        # target is trimmed instead (continuing it would cost length fidelity); with it, a continuation adds
        # one sentence at most
        if step == len(smp.plan) - 1 and (
                s.end_at_sentence or count_words(res.text, s.word_counter) < 1.25 * smp.step_targets[-1]):
            res = yield from continue_step(req, res, engine, s)
        if not res.ok:  # never a placeholder in the data: the row fails
            smp.failed = f"step {step + 1} failed: {res.error}"
            if on_step:
                on_step(steps - step)  # this step and the ones that will never be written
            return
        _record_step(smp, step, res, s)
        if on_step:
            on_step(1)


def _record_step(smp: Sample, step: int, res: Any, s: Settings) -> None:
    raw = checks.strip_step_label(res.text)
    # a paragraph cut at its limit goes back to its last sentence end; so does the text's last paragraph when it
    # ends mid-sentence (a continuation stopped at a paragraph break); a middle paragraph that ends on a heading
    # or a list is left as written
    cut = res.finish_reason == "length" or step == len(smp.plan) - 1
    para = checks.trim_to_sentence(raw, smp.language) if cut else raw.strip()
    raw_words = count_words(raw, s.word_counter)
    if raw_words:  # this sample's own tokens per word, for the next steps' budgets
        smp.tokens_out += res.completion_tokens
        smp.words_written += raw_words
        smp.words_out += raw_words
    kept = count_words(para, s.word_counter)
    smp.words_out += kept - raw_words  # what was trimmed away no longer counts
    smp.paragraphs.append(para)
    smp.step_words.append(kept)
    smp.step_finish.append(res.finish_reason)


def write(samples: list[Sample], engine: Engine, s: Settings, on_result: OnResult | None = None,
          on_step: Callable[[int, int], None] | None = None) -> None:
    """Write every planned sample's steps (`write_chain`), all samples at once."""
    s = _decoding_options_for(engine, s)
    tpw_prior = measure_tokens_per_word(engine, s.word_counter)
    run_chains(engine, [write_chain(smp, engine, s, tpw_prior, on_step and (lambda n, i=i: on_step(i, n)))
                        for i, smp in enumerate(samples)], on_result)


def _decoding_options_for(engine: Engine, s: Settings) -> Settings:
    """`s` without the decoding options the engine cannot enforce (it would refuse every step), with a warning:
    the steps then go as in the reference, loops resampled after the fact and cut paragraphs trimmed."""
    from dataclasses import replace

    if s.continue_attempts and not continues_prefill(engine):
        log.warning("agentwrite: the %s engine does not continue a prefilled assistant turn (a server that answers "
                    "it with a new turn would glue a fresh answer onto the cut paragraph): a last step cut at its "
                    "limit is trimmed to its last sentence instead of continued", engine.name)
        s = replace(s, continue_attempts=0)  # nor is room kept in the window for continuations never sent
    dropped = [o for o in DECODING_OPTIONS if getattr(s, o) and not enforces(engine, o)]  # same names as Request
    if not dropped:
        return s
    log.warning("agentwrite: the %s engine cannot enforce %s while decoding; writing without (loops are "
                "resampled after the fact, cut paragraphs trimmed)", engine.name, ", ".join(dropped))
    return replace(s, **{o: type(getattr(s, o))() for o in dropped})


def _step_badness(res: Any, smp: Sample, s: Settings) -> float:
    """0 for a usable paragraph; higher is worse: an error, else how often one of its n-grams occurs in the
    paragraph plus the sample's recent text (the last ~2 paragraphs' worth)."""
    if not res.ok:
        return math.inf
    before = smp.text[-3000:]
    reps = checks.new_text_repeats(before, res.text, checks.default_n(smp.language), smp.language)
    return max(0, reps - 1)


def _resample(req: Request, attempt: int) -> Request:
    """Another sample of the same request. The seed moves too: an engine seeds from `seed` alone (llama.cpp
    does), so a new `sample_index` with the old seed gave the same text again and retries were wasted."""
    from dataclasses import replace

    seed = None if req.seed is None else (req.seed + 1_000_003 * attempt) % 2**31
    return replace(req, sample_index=req.sample_index + attempt, seed=seed)
