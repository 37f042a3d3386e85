"""The Self-Lengthen method: the macro-iteration loop and its contract.

Per iteration: self-instruct on the driver (step 0), generate + extend sharded by instructions (steps 1-2),
then the training sets, and the trainer (if any) whose adapters the next iteration's roles use. After the
last iteration, LonGen-style length-constrained queries from every kept extended response. Plain Python: the
loop runs the same under `lendata.build.run` and inside the Prefect flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lendata.inputs import read_instructions
from lendata.methods.base import Build, Method, Progress, Split
from lendata.methods.self_lengthen import sets
from lendata.methods.self_lengthen import steps as sl
from lendata.methods.self_lengthen.trainer import train_between
from lendata.methods.shared.budget import language_of
from schemas.self_lengthen import InstructionsSchema, PairsSchema, QueriesSchema, ResponsesSchema


def generate_and_extend(s: sl.Settings, instructions: Sequence[dict[str, Any]], offset: int, engines: Any,
                        progress: Progress, roles: dict[str, dict[str, Any]]) -> list[sl.Response]:
    """One shard of an iteration's instructions: the Generator answers them, the Extender lengthens the
    answers. `roles` holds the iteration's role settings (engine, options, LoRA adapter)."""
    gen, ext = (engines.get(roles[r]["engine"], roles[r]["engine_options"]) for r in sl.ROLES)
    instructions = list(instructions)
    with progress(len(instructions) * s.samples, "generate") as bar:
        responses = sl.generate(instructions, gen, s, roles["generator"]["lora"], on_result=bar.update)
    todo = sum(r.failed is None for r in responses)
    # an upper bound: two calls per micro-round; rows that succeed in their first attempt finish early
    with progress(todo * 2 * s.micro_rounds * s.extend_attempts, "extend (calls, at most)") as bar:
        return sl.extend(responses, ext, s, roles["extender"]["lora"], on_result=bar.update)


def self_instruct(seeds: list[dict[str, Any]], engine: Any, s: sl.Settings, iteration: int, lora: str | None,
                  build: Build) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with build.progress(s.instructions, f"iter {iteration} self-instruct") as bar:
        return sl.self_instruct(seeds, engine, s, iteration, lora, on_result=bar.update)


class SelfLengthen(Method):
    name = "self_lengthen"
    settings = sl.Settings
    sharded = True
    local_settings = ("trainer",)  # a command line of this machine
    card_tags = ("long-output", "sft", "self-lengthen")

    def splits(self, s: sl.Settings) -> dict[str, Split]:
        return {"instructions": Split(sets.INSTRUCTIONS_SCHEMA, InstructionsSchema),
                "responses": Split(sets.RESPONSES_SCHEMA, ResponsesSchema),
                "gen_sft": Split(sets.PAIR_SCHEMA, PairsSchema),
                "ext_sft": Split(sets.PAIR_SCHEMA, PairsSchema),
                "queries": Split(sets.QUERIES_SCHEMA, QueriesSchema)}

    def run(self, s: sl.Settings, build: Build) -> None:
        # every seed is read: the recipe's `n` is the number of new instructions per iteration
        loaded = read_instructions(build.path(s.input), instruction_field=s.instruction_field)
        build.quarantine([b.as_quarantine() for b in loaded.bad])
        seeds = [{**r, "language": r.get("language") or language_of(r["instruction"])} for r in loaded.rows]
        kept_all: list[sl.Response] = []
        adapters: dict[str, str] = {}
        roles_used = []
        for it in range(1, s.iterations + 1):
            roles = {role: sl.role_config(s, build.engines.default, role, it, adapters.get(role)) for role in sl.ROLES}
            gen, ext = (build.engines.get(roles[r]["engine"], roles[r]["engine_options"]) for r in sl.ROLES)
            roles_used.append({"iteration": it, **{r: {"engine": roles[r]["engine"], "lora": roles[r]["lora"]}
                                                   for r in sl.ROLES}})
            instructions, rejected = build.step("step 0: self-instruct", self_instruct, seeds, gen, s, it,
                                                roles["generator"]["lora"], build)
            done = build.map(generate_and_extend, instructions, f"iter {it}", roles)
            responses = [r for part in done for r in part]
            kept, dropped = sets.keep_long(responses, s, it)
            sets.count_tokens(kept, gen, ext)
            build.quarantine(rejected + sets.failures(responses) + dropped)
            gen_sft, ext_sft = sets.sft_tables(kept, s)
            build.add("instructions", pa.Table.from_pylist(instructions, schema=sets.INSTRUCTIONS_SCHEMA))
            build.add("responses", sets.responses_table(kept, s, ext.name, ext.model_id))
            build.add("gen_sft", gen_sft)
            build.add("ext_sft", ext_sft)
            kept_all += kept
            if s.trainer and it < s.iterations:
                adapters = build.step("train between iterations", train_between, s.trainer,
                                      build.scratch / "trainer", it, gen_sft, ext_sft)
        q = s.queries
        build.add("queries", sets.queries_table(kept_all, s, q.min_words, q.max_words, q.types, q.p1000,
                                                q.zh_numerals))
        build.meta["roles"] = roles_used


METHOD = SelfLengthen()
