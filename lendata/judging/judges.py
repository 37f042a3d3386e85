"""LLM judges: LongBench-Write's quality score S_q, and a pairwise judge for win rates.

S_q (Bai et al. 2024, "LongWriter", §2 and `evaluation/eval_quality.py`; METHODS §3): a judge scores a response
on six dimensions (relevance, accuracy, coherence, clarity, breadth and depth, reading experience), each 1..5;
each dimension's mean becomes (mean - 1) × 25 and S_q is the mean of the six. The reference asks GPT-4o at
temperature 0.5 for up to 1,024 tokens of JSON after a short analysis, and up to 5 times when the reply does not
parse. Deliberate deviations:
- The reply is constrained by a JSON schema (each score an integer 1..5, the analysis first and bounded), so a
  weak judge cannot answer in prose; the reference scrapes ```json fences with a regex.
- A row the judge could not score after every attempt is a failure, counted and listed with why; the reference
  prints the reply and leaves the row out of its mean without counting it.
- A response that does not fit the judge's context window is a listed failure, never judged truncated.
- Default 3 attempts (the reference: 5), each a new seed.

The pairwise judge is AlpacaEval's setting (METHODS §2): which of two outputs better follows the instruction.
Each pair is judged twice, once in each order, to cancel the judge's position bias; the preference for B is
1 + (B's wins over the two orders) / 2, so 1.5 is a tie or a disagreement between the orders. AlpacaEval's
own judge reads the log-probabilities of one token; lendata's is a schema-constrained choice, which works on
every engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lendata.engines.base import Engine, Request, Result, estimate_prompt_tokens

DIMENSIONS = ("Relevance", "Accuracy", "Coherence", "Clarity", "Breadth and Depth", "Reading Experience")

# LongBench-Write's rubric (evaluation/judge.txt): the six dimensions, each from 5 down to 1
_RUBRIC = {
    "Relevance": "from content highly relevant and fully applicable to the user's request (5) to completely "
                 "irrelevant or inapplicable (1)",
    "Accuracy": "from content completely accurate with no factual errors or misleading information (5) to "
                "content with numerous errors and highly misleading (1)",
    "Coherence": "from clear structure with smooth logical connections (5) to disorganized structure with no "
                 "coherence (1)",
    "Clarity": "from clear language, rich in detail and easy to understand (5) to confusing expression with "
               "minimal details (1)",
    "Breadth and Depth": "from both broad and deep content with a lot of information (5) to seriously lacking "
                         "breadth and depth with minimal information (1)",
    "Reading Experience": "from an excellent reading experience, engaging and easy to understand (5) to a very "
                          "poor reading experience, boring and hard to understand (1)",
}

QUALITY_PROMPT = """You are an expert in evaluating text quality. Evaluate, as strictly as possible, the quality \
of an AI assistant's response to a user's writing request, on six dimensions, each scored with one integer from \
1 to 5:

{rubric}

<User Request>
{instruction}
</User Request>

<Response>
{response}
</Response>

First give a brief analysis of the response's quality, then a score for each dimension, as JSON with the keys \
"Analysis", {keys}. Do not consider whether the response meets the user's length requirement."""

PAIR_PROMPT = """You are comparing two responses to the same instruction. Decide which response follows the \
instruction better and would be more helpful to the person who wrote it. Judge the content, not the order in \
which the responses are shown.

<Instruction>
{instruction}
</Instruction>

<Response a>
{first}
</Response a>

<Response b>
{second}
</Response b>

Answer as JSON: {{"better": "a"}} or {{"better": "b"}}."""

_SCORE = {"type": "integer", "enum": [1, 2, 3, 4, 5]}
QUALITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"Analysis": {"type": "string", "maxLength": 600}, **{d: _SCORE for d in DIMENSIONS}},
    "required": ["Analysis", *DIMENSIONS],
    "additionalProperties": False,
}
PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"better": {"type": "string", "enum": ["a", "b"]}},
    "required": ["better"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class JudgeSettings:
    temperature: float = 0.5  # LongBench-Write's judge
    max_tokens: int = 1024  # LongBench-Write's judge; the pairwise answer needs a few
    attempts: int = 3  # per judgment, each with a new seed (the reference retries 5 times)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.max_tokens < 16:
            raise ValueError(f"max_tokens must be >= 16 for a JSON judgment, got {self.max_tokens}")


@dataclass
class Judgment:
    """One row's judgment: `scores` (S_q: per dimension; pairwise: {"better": ...}) or `error` after every
    attempt failed (the last attempt's reason)."""

    scores: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    analysis: str = ""
    cached: bool = field(default=False, compare=False)

    @property
    def sq(self) -> float | None:
        """This row's S_q: the mean of (score - 1) × 25 over the six dimensions."""
        if self.scores is None:
            return None
        return sum((self.scores[d] - 1) * 25 for d in DIMENSIONS) / len(DIMENSIONS)


def quality_prompt(instruction: str, response: str) -> str:
    rubric = "\n".join(f"{i}. {d}: {_RUBRIC[d]}." for i, d in enumerate(DIMENSIONS, 1))
    keys = ", ".join(f'"{d}"' for d in DIMENSIONS)
    return QUALITY_PROMPT.format(rubric=rubric, instruction=instruction, response=response, keys=keys)


def parse_quality(result: Result) -> tuple[dict[str, int], str]:
    """(scores, analysis) from a judge's reply; ValueError says what was wrong."""
    if not result.ok:
        raise ValueError(f"engine error: {result.error}")
    if result.finish_reason == "length":
        raise ValueError(f"the judgment was cut at {result.completion_tokens} tokens")
    try:
        reply = json.loads(result.text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg}") from None
    if not isinstance(reply, dict):
        raise ValueError("not a JSON object")
    scores = {}
    for d in DIMENSIONS:
        v = reply.get(d)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5:
            raise ValueError(f"{d} is {v!r}, not an integer 1..5")
        scores[d] = v
    return scores, str(reply.get("Analysis", ""))


def parse_pair(result: Result) -> dict[str, str]:
    if not result.ok:
        raise ValueError(f"engine error: {result.error}")
    try:
        reply = json.loads(result.text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg}") from None
    if not isinstance(reply, dict) or reply.get("better") not in ("a", "b"):
        raise ValueError(f"no choice of 'a' or 'b' in {result.text[:80]!r}")
    return {"better": reply["better"]}


def _judge(prompts: Sequence[str], engine: Engine, settings: JudgeSettings, schema: dict[str, Any],
           parse: Callable[[Result], Any], max_tokens: int,
           on_done: Callable[[int, Judgment], None] | None = None) -> list[Judgment]:
    """Every prompt judged, in rounds (all pending rows per engine call, so batching engines batch), each row
    retried with a new seed until it parses or its attempts are spent."""
    out = [Judgment() for _ in prompts]
    chats = [({"role": "user", "content": p},) for p in prompts]
    room = engine.context_window - max_tokens
    pending = []
    for i, need in enumerate(estimate_prompt_tokens(engine, chats)):
        if need > room:
            out[i].error = (f"too long for the judge: about {need:,} prompt tokens, and {engine.context_window:,}"
                            f" - {max_tokens:,} for the judgment leave {room:,}")
            if on_done:
                on_done(i, out[i])
        else:
            pending.append(i)
    for attempt in range(settings.attempts):
        if not pending:
            break
        requests = [Request(messages=chats[i], max_tokens=max_tokens, temperature=settings.temperature,
                            seed=settings.seed + attempt, sample_index=attempt, json_schema=schema)
                    for i in pending]
        results = engine.generate(requests)
        still = []
        for i, res in zip(pending, results, strict=True):
            j = out[i]
            j.attempts = attempt + 1
            j.cached = res.cached
            try:
                parsed = parse(res)
            except ValueError as e:
                j.error = f"{e} (after {attempt + 1} attempt{'s' if attempt else ''})"
                still.append(i)
                continue
            j.error = None
            if isinstance(parsed, tuple):
                j.scores, j.analysis = parsed
            else:
                j.scores = parsed
            if on_done:
                on_done(i, j)
        pending = still
    if on_done:
        for i in pending:
            on_done(i, out[i])
    return out


def judge_quality(pairs: Sequence[tuple[str, str]], engine: Engine, settings: JudgeSettings | None = None,
                  on_done: Callable[[int, Judgment], None] | None = None) -> list[Judgment]:
    """S_q judgments of (instruction, response) pairs."""
    settings = settings or JudgeSettings()
    prompts = [quality_prompt(instr, resp) for instr, resp in pairs]
    return _judge(prompts, engine, settings, QUALITY_SCHEMA, parse_quality, settings.max_tokens, on_done)


@dataclass(frozen=True)
class PairJudgment:
    """B's preference over A in AlpacaEval's scale (1: A, 2: B, 1.5: tie or the two orders disagree), or None
    with why when either order failed."""

    preference: float | None
    error: str | None
    first_order: str | None  # the judge's choice with A shown first ("a" or "b")
    second_order: str | None  # with B shown first


PAIR_MAX_TOKENS = 24


def judge_pairs(items: Sequence[tuple[str, str, str]], engine: Engine, settings: JudgeSettings | None = None,
                on_done: Callable[[int, Judgment], None] | None = None) -> list[PairJudgment]:
    """(instruction, output A, output B) triples judged in both orders."""
    settings = settings or JudgeSettings()
    prompts = []
    for instr, a, b in items:
        prompts.append(PAIR_PROMPT.format(instruction=instr, first=a, second=b))
        prompts.append(PAIR_PROMPT.format(instruction=instr, first=b, second=a))
    js = _judge(prompts, engine, settings, PAIR_SCHEMA, parse_pair, min(PAIR_MAX_TOKENS, settings.max_tokens),
                on_done)
    out = []
    for k in range(len(items)):
        ab, ba = js[2 * k], js[2 * k + 1]
        if ab.scores is None or ba.scores is None:
            why = "; ".join(f"{order}: {j.error}" for order, j in (("A first", ab), ("B first", ba)) if j.error)
            out.append(PairJudgment(None, why, ab.scores and ab.scores["better"], ba.scores and ba.scores["better"]))
            continue
        b_wins = (ab.scores["better"] == "b") + (ba.scores["better"] == "a")
        out.append(PairJudgment(1 + b_wins / 2, None, ab.scores["better"], ba.scores["better"]))
    return out


def sq_summary(judgments: Sequence[Judgment]) -> dict[str, Any]:
    """Per-dimension scores ((mean - 1) × 25), S_q (their mean), and the failures: never scored in."""
    ok = [j for j in judgments if j.scores is not None]
    dims = {d: (sum(j.scores[d] for j in ok) / len(ok) - 1) * 25 for d in DIMENSIONS} if ok else {}
    return {
        "judged": len(ok), "failed": len(judgments) - len(ok),
        "dimensions": dims, "sq": sum(dims.values()) / len(dims) if dims else None,
    }
