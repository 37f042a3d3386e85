"""Self-Lengthen outputs: the kept responses, the two training sets and length-constrained queries.

- `responses`: instruction, initial and extended response, their lengths, iteration (after drop_short);
- `gen_sft`: instruction -> extended response (trains the Generator to answer longer);
- `ext_sft`: extend prompt over the initial response with each line kept with p=0.8 -> extended response
  (trains the Extender to expand);
- `queries` (queries.py): LonGen-style length-constrained queries whose constraint the response satisfies.

Training sets carry both shapes: `messages` (chat) and Alpaca `instruction`/`input`/`output`.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lendata.engines.identity import model_name
from lendata.methods.self_lengthen.queries import Source
from lendata.methods.self_lengthen.steps import Response, Settings, extend_chat, rejection, words
from lendata.methods.shared import checks
from lendata.methods.shared.sft import MESSAGE, row_id

INSTRUCTIONS_SCHEMA = pa.schema([
    ("id", pa.string()), ("instruction", pa.large_string()), ("language", pa.string()), ("iteration", pa.int32()),
])
RESPONSES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("instruction_id", pa.string()),
    ("instruction", pa.large_string()),
    ("language", pa.string()),
    ("iteration", pa.int32()),
    ("sample", pa.int32()),
    ("extension", pa.int32()),
    ("initial_response", pa.large_string()),
    ("extended_response", pa.large_string()),
    ("initial_words", pa.int32()),
    ("extended_words", pa.int32()),
    ("initial_tokens", pa.int32()),
    ("extended_tokens", pa.int32()),
    ("growth", pa.float64()),
    ("generate_attempts", pa.int32()),
    ("extend_attempts", pa.int32()),
    ("rounds_accepted", pa.int32()),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("generator_adapter", pa.string()),  # sha256 of the adapter the Generator used (null: the base model)
    ("extender_adapter", pa.string()),
])
PAIR_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("iteration", pa.int32()),
    ("language", pa.string()),
    ("messages", pa.list_(MESSAGE)),
    ("instruction", pa.large_string()),
    ("input", pa.large_string()),
    ("output", pa.large_string()),
    ("output_words", pa.int32()),
    ("output_tokens", pa.int32()),
])


def keep_long(responses: Sequence[Response], s: Settings, iteration: int) -> tuple[list[Response], list[dict]]:
    """drop_short over the extended responses (by characters, seeded); the dropped ones as rejections."""
    done = sorted((r for r in responses if r.extended is not None), key=lambda r: r.id)
    if not s.drop_short or not done:
        return done, []
    keep = checks.drop_short([len(r.extended or "") for r in done], random.Random(s.seed * 1000 + iteration))
    dropped = [rejection("drop_short", f"drop_short: {len(r.extended or '')} characters, among the shorter ones",
                         {"instruction": r.instruction, "extended_response": r.extended}, r.id)
               for r, k in zip(done, keep, strict=True) if not k]
    return [r for r, k in zip(done, keep, strict=True) if k], dropped


def failures(responses: Sequence[Response]) -> list[dict[str, Any]]:
    """Responses that never passed generation or extension, with their reason."""
    return [rejection(r.failed.split(":")[0], r.failed,
                      {"instruction": r.instruction, "iteration": r.iteration, "initial_response": r.initial}, r.id)
            for r in responses if r.failed]


def count_tokens(kept: Sequence[Response], generator: Any, extender: Any) -> None:
    """Each text's tokens by the tokenizer of the model that wrote it: the Generator's for the initial
    response, the Extender's for the extended one."""
    for r, n in zip(kept, generator.count_tokens([r.initial for r in kept]) if kept else [], strict=True):
        r.initial_tokens = n
    for r, n in zip(kept, extender.count_tokens([r.extended or "" for r in kept]) if kept else [], strict=True):
        r.extended_tokens = n


def adapter_hash(path: str | None) -> str | None:
    from lendata.engines.identity import content_identity

    return content_identity(path) if path else None


def responses_table(kept: Sequence[Response], s: Settings, engine: str, model: str,
                    roles: dict[str, dict[str, Any]] | None = None) -> pa.Table:
    used = {role: adapter_hash((roles or {}).get(role, {}).get("lora")) for role in ("generator", "extender")}
    rows = []
    for r in kept:
        a, b = words(r.initial, s), words(r.extended or "", s)
        rows.append({"id": r.id, "instruction_id": r.instruction_id, "instruction": r.instruction,
                     "language": r.language, "iteration": r.iteration, "sample": r.sample,
                     "extension": r.extension,
                     "initial_response": r.initial, "extended_response": r.extended, "initial_words": a,
                     "extended_words": b, "initial_tokens": r.initial_tokens, "extended_tokens": r.extended_tokens,
                     "growth": round(b / a, 4) if a else None,
                     "generate_attempts": r.gen_attempts, "extend_attempts": r.extend_attempts,
                     "rounds_accepted": r.rounds_accepted, "engine": engine, "model": model_name(model),
                     "generator_adapter": used["generator"], "extender_adapter": used["extender"]})
    return pa.Table.from_pylist(rows, schema=RESPONSES_SCHEMA)


def _stats(values: list[int]) -> dict[str, float | None]:
    return {"mean": round(statistics.fmean(values), 1) if values else None,
            "median": statistics.median(values) if values else None}


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def adapter_evidence(adapters: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """Per role: the adapter's path, content hash and (built-in trainer) training record."""
    from lendata.training.lora import training_log

    out = {}
    for role, path in adapters.items():
        log = training_log(path) if path else None
        out[role] = {"adapter": path, "sha256": adapter_hash(path),
                     "training": {k: log[k] for k in ("train_loss", "steps", "rows", "seconds") if k in log}
                     if log else None}
    return out


def iteration_evidence(iteration: int, roles: dict[str, dict[str, Any]], instructions: Sequence[dict[str, Any]],
                       rejected: Sequence[dict[str, Any]], responses: Sequence[Response],
                       dropped_initial: Sequence[dict[str, Any]], dropped: Sequence[dict[str, Any]],
                       kept: Sequence[Response], s: Settings) -> dict[str, Any]:
    """What one iteration used and made, for the manifest: each role's engine and adapter (path and hash),
    the initial and extended lengths, and how many passed each check."""
    submitted = [r for r in responses if r.extension is not None]
    # initial responses that passed the check: those extended (two submissions each) and those drop_short removed
    passed = len({(r.instruction_id, r.sample) for r in submitted}) + len(dropped_initial)
    extended = [r for r in submitted if r.extended is not None]
    return {
        "iteration": iteration,
        **{role: {"engine": roles[role]["engine"], "lora": roles[role]["lora"],
                  "lora_sha256": adapter_hash(roles[role]["lora"])} for role in ("generator", "extender")},
        "instructions": len(instructions),
        "lengths": {"initial_words": _stats([words(r.initial, s) for r in kept]),
                    "extended_words": _stats([words(r.extended or "", s) for r in kept])},
        "acceptance": {
            "self_instruct": _share(len(instructions), len(instructions) + len(rejected)),
            "generate": _share(passed, len(instructions) * s.samples),
            "drop_short_initial": _share(passed - len(dropped_initial), passed),
            "extend": _share(len(extended), len(submitted)),
            "drop_short_extended": _share(len(kept), len(extended)),
        },
        "responses": len(kept),
    }


def _pair(rid: str, r: Response, prompt: str, s: Settings) -> dict[str, Any]:
    out = r.extended or ""
    return {"id": rid, "iteration": r.iteration, "language": r.language,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": out}],
            "instruction": prompt, "input": "", "output": out, "output_words": words(out, s),
            "output_tokens": r.extended_tokens}


def drop_lines(text: str, keep: float, rng: random.Random) -> str:
    """The corrupted input of ext_sft: each line kept with probability `keep`, rejoined by blank lines."""
    return "\n\n".join(line for line in text.split("\n") if rng.random() < keep)


def sft_tables(kept: Sequence[Response], s: Settings) -> tuple[pa.Table, pa.Table]:
    gen, ext = [], []
    for r in kept:
        gen.append(_pair(row_id("gen_sft", r.id), r, r.instruction, s))
        rng = random.Random(f"{s.seed}|ext_sft|{r.id}")
        corrupted = drop_lines(r.initial, s.line_keep, rng)
        ext.append(_pair(row_id("ext_sft", r.id), r, extend_chat(r.instruction, corrupted, r.language)[0]["content"],
                         s))
    return pa.Table.from_pylist(gen, schema=PAIR_SCHEMA), pa.Table.from_pylist(ext, schema=PAIR_SCHEMA)


def query_sources(responses: Sequence[Response], kept: Sequence[Response], generator: Any) -> list[Source]:
    """What an iteration gives the queries: every initial response that reached extension (once, however many
    extensions it had) and every kept extended response, each with its writer's token count."""
    out, seen = [], set()
    for r in responses:
        key = (r.instruction_id, r.sample)
        if r.extension is not None and r.initial and key not in seen:
            seen.add(key)
            out.append(Source(row_id("initial", *key), r.iteration, r.language, r.instruction, r.initial, "initial"))
    if out:
        for src, n in zip(out, generator.count_tokens([src.text for src in out]), strict=True):
            src.tokens = n
    out += [Source(r.id, r.iteration, r.language, r.instruction, r.extended or "", "extended", r.extended_tokens)
            for r in kept]
    return out
