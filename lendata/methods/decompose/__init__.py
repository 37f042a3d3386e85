"""Dataset Decomposition (Pouransari et al. 2024): documents cut into power-of-two buckets (buckets.py),
streamed over a corpus (stream.py), sampled with a variable-sequence-length curriculum (curriculum.py),
reported (report.py); the recipe contract in method.py."""

from lendata.methods.decompose.method import METHOD

__all__ = ["METHOD"]
