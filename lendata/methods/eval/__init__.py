"""Evaluation runs: LongBench-Write-style sets, LongWrite-Ruler, LonGen and LV-Eval builds, answered and scored."""

from lendata.methods.eval.method import METHOD

__all__ = ["METHOD"]
