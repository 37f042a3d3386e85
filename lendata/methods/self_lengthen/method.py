"""The Self-Lengthen method: the macro-iteration loop and its contract.

Per iteration: self-instruct on the driver (step 0, the base model), generate + drop_short + extend sharded by
instructions (steps 1-2), then the training sets, and the training of both roles' adapters (built-in LoRA or an
external command) that the next iteration's roles use. After the last iteration, LonGen-style
length-constrained queries from every kept extended response. The manifest's `iterations` holds each
iteration's evidence: the adapters used (path and content hash), lengths, acceptance per check, training.
Plain Python: the loop runs the same under `lendata.build.run` and inside the Prefect flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from lendata.engines.base import require_continues_prefill
from lendata.inputs import read_instructions
from lendata.methods.base import Build, Method, Progress, Split
from lendata.methods.self_lengthen import queries, sets
from lendata.methods.self_lengthen import steps as sl
from lendata.methods.self_lengthen.trainer import train_builtin, train_command
from lendata.methods.shared import quality_gate
from lendata.methods.shared.budget import language_of
from lendata.training.lora import TrainingUnsupported
from schemas.self_lengthen import InstructionsSchema, PairsSchema, QueriesSchema, ResponsesSchema


def generate_shard(s: sl.Settings, instructions: Sequence[dict[str, Any]], offset: int, engines: Any,
                   progress: Progress, roles: dict[str, dict[str, Any]]) -> list[sl.Response]:
    """Step 1 over one shard of an iteration's instructions: the Generator's checked initial responses."""
    gen = engines.get(roles["generator"]["engine"], roles["generator"]["engine_options"])
    instructions = list(instructions)
    with progress(len(instructions) * s.samples, "generate") as bar:
        return sl.generate(instructions, gen, s, roles["generator"]["lora"], on_result=bar.update)


def extend_shard(s: sl.Settings, responses: Sequence[sl.Response], offset: int, engines: Any, progress: Progress,
                 roles: dict[str, dict[str, Any]]) -> list[sl.Response]:
    """Step 2 over one shard of the kept initial responses: each submitted for extension `extensions` times."""
    ext = engines.get(roles["extender"]["engine"], roles["extender"]["engine_options"])
    responses = list(responses)
    # an upper bound: submissions that succeed early finish early
    calls = len(responses) * s.extensions * 2 * s.micro_rounds * s.extend_retries
    with progress(calls, "extend (calls, at most)") as bar:
        return sl.extend(responses, ext, s, roles["extender"]["lora"], on_result=bar.update)


def self_instruct(seeds: list[dict[str, Any]], engine: Any, s: sl.Settings, iteration: int,
                  build: Build) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with build.progress(s.instructions, f"iter {iteration} self-instruct") as bar:
        return sl.self_instruct(seeds, engine, s, iteration, on_result=bar.update)


def train(s: sl.Settings, root: Path, iteration: int, gen_sft: pa.Table, ext_sft: pa.Table,
          previous: dict[str, str], engines: dict[str, Any], build: Build) -> dict[str, str]:
    """The adapters each role uses in the next iteration: the external `trainer` command's, or the built-in
    LoRA trainer's over each role's engine's own weights (or `lora.base`)."""
    if s.trainer:
        bases = {}
        for role, engine in engines.items():
            try:
                bases[role] = s.lora.base or str(engine.training_base())
            except (TrainingUnsupported, AttributeError):
                bases[role] = ""  # an external trainer may know its base model itself
        return train_command(s.trainer, root, iteration, gen_sft, ext_sft, previous, bases)
    bases = {role: s.lora.base or str(engine.training_base()) for role, engine in engines.items()}
    trained = train_builtin(s.lora, root, gen_sft, ext_sft, previous, bases, build.progress)
    return {role: path for role, path in trained.items() if path}


def check_trainable(s: sl.Settings, build: Build) -> None:
    """The built-in trainer needs base weights for every role and engines that apply adapters."""
    for role in sl.ROLES:
        cfg = sl.role_config(s, build.engines.default, role, 2, None)
        engine = build.engines.get(cfg["engine"], cfg["engine_options"])
        if not s.lora.base:
            engine.training_base()  # raises TrainingUnsupported with what to set
        if not engine.supports_lora:
            raise ValueError(f"the {role}'s {cfg['engine']} engine cannot apply LoRA adapters as configured: set "
                             f"engine_options.enable_lora: true (and max_lora_rank >= lora.rank {s.lora.rank})")
        max_rank = getattr(engine, "max_lora_rank", None)
        if max_rank is not None and max_rank < s.lora.rank:
            raise ValueError(f"the {role}'s engine allows LoRA rank {max_rank}, but lora.rank is {s.lora.rank}")


class SelfLengthen(Method):
    name = "self_lengthen"
    settings = sl.Settings
    sharded = True
    local_settings = ("trainer", "lora.base")  # a command line and a checkpoint path of this machine
    card_tags = ("long-output", "sft", "self-lengthen")

    def splits(self, s: sl.Settings) -> dict[str, Split]:
        return {"instructions": Split(sets.INSTRUCTIONS_SCHEMA, InstructionsSchema),
                "responses": Split(sets.RESPONSES_SCHEMA, ResponsesSchema),
                "gen_sft": Split(sets.PAIR_SCHEMA, PairsSchema),
                "ext_sft": Split(sets.PAIR_SCHEMA, PairsSchema),
                "queries": Split(quality_gate.with_judge_columns(queries.QUERIES_SCHEMA, s.quality), QueriesSchema)}

    def run(self, s: sl.Settings, build: Build) -> None:
        # every seed is read: the recipe's `n` is the number of new instructions per iteration
        loaded = read_instructions(build.path(s.input), instruction_field=s.instruction_field)
        build.quarantine([b.as_quarantine() for b in loaded.bad])
        seeds = [{**r, "language": r.get("language") or language_of(r["instruction"])} for r in loaded.rows]
        sources: list[queries.Source] = []
        adapters: dict[str, str] = {}
        evidence = []
        rounds = s.iterations + (1 if s.queries.final_round else 0)
        if s.train and rounds > 1 and not s.trainer:
            check_trainable(s, build)  # before any generation: a setup that cannot train fails now, not later
        for it in range(1, rounds + 1):
            collect = it > s.iterations  # the final collection round: its responses only feed queries
            roles = {role: sl.role_config(s, build.engines.default, role, it, adapters.get(role)) for role in sl.ROLES}
            gen, ext = (build.engines.get(roles[r]["engine"], roles[r]["engine_options"]) for r in sl.ROLES)
            # both write after a prefilled turn: an engine that cannot continue one fails before any call
            require_continues_prefill(gen, sl.SELF_INSTRUCT_PREFILL)
            require_continues_prefill(ext, sl.EXTENDER_PREFILL)
            # self-instruct and the judge: the Generator's engine without any adapter (the base model)
            instructions, rejected = build.step("step 0: self-instruct", self_instruct, seeds, gen, s, it, build)
            generated = [r for part in build.map(generate_shard, instructions, f"iter {it} generate", roles)
                         for r in part]
            # drop_short ranks all of the iteration's initial responses together, whatever the shard count
            generated, dropped_initial = sl.drop_short_initial(generated, s, it)
            usable = [r for r in generated if r.failed is None]
            responses = [r for r in generated if r.failed is not None] + [
                r for part in build.map(extend_shard, usable, f"iter {it} extend", roles) for r in part]
            kept, dropped = sets.keep_long(responses, s, it)
            sets.count_tokens(kept, gen, ext)
            build.quarantine(rejected + dropped_initial + sets.failures(responses) + dropped)
            sources += sets.query_sources(responses, kept, gen)
            evidence.append(sets.iteration_evidence(it, roles, instructions, rejected, responses, dropped_initial,
                                                    dropped, kept, s))
            if collect:
                evidence[-1]["collection_round"] = True
                continue
            gen_sft, ext_sft = sets.sft_tables(kept, s)
            build.add("instructions", pa.Table.from_pylist(instructions, schema=sets.INSTRUCTIONS_SCHEMA))
            build.add("responses", sets.responses_table(kept, s, ext.name, ext.model_id, roles))
            build.add("gen_sft", gen_sft)
            build.add("ext_sft", ext_sft)
            if s.train and it < rounds:
                # each role continues from the adapter that wrote this iteration's data (trained or named)
                used = {r: roles[r]["lora"] for r in sl.ROLES if roles[r]["lora"]}
                adapters = build.step("train between iterations", train, s, build.scratch / "trainer", it, gen_sft,
                                      ext_sft, used, {"generator": gen, "extender": ext}, build)
                evidence[-1]["trained"] = sets.adapter_evidence(adapters)
        # the rewrite is the base model's, like self-instruct and the judge
        base = build.engines.get(*build.engines.default) if s.queries.rewrite else None
        table = build.step("length-constrained queries", queries.queries_table, sources, s.queries, s.seed, base,
                           s.temperature, s.top_p, s.top_k)
        if s.quality.judge:  # the S_q gate: scores as columns, rows below min_sq quarantined with theirs
            table, below = build.step("quality judge", quality_gate.judge_shard, table, s.quality, build.engines,
                                      build.progress)
            build.quarantine(below)
        build.add("queries", table)
        build.meta["roles"] = [{"iteration": e["iteration"], **{r: e[r] for r in sl.ROLES}} for e in evidence]
        build.meta["iterations"] = evidence


METHOD = SelfLengthen()
