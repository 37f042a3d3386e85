"""Preference pairs for DPO from k judged samples per instruction, selected so that they do not teach "longer is
better" (issue 17, item 6).

LongWriter's DPO stage (Bai et al. 2024, "LongWriter", §4.2) sampled several outputs per instruction, scored them
with a judge and with the length score, and paired a high-scoring output (chosen) with a low-scoring one
(rejected). Here: `samples` completions per instruction from each listed model (seeded, `sample_index`), each
judged with LongBench-Write's S_q (lendata.judging); with a target length, the chosen answer must also meet it
(S_l ≥ `min_sl`). A pair is kept only when its two answers are of similar length (the longer at most
`length_tolerance` longer than the shorter, in words), so that the pair's preference cannot be explained by
length alone, and when the chosen answer's S_q beats the rejected one's by at least `min_margin`. Among the
pairs that pass, the one with the widest margin is taken. Instructions without such a pair go to the `rejected`
split with why. Rows are TRL's conversational preference format (`prompt`: the user message, `chosen` and
`rejected`: one assistant message each) plus scores and lengths.

`selection`:
- `length_matched` (default): the rule above.
- `length_adjusted`: no length rule; instead the S_q margin of a pair must survive the length adjustment: the
  judge's length slope β is fitted over every two judged samples of the same instruction (the S_q difference on
  the standardised word difference Δwords / std(Δwords), least squares through the origin), and a pair's margin
  minus β × its standardised word difference must still reach `min_margin`. A judge whose scores follow length
  alone then yields no pair.
- `none`: the widest S_q margin, whatever the lengths.

Deliberate deviations: LongWriter ranked by its judge and length score without a length rule; its pairs were not
length-controlled. The length adjustment is a linear model of the S_q margin (no tanh: a margin is not a
probability), not AlpacaEval's logistic GLM of a pairwise preference (the samples are judged one by one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from lendata.engines.base import Engine, OnResult, Request, estimate_prompt_tokens
from lendata.lengths import WordCounter, count_words, length_score
from lendata.methods.shared.inputs import InstructionInput
from lendata.methods.shared.model_list import check_models
from lendata.methods.shared.quality_gate import check_judge
from lendata.methods.shared.sft import row_id


@dataclass
class Settings(InstructionInput):
    models: list[dict[str, Any]] = field(default_factory=list)  # each {name, engine, engine_options}; []: the engine
    samples: int = 4  # completions per instruction and model
    temperature: float = 0.8  # sampling temperature of the completions
    top_p: float = 0.95  # nucleus sampling
    max_tokens: int = 2048  # per completion (capped by the window); a completion cut here is not a candidate
    seed: int = 0  # sample k of instruction i uses seed + i * samples + k
    judge: str = "same"  # the S_q judge: same (the recipe's engine) | llamacpp | openai | vllm
    judge_options: dict[str, Any] = field(default_factory=dict)  # the judge engine's options
    judge_attempts: int = 3  # judge calls per sample before it counts as unjudged
    selection: Literal["length_matched", "length_adjusted", "none"] = "length_matched"  # see the module docstring
    length_tolerance: float = 0.2  # length_matched: the longer answer at most this much longer (words)
    min_sl: float = 80.0  # with a target length: the chosen answer's S_l must reach this
    min_margin: float = 5.0  # the chosen answer's S_q must beat the rejected one's by this much
    word_counter: WordCounter = "longwriter"  # longwriter | longen | ruler

    def __post_init__(self) -> None:
        super().__post_init__()
        check_models(self.models)
        if self.samples < 2:
            raise ValueError(f"samples is {self.samples}; a pair needs at least 2 completions per instruction")
        if self.length_tolerance < 0:
            raise ValueError(f"length_tolerance is {self.length_tolerance}; it must be >= 0")
        if not 0 <= self.min_sl <= 100 or self.min_margin < 0:
            raise ValueError("min_sl must be in [0, 100] and min_margin >= 0")
        check_judge(self.judge)


MESSAGE = pa.struct([("role", pa.string()), ("content", pa.large_string())])
PAIRS_SCHEMA = pa.schema([
    ("id", pa.string()),
    # TRL's conversational preference format: the samples were written under the engine's chat template, so TRL
    # must apply the template too (it does only to message lists)
    ("prompt", pa.list_(MESSAGE)),
    ("chosen", pa.list_(MESSAGE)),
    ("rejected", pa.list_(MESSAGE)),
    ("chosen_sq", pa.float64()),
    ("rejected_sq", pa.float64()),
    ("chosen_words", pa.int32()),
    ("rejected_words", pa.int32()),
    ("length_ratio", pa.float64()),  # chosen words / rejected words
    ("chosen_sl", pa.float64()),  # S_l of the chosen answer against the target (null without one)
    ("target_words", pa.int32()),
    ("chosen_model", pa.string()),
    ("rejected_model", pa.string()),
    ("judge_model", pa.string()),
    ("candidates", pa.int32()),  # judged samples of this instruction
    ("source", pa.string()),
])


@dataclass
class Candidate:
    index: int  # the instruction's place in the input
    instruction: str
    target: int | None
    source: str
    model: str
    sample_index: int
    text: str
    words: int
    sq: float | None = None
    judge_error: str | None = None


def sample(rows: Sequence[dict[str, Any]], engine: Engine, label: str, s: Settings, first_index: int = 0,
           on_result: OnResult | None = None) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """`samples` completions of every instruction on one engine: (candidates, quarantine records)."""
    chats = [({"role": "user", "content": row["instruction"]},) for row in rows]
    # what the window leaves after the prompt, so that an answer is never cut by the window rather than max_tokens
    room = [max(1, min(s.max_tokens, engine.context_window - need)) for need in estimate_prompt_tokens(engine, chats)]
    requests = [Request(messages=chats[i], max_tokens=room[i], temperature=s.temperature, top_p=s.top_p,
                        seed=s.seed + (first_index + i) * s.samples + k, sample_index=k)
                for i in range(len(rows)) for k in range(s.samples)]
    out, failed = [], []
    for j, (req, res) in enumerate(zip(requests, engine.generate(requests, on_result=on_result), strict=True)):
        row = rows[j // s.samples]
        if not res.ok or not res.text.strip() or res.finish_reason == "length":
            why = res.error if not res.ok else ("empty" if not res.text.strip() else
                                                f"cut at its token limit ({req.max_tokens})")
            failed.append({"id": f"{row_id(row['instruction'], first_index + j // s.samples, 0)}-{label}-"
                                 f"{req.sample_index}", "stage": "sample", "reason": f"{label}: {why}",
                           "source": row.get("source", ""), "record": row["instruction"]})
            continue
        text = res.text.strip()
        out.append(Candidate(first_index + j // s.samples, row["instruction"], row.get("target"),
                             row.get("source", ""), label, req.sample_index, text, count_words(text, s.word_counter)))
    return out, failed


def length_slope(groups: Sequence[Sequence[Candidate]]) -> dict[str, float]:
    """How much the judge's S_q follows length: the least-squares slope β of the S_q difference of every two
    judged samples of an instruction on their standardised word difference Δwords / std(Δwords), through the
    origin (the difference is antisymmetric). Returns {"beta", "std", "pairs"}."""
    import numpy as np

    deltas, margins = [], []
    for cands in groups:
        judged = [c for c in cands if c.sq is not None]
        for i, a in enumerate(judged):
            for b in judged[i + 1:]:
                deltas.append(a.words - b.words)
                margins.append(a.sq - b.sq)  # type: ignore[operator]
    if len(deltas) < 2:
        return {"beta": 0.0, "std": 1.0, "pairs": len(deltas)}
    d = np.asarray(deltas, dtype=float)
    std = float(d.std(ddof=1)) or 1.0
    x = d / std
    beta = float((x @ np.asarray(margins)) / (x @ x)) if (x @ x) > 0 else 0.0
    return {"beta": beta, "std": std, "pairs": len(deltas)}


def select(cands: Sequence[Candidate], s: Settings, slope: dict[str, float] | None = None
           ) -> tuple[tuple[Candidate, Candidate] | None, str]:
    """The instruction's pair (chosen, rejected), or None and why there is none. With `selection:
    length_adjusted`, a pair's S_q margin is first reduced by what length alone explains (`slope`)."""
    judged = [c for c in cands if c.sq is not None]
    if len(judged) < 2:
        return None, f"{len(judged)} of {len(cands)} samples judged: a pair needs two"
    target = judged[0].target
    best: tuple[float, Candidate, Candidate] | None = None
    reasons = set()
    for c in judged:
        if target and length_score(target, c.words) < s.min_sl:
            reasons.add(f"no sample meets the target of {target} words (S_l >= {s.min_sl:g})")
            continue
        for r in judged:
            if r is c:
                continue
            raw = c.sq - r.sq  # type: ignore[operator]
            margin = raw
            if s.selection == "length_adjusted" and slope:
                margin = raw - slope["beta"] * (c.words - r.words) / slope["std"]
            # the raw margin too: an adjustment may favour a shorter answer, never make a worse one chosen
            if min(raw, margin) <= 0 or min(raw, margin) < s.min_margin:  # a tie is no preference
                reasons.add(f"no two samples differ in S_q by {s.min_margin:g} or more"
                            + (" once length is accounted for" if s.selection == "length_adjusted" else ""))
                continue
            longer, shorter = max(c.words, r.words), max(1, min(c.words, r.words))
            if s.selection == "length_matched" and longer > (1 + s.length_tolerance) * shorter:
                reasons.add(f"the pairs that differ enough in S_q differ in length by more than "
                            f"{s.length_tolerance:.0%}")
                continue
            if best is None or margin > best[0]:
                best = (margin, c, r)
    if best is None:
        return None, "; ".join(sorted(reasons)) or "no pair"
    return (best[1], best[2]), ""


def pair_row(chosen: Candidate, rejected: Candidate, judge_model: str, candidates: int) -> dict[str, Any]:
    return {
        "id": row_id(chosen.instruction, chosen.index, 0),
        "prompt": [{"role": "user", "content": chosen.instruction}],
        "chosen": [{"role": "assistant", "content": chosen.text}],
        "rejected": [{"role": "assistant", "content": rejected.text}],
        "chosen_sq": chosen.sq, "rejected_sq": rejected.sq,
        "chosen_words": chosen.words, "rejected_words": rejected.words,
        "length_ratio": chosen.words / max(1, rejected.words),
        "chosen_sl": length_score(chosen.target, chosen.words) if chosen.target else None,
        "target_words": chosen.target, "chosen_model": chosen.model, "rejected_model": rejected.model,
        "judge_model": judge_model, "candidates": candidates, "source": chosen.source,
    }


def rejection(cands: Sequence[Candidate], why: str) -> dict[str, Any]:
    c = cands[0]
    return {"id": row_id(c.instruction, c.index, 0), "stage": "select", "reason": why, "source": c.source,
            "record": json.dumps({"instruction": c.instruction, "samples": [
                {"model": x.model, "sample_index": x.sample_index, "words": x.words, "sq": x.sq,
                 "judge_error": x.judge_error} for x in cands]}, ensure_ascii=False)}


def rejection_without_samples(row: dict[str, Any], index: int, asked: int) -> dict[str, Any]:
    return {"id": row_id(row["instruction"], index, 0), "stage": "select", "source": row.get("source", ""),
            "reason": f"none of the {asked} samples can be a candidate (each failed, came back empty or was cut at "
                      "max_tokens; see quarantine)", "record": json.dumps({"instruction": row["instruction"]})}
