"""AgentWrite (LongWriter, METHODS.md §3): plan a long answer as paragraphs with word counts, then write them.

Where the reference trusts the model, this version controls length through the pipeline, so even a 135M
model hits its targets:

- the plan is JSON-schema constrained output, retried, then *repaired*: paragraph count and word counts are
  rescaled to the goal and kept within paragraph bounds; an even fallback plan is used when no attempt
  parses (`plan_source` says which);
- every step gets `min_tokens`/`max_tokens` from its word target and a tokens-per-word estimate that is
  re-measured on the sample's own output after each step, and each step's target is what remains of the
  goal, so errors of early steps are corrected by later ones;
- each sample is one chain of calls (its plan, then its steps; engines/chains.py) and all samples run at once:
  on vLLM and servers a sample's next call joins the running batch the moment its previous one finishes (continuous
  batching), elsewhere the current call of every sample goes in one batch ("rounds"); each prompt is fitted
  to the context window by keeping the instruction, the plan and the most recent text that fits, in that order
  (consecutive steps share the instruction and the plan, and the text so far while it fits whole, a prefix
  vLLM's prefix cache reuses). The steps are in writing.py;
- `step_layout: turns` (off by default) lays the steps out as one conversation instead of one message per
  step: each paragraph is the assistant's turn and each step a user turn with the step's ask (ending in its
  number, for the no-repeat ban), so a step's prompt is the previous one plus the paragraph just decoded, which
  vLLM's prefix cache serves; on overflow the oldest turns leave in a block behind a "..." turn (writing.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lendata.engines.base import Engine, OnResult, Request, check_repetition_window, estimate_prompt_tokens
from lendata.engines.chains import Chain, run_chains
from lendata.engines.identity import model_name
from lendata.lengths import WordCounter, count_words, length_score
from lendata.methods.agentwrite.writing import (  # noqa: F401  (re-exported: the method's one namespace)
    CONTINUE_MIN_TOKENS,
    PARAGRAPH_END,
    STEP_LAYOUTS,
    TURN_PROMPTS,
    WRITE_PROMPT,
    WRITE_PROMPT_CONCISE,
    WRITE_PROMPTS,
    _decoding_options_for,
    _record_step,
    _resample,
    _seed,
    _step_badness,
    continuation_tokens,
    continue_step,
    fit_text,
    fit_turns,
    render_plan,
    step_request,
    write,
    write_chain,
)
from lendata.methods.shared import checks
from lendata.methods.shared.budget import language_of, measure_tokens_per_word
from lendata.methods.shared.constraints import Constraint, constrain, draw, extract
from lendata.methods.shared.continuation import check_attempts
from lendata.methods.shared.inputs import InstructionInput
from lendata.methods.shared.quality_gate import JudgeGate
from lendata.methods.shared.sft import MESSAGE, RESPONSE_FIELDS, row_id

PLAN_PROMPT = """I need you to help me break down the following long-form writing instruction into multiple \
subtasks. Each subtask will guide the writing of one paragraph in the essay, and should include the main point \
and the word count of that paragraph.

The writing instruction is as follows:
{instruction}

Make sure that each subtask is clear and specific, and that all subtasks cover the entire content of the \
writing instruction. Do not split the subtasks too finely; each subtask's paragraph should be no less than \
{min_words} words and no more than {max_words} words, and the word counts should add up to about {total} words. \
Answer in JSON: {{"paragraphs": [{{"main_point": "...", "words": N}}, ...]}}"""

log = logging.getLogger("lendata.agentwrite")

PLAN_ITEM = pa.struct([("main_point", pa.large_string()), ("words", pa.int32())])


@dataclass
class Settings(InstructionInput, JudgeGate):
    temperature: float = 0.5  # sampling temperature of plans and paragraphs
    top_p: float = 0.95  # nucleus sampling
    repetition_penalty: float = 1.1  # llama.cpp/vLLM repetition penalty
    repetition_window: int = 64  # the penalty counts the ids of the last this many tokens written (Request)
    # never complete an n-gram of this size of word keys (engines/no_repeat.py: a token's letters and digits,
    # lower-cased) already in the prompt (which holds the text so far) or the paragraph: loops are prevented
    # while decoding instead of resampled afterwards. 0 = off (the reference). A copy whose words the tokenizer
    # splits differently still passes; the step check after decoding catches it. llamacpp and vllm.
    no_repeat_ngram: int = 0  # ban repeating a word-key n-gram of prompt or output while decoding (0 = off)
    # end each step at its first sentence end once its min_tokens are out (llamacpp and vllm), instead of
    # running to max_tokens and being trimmed; off in the reference
    end_at_sentence: bool = False  # end each step at its first sentence end after its minimum
    continue_attempts: int = 0  # a last step that hits its token limit is continued this often before it is trimmed
    seed: int = 42  # per-sample seeds derive from this and the sample id
    word_counter: WordCounter = "longwriter"  # longwriter | longen | ruler
    min_paragraph: int = 200  # paragraph word bounds after plan repair (LongWriter: 200-1000)
    max_paragraph: int = 1000  # upper paragraph word bound
    plan_attempts: int = 3  # schema-constrained plan calls before the even fallback plan
    # a plan call's budget is sized to the target: room for the most paragraphs the bounds allow, each main
    # point up to plan_point_chars long, priced by the engine's tokenizer
    plan_max_tokens: int = 4096  # the most a plan call's budget may be (the reference's 4,096)
    plan_point_chars: int = 200  # longest main point a plan item may have (the JSON schema's maxLength)
    step_attempts: int = 3  # samples per step when a paragraph fails or repeats itself
    min_ratio: float = 0.9  # step min_tokens = words x tokens/word x min_ratio
    max_ratio: float = 1.1  # step max_tokens = words x tokens/word x max_ratio
    bound_margin: float = 0.1  # "above N" aims at N(1+margin), "below N" at N(1-margin)
    target_low: int = 500  # drawn targets for instructions that state none
    target_high: int = 3000  # ...up to this many words
    target_types: tuple[str, ...] = ("about",)  # constraint types of drawn targets (about, range, above, below)
    max_steps: int = 50  # paragraphs (write steps) per sample at most
    write_prompt: str = "longwriter"  # longwriter (the reference prompt) | concise (better for small models)
    # single: each step one message holding instruction, plan, text so far and the ask (the reference); turns:
    # the steps as one conversation, each paragraph the assistant's turn, so each step's prompt extends the last
    # one and vLLM's prefix cache serves it (writing.py)
    step_layout: str = "single"  # single (the reference) | turns (one conversation; faster on vLLM, not llama.cpp)
    # output filters
    min_length_share: float = 0.8  # quarantine when words < share x the constraint's lower edge
    tail_share: float = 0.3  # the share of the text at its end checked for repetition
    tail_ngram_repeats: int = 3  # quarantine when an n-gram occurs this often in the tail

    def __post_init__(self) -> None:
        check_attempts(self.continue_attempts)
        check_repetition_window(self.repetition_window)
        if self.write_prompt not in WRITE_PROMPTS:
            raise ValueError(f"write_prompt must be one of {', '.join(WRITE_PROMPTS)}, got {self.write_prompt!r}")
        if self.step_layout not in STEP_LAYOUTS:
            raise ValueError(f"step_layout must be one of {', '.join(STEP_LAYOUTS)}, got {self.step_layout!r}")
        super().__post_init__()


@dataclass
class Sample:
    id: str
    instruction: str
    language: str
    constraint: Constraint
    goal: int
    source: str = ""
    plan: list[dict[str, Any]] = field(default_factory=list)
    plan_source: str = ""
    plan_fallback: str | None = None  # why the even fallback plan was used (the last attempt's failure)
    paragraphs: list[str] = field(default_factory=list)
    step_targets: list[int] = field(default_factory=list)
    step_words: list[int] = field(default_factory=list)
    step_finish: list[str] = field(default_factory=list)
    tokens_out: int = 0  # completion tokens of every step
    words_out: int = 0  # words kept in the text (after trimming)
    words_written: int = 0  # words of every step as generated (before trimming): tokens_out bought these
    failed: str | None = None
    turns_from: int = 0  # step_layout turns: the oldest paragraph still in the prompt (older ones left the window)

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


# --- 1. instructions in -------------------------------------------------------------------------------


def prepare(rows: Sequence[dict[str, Any]], s: Settings) -> list[Sample]:
    """Target and constraint per row: explicit target field, else stated in the text, else drawn."""
    out = []
    for row in rows:
        text = row["instruction"]
        lang = language_of(text)
        stated = extract(text)
        if row.get("target"):
            c = Constraint(stated.ctype, int(row["target"]), stated.high) if stated else Constraint(
                "about", int(row["target"]))
            if c.ctype == "range" and (c.high or 0) <= c.low:
                c = Constraint("about", c.low)
        elif stated:
            c = stated
        else:  # a plain instruction: draw a length and state it, so the SFT pair is consistent
            rng = random.Random(int(hashlib.sha256(f"{s.seed}|{text}".encode()).hexdigest()[:8], 16))
            c = draw(rng, s.target_low, s.target_high, s.target_types)
            text = constrain(text, c, lang)
        sid = row_id("agentwrite", text, c.ctype, c.low, c.high, s.seed)
        out.append(Sample(sid, text, lang, c, c.goal(s.bound_margin), row.get("source", "")))
    return out


# --- 2. plan ------------------------------------------------------------------------------------------


def plan_schema(min_items: int, max_items: int, point_chars: int) -> dict[str, Any]:
    # bounded strings and arrays: an unbounded grammar lets a small model loop until max_tokens; the item
    # bounds are the paragraph bounds, so the model chooses its paragraphs and the grammar keeps them feasible
    return {
        "type": "object",
        "properties": {
            "paragraphs": {
                "type": "array",
                "minItems": min_items,
                "maxItems": max_items,
                "items": {
                    "type": "object",
                    "properties": {
                        "main_point": {"type": "string", "minLength": 3, "maxLength": point_chars},
                        "words": {"type": "integer", "minimum": 1, "maximum": 100000},
                    },
                    "required": ["main_point", "words"],
                },
            }
        },
        "required": ["paragraphs"],
    }


_PLAN_FRAME_TOKENS = 32  # '{"paragraphs": [' ... ']}' and the end of the turn, generously


def plan_item_tokens(engine: Engine, instruction: str, s: Settings) -> int:
    """Tokens of the longest plan item the schema allows, in the instruction's script, by the engine's own
    tokenizer (a Chinese main point costs several times an English one)."""
    filler = (instruction.strip() or "x") * (s.plan_point_chars // max(1, len(instruction.strip())) + 1)
    # priced as indented JSON: the grammars of llama.cpp and vLLM let a model put newlines and indentation
    # between the tokens of an item, which costs more than the compact form
    item = json.dumps({"main_point": filler[: s.plan_point_chars], "words": 100000}, ensure_ascii=False,
                      indent=4) + ",\n"
    return engine.count_tokens([item])[0] + 4


def plan_request_shape(smp: Sample, prompt: str, engine: Engine, s: Settings) -> tuple[int, int, int]:
    """(fewest items, most items, max_tokens) of one plan call: room for the most paragraphs the bounds allow,
    within `plan_max_tokens` and what the context window leaves after the prompt. When even that is too little,
    the item bound shrinks to what fits (repair then splits paragraphs back to the bounds)."""
    lo, hi = paragraph_count(smp.goal, s)
    item = plan_item_tokens(engine, smp.instruction, s)
    prompt_tokens = estimate_prompt_tokens(engine, [({"role": "user", "content": prompt},)])[0]
    room = min(s.plan_max_tokens, engine.context_window - prompt_tokens - 16)
    fits = max(1, (room - _PLAN_FRAME_TOKENS) // item)
    most = min(hi, fits)
    return min(lo, most), most, max(1, min(room, _PLAN_FRAME_TOKENS + most * item))


def paragraph_count(goal: int, s: Settings) -> tuple[int, int]:
    """(fewest, most) paragraphs that keep every paragraph within the bounds; short goals get one. Never more
    than `max_steps` (the writer stops there): a goal that needs more gets paragraphs over `max_paragraph`."""
    if goal <= s.min_paragraph:
        return 1, 1
    lo = min(s.max_steps, max(1, math.ceil(goal / s.max_paragraph)))
    hi = max(lo, min(s.max_steps, goal // s.min_paragraph))
    return lo, hi


def _paragraph_max(goal: int, k: int, s: Settings) -> int:
    """The upper paragraph bound for k paragraphs: `max_paragraph`, or what k paragraphs need to reach the goal."""
    return max(s.max_paragraph, math.ceil(goal / max(1, k)))


def parse_plan(text: str) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(text, strict=False)  # grammars allow raw newlines inside strings
    except (json.JSONDecodeError, TypeError):
        return None
    items = data.get("paragraphs") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    plan = []
    for it in items:
        if not isinstance(it, dict):
            continue
        point = str(it.get("main_point") or "").strip()
        words = it.get("words")
        if point:
            plan.append({"main_point": point, "words": words if isinstance(words, int) and words > 0 else 0})
    return plan or None


def _distribute(total: int, weights: list[float], lo: int, hi: int) -> list[int]:
    """Integers summing to `total`, proportional to `weights`, each within [lo, hi] when feasible."""
    k = len(weights)
    w = [max(x, 1e-9) for x in weights]
    fixed: dict[int, int] = {}
    for _ in range(k + 1):  # water-filling: pin the ones that break a bound, rescale the rest
        free = [i for i in range(k) if i not in fixed]
        if not free:
            break
        rest = total - sum(fixed.values())
        scale = rest / sum(w[i] for i in free)
        broke = False
        for i in free:
            v = w[i] * scale
            if v < lo or v > hi:
                fixed[i] = lo if v < lo else hi
                broke = True
        if not broke:
            break
    free = [i for i in range(k) if i not in fixed]
    rest = total - sum(fixed.values())
    raw = {i: w[i] * rest / sum(w[j] for j in free) for i in free} if free else {}
    out = [fixed.get(i, 0) for i in range(k)]
    floors = {i: math.floor(v) for i, v in raw.items()}
    for i, v in floors.items():
        out[i] = v
    short = total - sum(out)
    for i in sorted(raw, key=lambda i: raw[i] - floors[i], reverse=True)[: max(0, short)]:
        out[i] += 1
    return out


def repair_plan(plan: list[dict[str, Any]] | None, goal: int, s: Settings) -> tuple[list[dict[str, Any]], str]:
    """Fit a plan to the goal: paragraph count within bounds, word counts rescaled to sum to the goal."""
    lo, hi = paragraph_count(goal, s)
    if not plan:
        k = lo if goal <= s.min_paragraph else min(hi, max(lo, round(goal / ((s.min_paragraph + s.max_paragraph) / 2))))
        points = fallback_points(k)
        words = _distribute(goal, [1.0] * k, min(s.min_paragraph, goal), _paragraph_max(goal, k, s))
        return [{"main_point": p, "words": w} for p, w in zip(points, words, strict=True)], "fallback"
    items = [dict(p) for p in plan]
    changed = False
    while len(items) > hi:  # merge the two adjacent paragraphs with the fewest words
        j = min(range(len(items) - 1), key=lambda i: items[i]["words"] + items[i + 1]["words"])
        a, b = items[j], items.pop(j + 1)
        items[j] = {"main_point": f"{a['main_point']}; {b['main_point']}", "words": a["words"] + b["words"]}
        changed = True
    while len(items) < lo:  # split the largest paragraph
        j = max(range(len(items)), key=lambda i: items[i]["words"])
        half = items[j]["words"] / 2
        items[j:j + 1] = [{"main_point": items[j]["main_point"], "words": half},
                          {"main_point": f"{items[j]['main_point']} (continued)", "words": half}]
        changed = True
    weights = [float(p["words"]) for p in items]
    if sum(weights) <= 0 or min(weights) <= 0:
        weights = [1.0] * len(items)
    words = _distribute(goal, weights, min(s.min_paragraph, goal), _paragraph_max(goal, len(items), s))
    changed |= words != [p["words"] for p in items]
    out = [{"main_point": p["main_point"], "words": w} for p, w in zip(items, words, strict=True)]
    return out, "model_repaired" if changed else "model"


def fallback_points(k: int) -> list[str]:
    if k == 1:
        return ["Answer the instruction completely"]
    middle = [f"Develop the main body of the answer (part {i} of {k - 2})" for i in range(1, k - 1)]
    return ["Introduce the topic and the approach", *middle, "Conclude and summarise the answer"][:k]


def _plan_failure(res: Any, max_tokens: int) -> str:
    if not res.ok:
        return f"engine error: {res.error}"
    if res.finish_reason == "length":
        return f"truncated at {max_tokens} tokens"
    return "not a plan (invalid JSON or no paragraph with a main point)"


def _plan_request(smp: Sample, engine: Engine, s: Settings) -> Request:
    """A sample's first plan call (later attempts differ only in `sample_index`)."""
    prompt = PLAN_PROMPT.format(
        instruction=smp.instruction, total=smp.goal, min_words=min(s.min_paragraph, smp.goal),
        max_words=max(s.max_paragraph, min(s.min_paragraph, smp.goal)),
    )
    fewest, most, max_tokens = plan_request_shape(smp, prompt, engine, s)
    return Request(
        messages=({"role": "user", "content": prompt},), max_tokens=max_tokens, temperature=s.temperature,
        top_p=s.top_p, seed=_seed(s.seed, smp.id, "plan"), json_schema=plan_schema(fewest, most, s.plan_point_chars),
    )


def plan_chain(smp: Sample, first: Request, s: Settings) -> Chain[None]:
    """A sample's plan calls (engines/chains.py): schema-constrained attempts until one parses, then repaired.
    A sample that ends on the even fallback plan records why (`plan_fallback`) and is logged as a warning."""
    parsed, failure = None, "no plan call"
    for attempt in range(s.plan_attempts):
        req = _resample(first, attempt)
        res = yield req
        parsed = parse_plan(res.text) if res.ok else None
        if parsed:
            break
        failure = _plan_failure(res, req.max_tokens)
    smp.plan, smp.plan_source = repair_plan(parsed, smp.goal, s)
    if smp.plan_source == "fallback":
        smp.plan_fallback = f"{failure} (after {s.plan_attempts} attempts)"
        log.warning("agentwrite: sample %s uses the even fallback plan: %s", smp.id, smp.plan_fallback)


def make_plans(samples: list[Sample], engine: Engine, s: Settings, on_result: OnResult | None = None,
               on_sample: Callable[[int], None] | None = None) -> None:
    """Plan every sample (`plan_chain`), all samples at once; `on_sample(i)` when sample i has its plan."""
    firsts = [_plan_request(smp, engine, s) for smp in samples]  # prompt and budget: sized once

    def chain(i: int, smp: Sample, first: Request) -> Chain[None]:
        yield from plan_chain(smp, first, s)
        if on_sample:
            on_sample(i)

    run_chains(engine, [chain(i, smp, first) for i, (smp, first) in enumerate(zip(samples, firsts, strict=True))],
               on_result)


def plan_and_write(samples: list[Sample], engine: Engine, s: Settings, on_result: OnResult | None = None,
                   on_sample: Callable[[int], None] | None = None) -> None:
    """Plan and write every sample, each as one chain (plan, then its steps): on an engine with continuous
    batching (vLLM, servers) a sample starts writing once its plan is done and never waits for the slowest
    sample of a step (with more samples than a server's `concurrency`, the plans still go out first).
    `on_result(i, result)` hears every call of sample i, `on_sample(i)` when sample i is finished."""
    firsts = [_plan_request(smp, engine, s) for smp in samples]
    writing = _decoding_options_for(engine, s)
    tpw_prior = measure_tokens_per_word(engine, s.word_counter)

    def chain(i: int, smp: Sample, first: Request) -> Chain[None]:
        yield from plan_chain(smp, first, s)
        yield from write_chain(smp, engine, writing, tpw_prior)
        if on_sample:
            on_sample(i)

    run_chains(engine, [chain(i, smp, first) for i, (smp, first) in enumerate(zip(samples, firsts, strict=True))],
               on_result)


# --- 4. output and filters ----------------------------------------------------------------------------

OUTPUT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(MESSAGE)),
    ("instruction", pa.large_string()),
    ("language", pa.string()),
    ("constraint_type", pa.string()),
    ("constraint_low", pa.int32()),
    ("constraint_high", pa.int32()),
    ("target_words", pa.int32()),
    ("plan", pa.list_(PLAN_ITEM)),
    ("plan_source", pa.string()),
    ("plan_fallback", pa.string()),
    ("step_targets", pa.list_(pa.int32())),
    ("step_words", pa.list_(pa.int32())),
    ("step_finish_reasons", pa.list_(pa.string())),
    *RESPONSE_FIELDS,
])


def defects(smp: Sample, words: int, s: Settings) -> list[str]:
    """Why a finished sample should not be training data (empty list: keep it)."""
    out = []
    c = smp.constraint
    low = {"about": 0.8 * c.low, "range": c.low, "above": c.low, "below": 0.5 * c.low}[c.ctype]
    if words < s.min_length_share * low:
        out.append(f"too short: {words} words for a {c.ctype} {c.low} target")
    tail_units = checks.units(smp.text, smp.language)
    tail = tail_units[int(len(tail_units) * (1 - s.tail_share)) :]
    n = checks.default_n(smp.language)
    joiner = "" if smp.language == "zh" else " "
    reps, gram = checks.max_ngram_repeats(joiner.join(tail), n, smp.language)
    if reps >= s.tail_ngram_repeats:
        out.append(f"repeated {n}-gram in the tail ({reps}x): {gram[:80]!r}")
    # the checks `lendata report` makes of a published row: a kept row must pass them too
    whole, whole_gram = checks.max_ngram_repeats(smp.text, n, smp.language)
    if reps < s.tail_ngram_repeats and whole >= s.tail_ngram_repeats:
        out.append(f"repeated {n}-gram ({whole}x): {whole_gram[:80]!r}")
    if not checks.ends_sentence(smp.text, smp.language):
        out.append("truncated ending: the text stops mid-sentence")
    elif smp.step_finish and smp.step_finish[-1] == "length":
        out.append("truncated ending: the last step stopped at its token limit")
    return out


def to_table(
    samples: list[Sample], engine: Engine, s: Settings
) -> tuple[pa.Table, list[dict[str, Any]]]:
    texts = [x.text for x in samples]
    tokens = engine.count_tokens(texts) if texts else []  # the tokenizer of the model that wrote them
    rows, quarantine = [], []
    for smp, ntok in zip(samples, tokens, strict=True):
        words = count_words(smp.text, s.word_counter)
        row = {
            "id": smp.id,
            "messages": [{"role": "user", "content": smp.instruction}, {"role": "assistant", "content": smp.text}],
            "instruction": smp.instruction,
            "language": smp.language,
            "constraint_type": smp.constraint.ctype,
            "constraint_low": smp.constraint.low,
            "constraint_high": smp.constraint.high,
            "target_words": smp.goal,
            "plan": smp.plan,
            "plan_source": smp.plan_source,
            "plan_fallback": smp.plan_fallback,
            "step_targets": smp.step_targets,
            "step_words": smp.step_words,
            "step_finish_reasons": smp.step_finish,
            "response_words": words,
            "response_chars": len(smp.text),
            "response_tokens": ntok,
            "length_score": length_score(smp.constraint.required(), words),
            "goal_score": length_score(smp.goal, words),
            "finish_reason": smp.step_finish[-1] if smp.step_finish else "error",
            "engine": engine.name,
            "model": model_name(engine.model_id),
            "source": smp.source,
        }
        why = [smp.failed] if smp.failed else defects(smp, words, s)
        if why:
            quarantine.append({"id": smp.id, "stage": "filter" if not smp.failed else "generate",
                               "reason": "; ".join(why), "source": smp.source,
                               "record": json.dumps(row, ensure_ascii=False, default=str)})
        else:
            rows.append(row)
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), quarantine


def agentwrite(
    rows: Sequence[dict[str, Any]], engine: Engine, s: Settings | None = None,
    on_result: OnResult | None = None,
) -> tuple[pa.Table, list[dict[str, Any]], list[Sample]]:
    """The whole method: (kept rows, quarantine records, every sample with its plan and steps). `on_result(i,
    result)` hears every engine call of sample i: plans and their retries, steps, resamples, continuations."""
    s = s or Settings()
    samples = prepare(rows, s)
    plan_and_write(samples, engine, s, on_result)
    table, quarantine = to_table(samples, engine, s)
    return table, quarantine, samples
