"""Settings every method that reads an instruction file shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lendata.inputs import read_instructions
from lendata.methods.base import Build


@dataclass
class InstructionInput:
    input: str = ""  # JSONL or Parquet of instructions; relative to the recipe file
    instruction_field: str = "instruction"  # the field holding the instruction
    target_field: str | None = None  # the field holding the target length in words (optional)
    n: int | None = None  # take only the first n instructions

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 1:
            raise ValueError(f"n is {self.n}; it must be at least 1 (or null for every instruction)")
        getattr(super(), "__post_init__", lambda: None)()  # cooperative: the other bases' checks (JudgeGate)


def load_instructions(s: InstructionInput, build: Build) -> list[dict[str, Any]]:
    """The instruction rows of an SFT method's `input`; unusable lines quarantined with file and line."""
    loaded = read_instructions(build.path(s.input), instruction_field=s.instruction_field,
                               target_field=s.target_field, n=s.n)
    build.quarantine([b.as_quarantine() for b in loaded.bad])
    return loaded.rows
