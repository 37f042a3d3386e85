"""Variable sequence length curriculum over decomposed buckets (Dataset Decomposition, METHODS.md §5).

Every step holds the same number of tokens b: a step from bucket D_k is b / 2^k sequences of 2^k tokens.
Each bucket's steps are split evenly over `cycles`; within a cycle each step's bucket is drawn with
probability ∝ o_k · n_k, where n_k is the bucket's number of steps in the cycle, among the buckets that still
have steps in that cycle (the reference's get_dd_params.py multiplies the odds into token-proportional
weights). Uniform odds therefore keep the mix flat over the epoch; Grow presets favour short sequences early
in a cycle and long ones late. The default is the paper's best: Grow-P2 with 8 cycles. Within a bucket,
sequences are used in a seeded random order, each at most once an epoch (the last b / 2^k - 1 at most may be
left over, so that every step is full).

The sampler is deterministic for its seed and epoch, and `state_dict()` / `load_state_dict()` resume it at
any step, e.g. mid-epoch after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

PRESETS = ("uniform", "grow_linear", "grow_p2")


def preset_odds(name: str, n: int) -> list[float]:
    """Odds for n buckets, shortest first: uniform (1,..,1), grow_linear (n,..,1), grow_p2 (2^(n-1),..,1)."""
    if name == "uniform":
        return [1.0] * n
    if name == "grow_linear":
        return [float(n - i) for i in range(n)]
    if name == "grow_p2":
        return [float(2 ** (n - 1 - i)) for i in range(n)]
    raise ValueError(f"unknown odds preset {name!r}; choose from {', '.join(PRESETS)} or give a list")


@dataclass
class Batch:
    step: int
    log2: int
    rows: np.ndarray  # row numbers within the bucket
    tokens: np.ndarray  # (sequences, tokens per sequence)


_BUCKET = re.compile(r"(?:^|/)bucket=(\d+)/")


class CurriculumSampler:
    """Batches of constant tokens per step from buckets {k: (sequences, tokens per sequence)}."""

    def __init__(
        self,
        buckets: Mapping[int, int],
        tokens_per_step: int,
        odds: str | Sequence[float] = "grow_p2",
        cycles: int = 8,
        seed: int = 0,
        epoch: int = 0,
        plus_one: bool = False,
        loader: Any = None,
    ):
        self.ks = sorted(k for k, n in buckets.items() if n > 0)
        if not self.ks:
            raise ValueError("no non-empty bucket to sample from")
        if tokens_per_step % (1 << self.ks[-1]):
            raise ValueError(f"tokens_per_step must be a multiple of 2^{self.ks[-1]} (the longest bucket), "
                             f"got {tokens_per_step}")
        if cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {cycles}")
        all_ks = sorted(buckets)
        weights = preset_odds(odds, len(all_ks)) if isinstance(odds, str) else [float(x) for x in odds]
        if len(weights) != len(all_ks) or min(weights) <= 0:
            raise ValueError(f"odds need one positive value per bucket ({len(all_ks)}), got {list(weights)}")
        self.odds = {k: w for k, w in zip(all_ks, weights, strict=True) if k in self.ks}
        self.n = {k: int(buckets[k]) for k in self.ks}
        self.b, self.cycles, self.seed, self.epoch = tokens_per_step, cycles, seed, epoch
        self.extra = int(plus_one)
        self.per_step = {k: tokens_per_step >> k for k in self.ks}
        self.steps_of = {k: self.n[k] // self.per_step[k] for k in self.ks}
        self.loader = loader
        self._step = 0
        self._schedule: np.ndarray | None = None
        self._order: dict[int, np.ndarray] = {}

    # --- the plan ------------------------------------------------------------------------------------------

    def _rng(self, *salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *salt])

    def schedule(self) -> np.ndarray:
        """The bucket of every step of the epoch."""
        if self._schedule is None:
            rng = self._rng(0)
            out: list[int] = []
            for c in range(self.cycles):
                left = {k: self.steps_of[k] // self.cycles + (1 if c < self.steps_of[k] % self.cycles else 0)
                        for k in self.ks}
                supply = dict(left)  # n_k: the bucket's steps in this cycle
                while any(left.values()):
                    ks = [k for k in self.ks if left[k]]
                    w = np.array([self.odds[k] * supply[k] for k in ks])
                    k = ks[int(rng.choice(len(ks), p=w / w.sum()))]
                    out.append(k)
                    left[k] -= 1
            self._schedule = np.array(out, dtype=np.int8)
        return self._schedule

    def order(self, k: int) -> np.ndarray:
        if k not in self._order:
            self._order[k] = self._rng(1, k).permutation(self.n[k])
        return self._order[k]

    def __len__(self) -> int:
        return int(self.schedule().size)

    def unused(self) -> dict[int, int]:
        """Sequences per bucket left out of this epoch because they do not fill a step."""
        return {k: self.n[k] - self.steps_of[k] * self.per_step[k] for k in self.ks}

    def plan(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(step, bucket, row numbers) from the current step to the end of the epoch, without loading tokens."""
        sched = self.schedule()
        used = {k: int((sched[: self._step] == k).sum()) for k in self.ks}
        for step in range(self._step, sched.size):
            k = int(sched[step])
            m = self.per_step[k]
            rows = self.order(k)[used[k] * m: (used[k] + 1) * m]
            used[k] += 1
            yield step, k, rows

    def __iter__(self) -> Iterator[Batch]:
        for step, k, rows in self.plan():
            tokens = self.loader(k, rows) if self.loader else np.zeros((rows.size, 0), np.int64)
            self._step = step + 1
            yield Batch(step, k, rows, tokens)

    # --- resuming ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "seed": self.seed, "epoch": self.epoch, "cycles": self.cycles,
                "tokens_per_step": self.b, "buckets": {str(k): self.n[k] for k in self.ks}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("seed", "epoch", "cycles", "tokens_per_step", "buckets"):
            if state[key] != mine[key]:
                raise ValueError(f"state is for {key}={state[key]!r}, this sampler has {mine[key]!r}")
        self._step = int(state["step"])

    # --- from a committed decomposition --------------------------------------------------------------------

    @classmethod
    def from_version(cls, version: Any, tokens_per_step: int, **kw: Any) -> CurriculumSampler:
        """A sampler over a committed `decompose` build (a `lendata.store.Version`: its manifest's train shards,
        each under `train/bucket=K/`); each bucket's tokens are read once, when first needed."""
        files: dict[int, list] = {}
        for f in version.splits["train"]["files"]:
            k = int(_BUCKET.search(f["path"]).group(1))
            files.setdefault(k, []).append((version.path / f["path"], f["rows"]))
        # versions built before the typed recipes kept the method's settings under `settings`
        settings = version.manifest.get("recipe_settings") or version.manifest.get("settings", {})
        cache: dict[int, np.ndarray] = {}

        def load(k: int, rows: np.ndarray) -> np.ndarray:
            if k not in cache:
                size = (1 << k) + int(settings.get("plus_one", False))
                col = pq.read_table([p for p, _ in files[k]], columns=["tokens"]).column("tokens").combine_chunks()
                cache[k] = np.asarray(col.values).reshape(-1, size)
            return cache[k][rows]

        counts = {k: sum(n for _, n in fs) for k, fs in files.items()}
        return cls(counts, tokens_per_step, plus_one=bool(settings.get("plus_one", False)), loader=load, **kw)


def torch_dataset(sampler: CurriculumSampler):
    """The sampler as a `torch.utils.data.IterableDataset` of {"input_ids": LongTensor, "log2": int}."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("torch_dataset needs PyTorch: pip install torch") from e

    class _Curriculum(torch.utils.data.IterableDataset):
        def __iter__(self):
            for batch in sampler:
                yield {"input_ids": torch.from_numpy(batch.tokens.astype(np.int64)), "log2": batch.log2,
                       "step": batch.step}

        def state_dict(self) -> dict[str, Any]:
            return sampler.state_dict()

        def load_state_dict(self, state: Mapping[str, Any]) -> None:
            sampler.load_state_dict(state)

    return _Curriculum()
