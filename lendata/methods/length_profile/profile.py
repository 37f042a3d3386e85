"""Length profiles: how long does a model write for each prompt, and how much does that vary?

After CASTILLO (Perez-Ramirez et al. 2025, "CASTILLO: Characterizing Response Length Distributions of Large
Language Models"; METHODS §7): for each (prompt, model), `samples` completions at fixed decoding, each seeded
and numbered (`sample_index`); token and word lengths; their mean, standard deviation, coefficient of variation
and percentiles p5/p25/p50/p75/p95; the shortest and longest text; the exact generation settings. This is how a
user picks a model and its decoding before a long build.

Deliberate deviations: CASTILLO samples with each model's own default generation config; lendata uses one
decoding for every model (the recipe's `temperature`, `top_p`, `top_k`, `max_tokens`) so that models are
compared at the same settings, and records them with every profile. Token lengths are counted by each model's
own tokenizer (as CASTILLO), words by the recipe's `word_counter`. A completion cut at `max_tokens` is kept and
counted as `truncated` (its length is a lower bound): the profile reports the share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from lendata.engines.base import Engine, OnResult, Request
from lendata.engines.identity import model_name
from lendata.lengths import WordCounter, count_words
from lendata.methods.shared.inputs import InstructionInput
from lendata.methods.shared.model_list import check_models
from lendata.methods.shared.sft import row_id

PERCENTILES = (5, 25, 50, 75, 95)


@dataclass
class Settings(InstructionInput):
    instruction_field: str = "prompt"  # the field holding the prompt
    models: list[dict[str, Any]] = field(default_factory=list)  # each {name, engine, engine_options}; []: the engine

    samples: int = 10  # completions per prompt and model (CASTILLO: 10)
    temperature: float = 0.7  # one decoding for every model, recorded with each profile
    top_p: float = 0.95  # nucleus sampling
    top_k: int | None = None  # null: the engine's default
    max_tokens: int = 2048  # per completion; a completion cut here is counted as truncated
    seed: int = 0  # sample k of prompt i is drawn with seed + i * samples + k
    word_counter: WordCounter = "longwriter"  # longwriter | longen | ruler

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 2:
            raise ValueError(f"samples is {self.samples}; a profile needs at least 2 completions per prompt")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens is {self.max_tokens}; it must be at least 1")
        check_models(self.models)

    def decoding(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_tokens": self.max_tokens, "samples": self.samples, "seed": self.seed}


SAMPLES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", pa.large_string()),
    ("model_label", pa.string()),  # the recipe's name for the model (default: the model's name)
    ("engine", pa.string()),
    ("model", pa.string()),
    ("sample_index", pa.int32()),
    ("seed", pa.int64()),
    ("text", pa.large_string()),
    ("tokens", pa.int32()),
    ("words", pa.int32()),
    ("finish_reason", pa.string()),
    ("source", pa.string()),
])

_STATS = [(f"{unit}_{stat}", pa.float64()) for unit in ("tokens", "words")
          for stat in ("mean", "std", "cv", *(f"p{p}" for p in PERCENTILES))]
PROFILES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", pa.large_string()),
    ("model_label", pa.string()),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("samples", pa.int32()),
    ("failed", pa.int32()),
    ("truncated_share", pa.float64()),
    *_STATS,
    ("tokens_min", pa.int32()),
    ("tokens_max", pa.int32()),
    ("shortest_text", pa.large_string()),
    ("longest_text", pa.large_string()),
    ("settings", pa.string()),  # the exact decoding and the engine's options, JSON
    ("source", pa.string()),
])


def prompt_id(prompt: str, index: int) -> str:
    """The prompt's id: its text and its place in the input (a prompt given twice is profiled twice)."""
    return row_id(prompt, index, 0)


def sample(rows: Sequence[dict[str, Any]], engine: Engine, label: str, s: Settings, first_index: int = 0,
           on_result: OnResult | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sample rows, quarantine records) for `samples` completions of each prompt on one engine, in one batch.
    Prompt i (its place in the whole input: `first_index` + i) draws sample k with seed + i × samples + k."""
    requests = []
    for i, row in enumerate(rows):
        for k in range(s.samples):
            requests.append(Request(messages=({"role": "user", "content": row["instruction"]},),
                                    max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                    top_k=s.top_k, seed=s.seed + (first_index + i) * s.samples + k,
                                    sample_index=k))
    results = engine.generate(requests, on_result=on_result)
    # the engine's own count of what it generated (its tokenizer); re-tokenised only where it reports none
    recount = [i for i, r in enumerate(results) if r.ok and not r.completion_tokens]
    counted = dict(zip(recount, engine.count_tokens([results[i].text for i in recount]), strict=True)) \
        if recount else {}
    out, failed = [], []
    for j, (req, res) in enumerate(zip(requests, results, strict=True)):
        row = rows[j // s.samples]
        pid = prompt_id(row["instruction"], first_index + j // s.samples)
        rid = f"{pid}-{label}-{req.sample_index}"
        if not res.ok:
            failed.append({"id": rid, "stage": "sample", "reason": f"{label}: {res.error}",
                           "source": row.get("source", ""),
                           "record": json.dumps({"prompt_id": pid, "model_label": label, "prompt": row["instruction"],
                                                 "sample_index": req.sample_index}, ensure_ascii=False)})
            continue
        out.append({"id": rid, "prompt_id": pid, "prompt": row["instruction"], "model_label": label,
                    "engine": engine.name, "model": model_name(engine.model_id), "sample_index": req.sample_index,
                    "seed": req.seed, "text": res.text, "tokens": counted.get(j, res.completion_tokens),
                    "words": count_words(res.text, s.word_counter), "finish_reason": res.finish_reason,
                    "source": row.get("source", "")})
    return out, failed


def _stats(values: Sequence[int], unit: str) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    out = {f"{unit}_mean": mean, f"{unit}_std": std, f"{unit}_cv": std / mean if mean else 0.0}
    for p, q in zip(PERCENTILES, np.percentile(v, PERCENTILES), strict=True):
        out[f"{unit}_p{p}"] = float(q)
    return out


def profiles(samples: Sequence[dict[str, Any]], s: Settings, engine_settings: dict[str, dict[str, Any]],
             failed: dict[tuple[str, str], int] | None = None) -> list[dict[str, Any]]:
    """One profile per (prompt, model) from its samples. `engine_settings` by model label: the engine and its
    options, recorded with the decoding in `settings`."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in samples:
        groups.setdefault((r["prompt_id"], r["model_label"]), []).append(r)
    out = []
    for (pid, label), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["sample_index"])
        shortest = min(rs, key=lambda r: (r["tokens"], r["sample_index"]))
        longest = max(rs, key=lambda r: (r["tokens"], -r["sample_index"]))
        out.append({
            "id": f"{pid}-{label}", "prompt_id": pid, "prompt": rs[0]["prompt"], "model_label": label,
            "engine": rs[0]["engine"], "model": rs[0]["model"], "samples": len(rs),
            "failed": (failed or {}).get((pid, label), 0),
            "truncated_share": sum(r["finish_reason"] == "length" for r in rs) / len(rs),
            **_stats([r["tokens"] for r in rs], "tokens"), **_stats([r["words"] for r in rs], "words"),
            "tokens_min": shortest["tokens"], "tokens_max": longest["tokens"],
            "shortest_text": shortest["text"], "longest_text": longest["text"],
            "settings": json.dumps({**s.decoding(), "word_counter": s.word_counter, **engine_settings[label]},
                                   sort_keys=True, default=str),
            "source": rs[0]["source"],
        })
    return out


def tables(sample_rows: list[dict[str, Any]], profile_rows: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    return (pa.Table.from_pylist(sample_rows, schema=SAMPLES_SCHEMA),
            pa.Table.from_pylist(profile_rows, schema=PROFILES_SCHEMA))
