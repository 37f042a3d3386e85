"""Self-Lengthen (METHODS.md §4): a Generator writes, an Extender expands, over macro-iterations.

One macro-iteration, as functions over lists of rows:

0. `self_instruct`: two example instructions from the pool, the base model completes a third (it may span
   lines, up to the next "Instruction N" marker); kept when it has 3 < words < 500, is new, and a judge call
   (the base model too) says it suits a long article (> 2,000 words).
1. `generate`: k responses per instruction, each resampled (up to 20 times) until it passes
   `checks.response_check`; then drop_short over the initial responses, before any extension.
2. `extend`: every kept response is submitted for extension twice; each submission makes up to
   `extend_retries` (20) attempts of 3 micro-rounds: split -> extend the first half, keep 2/3 of it ->
   continue the extend prompt over the whole text after that prefix; a round is accepted only when it passes
   the check and is longer; an attempt succeeds when the text ends > 1.2x the original.
Sampling as the reference's client: T=0.7, top_p=0.8, top_k=20, repetition penalty 1.1. Deviation: the penalty
counts the ids of the last `repetition_window` (64) tokens written, on every engine (engines/base.py Request);
the reference's vLLM counted the prompt and all the output.

Differences from the reference, on purpose: every call carries a seed derived from the row and attempt, so a
rerun gives the same data (the reference stops each step at 95% completion, so its output depends on timing);
every step runs in rounds across rows (one engine batch per micro-step) instead of thread pools; with
`extend_no_repeat_ngram` (the shipped recipe: 8, the code default 0 as the reference) the extend calls may not
repeat an n-gram of word keys of their own answer while decoding (issue 19: loops were most failed rounds); zh sentence
endings accept ASCII `.!?`; no `---` stop string; a one-paragraph text extends as a whole instead of an empty
first half; the English extend prompt is lendata's own wording of the reference's (which only exists in
Chinese in the qwen folder). Every rejection is returned as a record with its stage and reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lendata.engines.base import (
    Engine,
    OnResult,
    Request,
    check_repetition_window,
    enforces,
    estimate_prompt_tokens,
    require_continues_prefill,
)
from lendata.engines.chains import Chain, run_chains
from lendata.lengths import WordCounter, count_words
from lendata.methods.self_lengthen.queries import QuerySettings
from lendata.methods.shared import checks
from lendata.methods.shared.budget import language_of
from lendata.methods.shared.quality_gate import JudgeGate
from lendata.methods.shared.sft import row_id
from lendata.training.lora import LoraSettings

log = logging.getLogger("lendata.self_lengthen")
# what needs an engine that continues a prefilled assistant turn (require_continues_prefill), named once
SELF_INSTRUCT_PREFILL = "self-instruct (its examples are the assistant's own turn)"
EXTENDER_PREFILL = "Self-Lengthen's extender"

SELF_INSTRUCT = {
    "en": ("Your task is to write user instructions that lead to the generation of long texts. Each instruction "
           "must be complete.", "Instruction 1: {a}\nInstruction 2: {b}\nInstruction 3:"),
    "zh": ("你的任务是构造一些可以引导长文本生成的用户指令，注意指令应该是完整结束的。",
           "指令1：{a}\n指令2：{b}\n指令3："),
}
JUDGE = {
    "en": ("Given a user instruction, decide whether it is suitable for guiding the generation of a long article "
           "(for example, more than 2,000 words). Answer only \"yes\" or \"no\", as JSON: {{\"answer\": \"yes\"}} "
           "or {{\"answer\": \"no\"}}.\n\n<instruction>\n{instruction}\n</instruction>"),
    "zh": ("给定一条用户的指令，请判断它是否适合指导长篇文章（比如，大于2000字）的生成。只返回“是”或“否”作为你的回答，"
           "格式为JSON：{{\"answer\": \"是\"}} 或 {{\"answer\": \"否\"}}。\n\n<指令>\n{instruction}\n</指令>"),
}
JUDGE_YES = {"en": "yes", "zh": "是"}
EXTEND = {
    "en": ("Based on the given instruction and the original outline, enhance the content by carefully expanding "
           "the original outline: add information, include details and improve the quality of its descriptions. "
           "Remember, your task is not to continue the content but to enrich the current content. You can do this "
           "by describing the existing paragraphs in more detail or by creating subheadings. Make the result as "
           "long, rich and engaging as you can, without long narration or any repeated content."
           "\n\nInstruction: {instruction}\n\nOriginal outline:\n\n{response}"),
    "zh": ("根据提供的指令和原始大纲，通过仔细扩展原始大纲来增强内容，增加信息，纳入细节，"
           "并提高其描述质量。记住，你的任务不是续写内容，而是丰富当前的内容。你可以通过更详细的"
           "描述丰富已有段落或创建子标题来实现这一点。请让内容尽可能长、丰富且引人入胜，但记住，不要在你的回复中包含冗长的叙述或任何重复的内容。\n\n指令：{instruction}\n\n原始大纲：\n\n{response}"),
}


ROLES = ("generator", "extender")
Role = Literal["generator", "extender"]


@dataclass
class RoleSettings:
    """What a role (the Generator or the Extender) uses instead of the recipe's engine; unset: the recipe's."""

    __pydantic_config__ = {"extra": "forbid"}  # a misspelt key inside `iteration_roles` is an error too

    engine: str | None = None  # llamacpp | openai | vllm
    engine_options: dict[str, Any] | None = None  # replace the recipe's engine_options for this role
    lora: str | None = None  # a LoRA adapter: a peft folder (every engine) or a LoRA GGUF (llamacpp)


def role_config(s: Settings, default: tuple[str, dict[str, Any]], role: str, iteration: int,
                adapter: str | None) -> dict[str, Any]:
    """engine / engine_options / lora of a role in an iteration: the recipe's engine (`default`), then the
    role's own settings, then `iteration_roles[iteration][role]`; a trained adapter applies unless a lora is
    named."""
    cfg: dict[str, Any] = {"engine": default[0], "engine_options": default[1] or {}, "lora": None}
    own: RoleSettings = getattr(s, role)
    cfg.update({k: v for k, v in dataclasses.asdict(own).items() if v is not None})
    per = s.iteration_roles or {}
    at = next((v for k, v in per.items() if str(k) == str(iteration)), None) or {}
    override: RoleSettings | None = at.get(role)
    if override is not None:
        cfg.update({k: v for k, v in dataclasses.asdict(override).items() if v is not None})
    if adapter and (override is None or override.lora is None):
        cfg["lora"] = adapter
    return cfg


@dataclass
class Settings:
    input: str = ""  # seed instructions (JSONL or Parquet, field `instruction_field`, optional `language`)
    instruction_field: str = "instruction"  # the field holding a seed instruction
    n: int = 8  # new instructions per iteration (step 0)
    iterations: int = 1  # macro-iterations; the adapters trained after each are used in the next
    generator: RoleSettings = field(default_factory=RoleSettings)  # the Generator's engine, options, lora
    extender: RoleSettings = field(default_factory=RoleSettings)  # the Extender's engine, options, lora
    iteration_roles: dict[int | str, dict[Role, RoleSettings]] = field(default_factory=dict)  # {2: {extender: {..}}}
    train: bool = True  # train both roles' adapters between iterations (the method's core); false: no training
    lora: LoraSettings = field(default_factory=LoraSettings)  # the built-in LoRA trainer's settings
    trainer: str | dict[str, str] | None = None  # an external trainer command per role instead of the built-in one
    samples: int = 2  # responses per instruction (step 1)
    languages: tuple[str, ...] = ("en",)  # languages of the instructions to make (en, zh)
    judge: bool = True  # a judge call keeps only instructions that suit a long text
    self_instruct_attempts: int = 10  # rounds of step 0 before giving up on the missing instructions
    generate_attempts: int = 20  # samples per response until one passes the check
    extensions: int = 2  # extension submissions per kept initial response (each may yield an extended response)
    extend_retries: int = 20  # attempts per extension submission until one grows the text > min_growth x
    micro_rounds: int = 3  # split-extend-continue rounds per attempt
    keep_share: float = 2 / 3  # of the extended first half's paragraphs
    min_growth: float = 1.2  # keep an extension only when longer than this x the original
    temperature: float = 0.7  # sampling temperature of every call
    top_p: float = 0.8  # nucleus sampling
    top_k: int = 20  # sample among the k likeliest tokens (0: off)
    repetition_penalty: float = 1.1  # repetition penalty of every call
    # the reference's vLLM counted the prompt and all the output
    repetition_window: int = 64  # the penalty counts the ids of the last this many tokens written (every engine)
    max_tokens: int = 16384  # per call, further capped by what fits the context window
    # the extend calls may not repeat an n-gram of word keys of their own output (engines/no_repeat.py; the
    # prompt is left out: the extender rewrites it); 0 = off (the reference); engines that cannot enforce it
    # extend without it, with a warning
    extend_no_repeat_ngram: int = 0  # ban loops in the extender's output while decoding (0 = off)
    seed: int = 42  # per-call seeds derive from this, the row and the attempt
    word_counter: WordCounter = "longen"  # Self-Lengthen counts LonGen words
    drop_short: bool = True  # drop the shorter initial and extended responses (rank-based, ~40% each time)
    line_keep: float = 0.8  # ext_sft input: each line of the initial response kept with this probability
    queries: QuerySettings = field(default_factory=QuerySettings)
    # an S_q judge over the final queries: {judge: same | ENGINE, judge_options, min_sq}; rows below min_sq are
    # quarantined with their scores (none by default)
    quality: JudgeGate = field(default_factory=JudgeGate)

    def __post_init__(self) -> None:
        if self.n < 1 or self.iterations < 1:
            raise ValueError(f"n and iterations must be at least 1, got n={self.n}, iterations={self.iterations}")
        if self.extensions < 1 or self.extend_retries < 1 or self.generate_attempts < 1:
            raise ValueError("extensions, extend_retries and generate_attempts must be at least 1")
        check_repetition_window(self.repetition_window)
        if self.extend_no_repeat_ngram < 0:  # checked here, not after a whole generate step has run
            raise ValueError(f"extend_no_repeat_ngram must be 0 (off) or a positive n-gram size, got "
                             f"{self.extend_no_repeat_ngram}")

    @property
    def instructions(self) -> int:
        return self.n


@dataclass
class Response:
    id: str
    instruction_id: str
    instruction: str
    language: str
    iteration: int
    sample: int
    initial: str = ""
    extension: int | None = None  # which extension submission of its initial response this is
    gen_attempts: int = 0
    extended: str | None = None
    extend_attempts: int = 0
    rounds_accepted: int = 0
    failed: str | None = None  # stage: reason, when the response never became usable
    # counted by the tokenizer of the model that wrote each text (`sets.count_tokens`)
    initial_tokens: int | None = None
    extended_tokens: int | None = None


@dataclass
class _ExtendState:
    resp: Response
    current: str
    attempt: int = 0
    round: int = 0
    accepted: int = 0
    prefix: str = ""
    log: list[str] = field(default_factory=list)


def _seed(*parts: Any) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def words(text: str, s: Settings) -> int:
    return count_words(text, s.word_counter)


def rejection(stage: str, reason: str, record: dict[str, Any], rid: str = "") -> dict[str, Any]:
    """A quarantine record: which stage rejected what, and why."""
    return {"id": rid or row_id(stage, json.dumps(record, sort_keys=True, ensure_ascii=False)), "stage": stage,
            "reason": reason, "source": "", "record": json.dumps(record, ensure_ascii=False, default=str)}


# --- step 0: self-instruct --------------------------------------------------------------------------------


_QUOTES = {'"': '"', "'": "'", "“": "”", "「": "」", "‘": "’"}


# where the completion starts a further instruction: the reference stops at "\n指令4"
_NEXT_MARKER = re.compile(r"\n\s*(?:Instruction\s*\d+\s*[:：]|指令\s*\d+\s*[:：])")
NEXT_INSTRUCTION_STOPS = ("\nInstruction 4", "\n指令4")


def clean_instruction(text: str) -> str:
    """The completed third instruction, which may span lines: everything up to the next "Instruction N"
    marker, without an "Instruction 3:" label and without quotes that enclose the whole text. Quotes inside
    the instruction are kept ('Write about "rivers"')."""
    text = text.strip()
    for label in ("Instruction 3:", "指令3：", "Instruction:"):
        if text.startswith(label):  # the label may stand alone on its line, the instruction below it
            text = text[len(label):].strip()
            break
    text = _NEXT_MARKER.split("\n" + text, maxsplit=1)[0].strip()
    return text[1:-1].strip() if _enclosed(text) else text


def _enclosed(line: str) -> bool:
    """Whether the quote that opens `line` is closed by its last character (and not earlier)."""
    opening = line[:1]
    close = _QUOTES.get(opening)
    if not close or len(line) < 2 or not line.endswith(close):
        return False
    if opening == close:
        return line.find(close, 1) == len(line) - 1
    depth = 0
    for i, ch in enumerate(line):
        depth += (ch == opening) - (ch == close)
        if depth == 0:
            return i == len(line) - 1
    return False


def self_instruct(
    seeds: Sequence[dict[str, Any]],
    engine: Engine,
    s: Settings,
    iteration: int,
    on_result: OnResult | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`s.instructions` new instructions (id, instruction, language, iteration) and the rejected candidates.
    `engine` is the base model: as in the reference, neither self-instruct nor the judge uses an adapter."""
    pools = {lang: [r["instruction"] for r in seeds if r["language"] == lang] for lang in s.languages}
    pools = {lang: p for lang, p in pools.items() if len(p) >= 2}
    if not pools:
        raise ValueError(f"self-instruct needs at least 2 seed instructions in one of {list(s.languages)}")
    require_continues_prefill(engine, SELF_INSTRUCT_PREFILL)
    known = {x.strip().lower() for p in pools.values() for x in p}
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for attempt in range(s.self_instruct_attempts):
        need = s.instructions - len(kept)
        if need <= 0:
            break
        reqs, langs = [], []
        for slot in range(need):
            rng = random.Random(_seed(s.seed, iteration, "self-instruct", attempt, slot))
            lang = rng.choice(sorted(pools))
            a, b = rng.sample(pools[lang], 2)
            task, shots = SELF_INSTRUCT[lang]
            reqs.append(Request(
                messages=({"role": "user", "content": task},
                          {"role": "assistant", "content": shots.format(a=a, b=b)}),
                max_tokens=300, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                repetition_penalty=s.repetition_penalty, repetition_window=s.repetition_window,
                stop=NEXT_INSTRUCTION_STOPS,
                seed=_seed(s.seed, iteration, attempt, slot),
            ))
            langs.append(lang)
        candidates = []
        for res, lang in zip(engine.generate(reqs, on_result), langs, strict=True):
            text = clean_instruction(res.text) if res.ok else ""
            n = words(text, s)
            why = (res.error if not res.ok else "duplicate of a known instruction" if text.lower() in known
                   else None if 3 < n < 500 else f"{n} words (needs 3 < words < 500)")
            if why:
                rejected.append(rejection("self_instruct", why, {"text": text, "iteration": iteration}))
            else:
                known.add(text.lower())
                candidates.append((text, lang))
        verdicts = judge([c for c, _ in candidates], [lang for _, lang in candidates], engine, s) \
            if s.judge else [True] * len(candidates)
        for (text, lang), ok in zip(candidates, verdicts, strict=True):
            if ok:
                rid = row_id("self_lengthen", "instruction", iteration, text)
                kept.append({"id": rid, "instruction": text, "language": lang, "iteration": iteration})
                pools[lang].append(text)  # later picks may use it as an example, as in the reference
            else:
                rejected.append(rejection("judge", "judge: not suited to a long article",
                                          {"text": text, "iteration": iteration}))
    return kept[: s.instructions], rejected


def judge(texts: list[str], langs: list[str], engine: Engine, s: Settings) -> list[bool]:
    """Does each instruction suit a long article? Schema-constrained yes/no, greedy."""
    if not texts:
        return []
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no", "是", "否"]}},
              "required": ["answer"]}
    reqs = [Request(messages=({"role": "user", "content": JUDGE[lang].format(instruction=t)},), max_tokens=20,
                    temperature=0.0, json_schema=schema) for t, lang in zip(texts, langs, strict=True)]
    out = []
    for res, lang in zip(engine.generate(reqs), langs, strict=True):
        try:
            answer = json.loads(res.text, strict=False).get("answer") if res.ok else None
        except (json.JSONDecodeError, AttributeError):
            answer = None
        out.append(answer == JUDGE_YES[lang] or answer == "yes")
    return out


def _finished(res: Any, lang: str) -> str:
    """The text of a result; one cut off at max_tokens is trimmed back to its last full sentence (the reference
    allows 16k tokens and has no cut-offs; with smaller budgets this keeps the text, not the cut)."""
    text = res.text.strip()
    return checks.trim_to_sentence(text, lang) if res.finish_reason == "length" else text


# --- step 1: generate -------------------------------------------------------------------------------------


def _sampled(
    engine: Engine, chats: list[tuple[dict[str, str], ...]], seeds: list[int], s: Settings, lora: str | None,
    sample_index: int = 0, no_repeat_ngram: Sequence[int] | None = None,
) -> list[Request]:
    """Generation requests with the method's sampling; each may generate `max_tokens`, capped by the room
    its prompt leaves in the context window. `no_repeat_ngram` (one per chat) bans loops within each output."""
    prompt = estimate_prompt_tokens(engine, chats)
    bans = list(no_repeat_ngram) if no_repeat_ngram is not None else [0] * len(chats)
    return [Request(messages=c, max_tokens=max(1, min(s.max_tokens, engine.context_window - p)),
                    temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                    repetition_penalty=s.repetition_penalty, repetition_window=s.repetition_window, seed=seed,
                    sample_index=sample_index, lora=lora,
                    no_repeat_ngram=ban, no_repeat_scope="output")
            for c, p, seed, ban in zip(chats, prompt, seeds, bans, strict=True)]


def extend_no_repeat(engine: Engine, s: Settings) -> int:
    """The extend calls' `no_repeat_ngram`: the setting, or 0 with a warning on an engine that cannot enforce it
    (it would refuse the requests)."""
    if s.extend_no_repeat_ngram and not enforces(engine, "no_repeat_ngram"):
        log.warning("self_lengthen: the %s engine cannot enforce extend_no_repeat_ngram=%d while decoding; "
                    "extending without it (loops are rejected by the check after the call)", engine.name,
                    s.extend_no_repeat_ngram)
        return 0
    return s.extend_no_repeat_ngram


def generate(
    instructions: Sequence[dict[str, Any]],
    engine: Engine,
    s: Settings,
    lora: str | None = None,
    on_result: OnResult | None = None,
) -> list[Response]:
    """k checked responses per instruction; a response that never passes has `failed` set."""
    todo = [
        Response(id=row_id("self_lengthen", "response", ins["id"], k), instruction_id=ins["id"],
                 instruction=ins["instruction"], language=ins.get("language") or language_of(ins["instruction"]),
                 iteration=int(ins.get("iteration", 1)), sample=k)
        for ins in instructions for k in range(s.samples)
    ]
    pending = list(todo)
    for attempt in range(s.generate_attempts):
        if not pending:
            break
        reqs = _sampled(engine, [({"role": "user", "content": r.instruction},) for r in pending],
                        [_seed(s.seed, r.id, "generate", attempt) for r in pending], s, lora, sample_index=attempt)
        still = []
        for r, res in zip(pending, engine.generate(reqs, on_result), strict=True):
            r.gen_attempts = attempt + 1
            text = _finished(res, r.language)
            why = res.error if not res.ok else checks.response_check(text, r.language)
            if why is None:
                r.initial, r.failed = text, None
            else:
                r.failed = f"generate: {why}"
                still.append(r)
        pending = still
    return todo


# --- step 2: extend ---------------------------------------------------------------------------------------


def paragraphs(text: str) -> list[str]:
    """Blank-line paragraphs; single lines when that gives two parts or fewer (as the reference)."""
    parts = text.split("\n\n")
    return text.split("\n") if len(parts) <= 2 else parts


def first_half(text: str) -> str:
    """The first half of the paragraphs (at least one, so a one-paragraph text extends as a whole)."""
    parts = paragraphs(text)
    return "\n\n".join(parts[: max(1, len(parts) // 2)])


def keep_head(text: str, share: float) -> str:
    """The first `share` of the text's blank-line paragraphs (floor, as the reference's 2/3)."""
    parts = text.strip().split("\n\n")
    return "\n\n".join(parts[: int(len(parts) * share)])


def extend_chat(instruction: str, response: str, lang: str, prefix: str = "") -> tuple[dict[str, str], ...]:
    user = {"role": "user", "content": EXTEND["en" if lang != "zh" else "zh"].format(
        instruction=instruction, response=response)}
    return (user, {"role": "assistant", "content": prefix}) if prefix else (user,)


def submissions(responses: Sequence[Response], s: Settings) -> list[Response]:
    """`s.extensions` extension submissions per usable initial response, each a row of its own."""
    return [dataclasses.replace(r, id=row_id("self_lengthen", "extension", r.id, j), extension=j, extended=None,
                                extend_attempts=0, rounds_accepted=0)
            for r in responses if r.failed is None for j in range(s.extensions)]


def extend(
    responses: Sequence[Response],
    engine: Engine,
    s: Settings,
    lora: str | None = None,
    on_result: OnResult | None = None,
) -> list[Response]:
    """The extension submissions of every usable initial response (`submissions`), each extended as one chain
    of calls (engines/chains.py: A then B of each micro-round, round after round, attempt after attempt),
    all rows at once: on vLLM and servers a row's next call goes out when its last ends, on llama.cpp each
    micro-step is one engine batch across the rows. A submission that never grows enough has `failed` set.
    The initial responses are not changed."""
    rows = submissions(responses, s)
    if rows:  # call B continues the head of call A's text as the assistant's own turn
        require_continues_prefill(engine, EXTENDER_PREFILL)
    no_repeat = extend_no_repeat(engine, s) if rows else 0
    run_chains(engine, [_extend_chain(_ExtendState(r, r.initial), engine, s, lora, no_repeat) for r in rows],
               on_result)
    return rows


def _extend_chain(st: _ExtendState, engine: Engine, s: Settings, lora: str | None, no_repeat: int) -> Chain[None]:
    # zh: a character is 1-3 byte-level tokens, so the same span takes about twice the n (as AgentWrite)
    ban = [no_repeat * (2 if st.resp.language == "zh" else 1)]
    while True:
        key = (st.resp.id, st.attempt, st.round)
        # A: extend the first half, keep the head of what comes back
        chat = extend_chat(st.resp.instruction, first_half(st.current), st.resp.language)
        res = yield _sampled(engine, [chat], [_seed(s.seed, *key, "A")], s, lora, no_repeat_ngram=ban)[0]
        head = keep_head(res.text, s.keep_share) if res.ok else ""
        st.prefix = head + "\n\n" if head else ""
        # B: the extend prompt over the whole text, continued after that head
        chat = extend_chat(st.resp.instruction, st.current, st.resp.language, st.prefix)
        res = yield _sampled(engine, [chat], [_seed(s.seed, *key, "B")], s, lora, no_repeat_ngram=ban)[0]
        out = (st.prefix + _finished(res, st.resp.language)).strip() if res.ok else ""
        _accept_round(st, out, res.error if not res.ok else None, s)
        if not _advance(st, s):
            return


def drop_short_initial(responses: Sequence[Response], s: Settings, iteration: int
                       ) -> tuple[list[Response], list[dict[str, Any]]]:
    """drop_short over the usable initial responses, before any extension (the reference's step 1); the
    failed ones pass through for the record, the dropped ones come back as rejections."""
    usable = sorted((r for r in responses if r.failed is None), key=lambda r: r.id)
    if not s.drop_short or not usable:
        return list(responses), []
    keep = checks.drop_short([len(r.initial) for r in usable], random.Random(f"{s.seed}|drop_short|{iteration}"))
    dropped = {r.id for r, k in zip(usable, keep, strict=True) if not k}
    rejected = [rejection("drop_short_initial", f"drop_short: {len(r.initial)} characters, among the shorter "
                          "initial responses", {"instruction": r.instruction, "initial_response": r.initial}, r.id)
                for r in usable if r.id in dropped]
    return [r for r in responses if r.id not in dropped], rejected


def generate_and_extend(
    instructions: Sequence[dict[str, Any]], generator: Engine, extender: Engine, s: Settings,
    generator_lora: str | None = None, extender_lora: str | None = None,
    on_generate: OnResult | None = None, on_extend: OnResult | None = None,
) -> tuple[list[Response], list[dict[str, Any]]]:
    """Steps 1-2 over some instructions: the extension submissions (extended or failed) and the initial
    responses drop_short removed. Responses that never passed generation are in the first list, failed."""
    if instructions:  # before the first generation, not after it
        require_continues_prefill(extender, EXTENDER_PREFILL)
    initial = generate(instructions, generator, s, generator_lora, on_result=on_generate)
    kept, dropped = drop_short_initial(initial, s, int(instructions[0].get("iteration", 1)) if instructions else 1)
    failed = [r for r in kept if r.failed is not None]
    return failed + extend(kept, extender, s, extender_lora, on_result=on_extend), dropped


def _accept_round(st: _ExtendState, out: str, error: str | None, s: Settings) -> None:
    """A round counts only when its output passes the check and is longer than the current text."""
    why = error or checks.response_check(out, st.resp.language)
    if why is None:
        after, before = words(out, s), words(st.current, s)
        if after <= before:
            why = f"not longer ({after} <= {before} words)"
    st.log.append(why or "accepted")
    if why is None:
        st.current, st.accepted = out, st.accepted + 1


def _advance(st: _ExtendState, s: Settings) -> bool:
    """Move to the next round or attempt; False when the response is finished (extended or not)."""
    st.round += 1
    if st.round < s.micro_rounds:
        return True
    r = st.resp
    r.extend_attempts = st.attempt + 1
    before, after = words(r.initial, s), words(st.current, s)
    if after > s.min_growth * before:
        r.extended, r.rounds_accepted = st.current, st.accepted
        return False
    st.attempt += 1
    if st.attempt >= s.extend_retries:
        r.failed = (f"extend: not > {s.min_growth}x after {s.extend_retries} attempts "
                    f"({before} -> {after} words; last rounds: {'; '.join(st.log[-s.micro_rounds:])})")
        return False
    st.current, st.round, st.accepted = r.initial, 0, 0
    return True
