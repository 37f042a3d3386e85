"""Win rates from pairwise preferences: the raw win rate and AlpacaEval 2.0's length-controlled (LC) win rate.

Paper: Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators";
reference: tatsu-lab/alpaca_eval, `metrics/glm_winrate.py` and `metrics/helpers.py` (METHODS §2).

A preference is AlpacaEval's: a number in [1, 2] saying how much `output_2` (system B, `generator_2`) is
preferred over `output_1` (the baseline A, `generator_1`); 0 and 1.5 are ties. The raw win rate is the mean of
(preference - 1) in percent. The LC win rate fits a logistic GLM of the preference on a standardised length
difference, `tanh(Δlen / std(Δlen))` with Δlen in characters, and the system's constant (plus an instruction
difficulty term when there is one), then predicts every row with the length term at 0 and averages. The fit is
the reference's: L1 penalty, liblinear, no intercept column beyond the constant, the penalty chosen by 5-fold
grouped cross-validation on the continuous log loss, the preferences used as probabilities (each row twice,
labels 1 and 0, weighted p and 1 - p). `tests/test_winrate.py` checks the numbers against AlpacaEval's own code
run on its published annotations.

Deliberate deviations:
- **Sign of the length term.** lendata's Δlen is len(B) - len(A), so a positive `length_coefficient` means the
  judge favours the longer answer; the reference uses len(A) - len(B). The fit and the LC win rate are the same.
- **Instruction difficulty.** AlpacaEval's default GLM (`length_controlled_v1`) uses a per-instruction
  difficulty precomputed over its whole leaderboard and regularises toward two "gamed" baselines; neither
  exists for a user's own instructions, so lendata's numbers are not comparable with published LC win rates.
  With one system against the baseline lendata fits the reference's `length_controlled_minimal` (length term +
  constant). With several systems against the same baseline, sharing at least half of a system's
  instructions, it fits the reference's `length_controlled_noreg` formula (length + difficulty + constant), with
  each instruction's difficulty estimated from the *other* systems (a joint L2 logistic fit with a constant and
  a length term per system and an effect per instruction). Estimating it from all systems, the scored one
  included, let that system's length effect leak back into the LC win rate.
- **Unanimous preferences.** Preferences are clipped to [1e-9, 1 - 1e-9] before the fit. With every row exactly
  1 or 2 (lendata's pairwise judge gives only 1, 1.5 and 2) the reference's fit sees one class and returns 50.
- **Few pairs.** Below 50 pairs a warning goes with the numbers: cross-validation then often picks the penalty
  that sets every coefficient to 0, and the LC win rate is exactly 50.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N_SPLITS = 5  # the reference's cross-validation folds
RANDOM_STATE = 123  # the reference's seed for liblinear
CLIP = 1e-9  # preferences as probabilities are kept inside (0, 1); see fit_glm
MIN_COVERAGE = 0.5  # the share of a system's instructions the other systems must share for the difficulty term
FEW_PAIRS = 50  # below this many pairs the LC win rate is flagged as unreliable


class AnnotationError(ValueError):
    """An annotations file that cannot be read at all (not JSON, not a list)."""


@dataclass(frozen=True)
class Annotation:
    """One judged pair: `preference` in [1, 2] for output_2 (B) over output_1 (A); 1.5 is a tie."""

    instruction: str
    output_1: str
    output_2: str
    generator_1: str
    generator_2: str
    preference: float


def parse_preference(value: Any) -> float:
    """AlpacaEval's preference as a float in [1, 2]: 0 (the older tie) becomes 1.5; anything else is an error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"preference {value!r} is not a number")
    if value == 0:
        return 1.5
    if not 1 <= value <= 2:
        raise ValueError(f"preference {value!r} is not in [1, 2] (or 0 for a tie)")
    return float(value)


def read_annotations(path: str | Path) -> tuple[list[Annotation], list[str]]:
    """(annotations, skipped) from AlpacaEval's annotation format: a JSON list of objects with `instruction`,
    `output_1`, `output_2`, `generator_1`, `generator_2` and `preference`. Rows without a usable preference
    (AlpacaEval drops unjudged rows too) are listed in `skipped` with where and why."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: not a JSON file: {e}") from None
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of annotations, got {type(data).__name__}")
    rows, skipped = [], []
    for i, rec in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(rec, dict):
            skipped.append(f"{where}: not an object")
            continue
        missing = [k for k in ("instruction", "output_1", "output_2", "generator_1", "generator_2")
                   if not isinstance(rec.get(k), str)]
        if missing:
            skipped.append(f"{where}: no text in {', '.join(missing)}")
            continue
        if rec.get("preference") is None:
            skipped.append(f"{where}: not judged (no preference)")
            continue
        try:
            pref = parse_preference(rec["preference"])
        except ValueError as e:
            skipped.append(f"{where}: {e}")
            continue
        rows.append(Annotation(rec["instruction"], rec["output_1"], rec["output_2"], rec["generator_1"],
                               rec["generator_2"], pref))
    return rows, skipped


def raw_win_rate(preferences: Sequence[float]) -> tuple[float, float]:
    """(win rate of B in percent, its standard error in percent): the mean of preference - 1, as AlpacaEval."""
    y = np.asarray(preferences, dtype=float) - 1
    return float(y.mean() * 100), _sem(y) * 100


def length_feature(len_a: Sequence[int], len_b: Sequence[int]) -> np.ndarray:
    """tanh(Δlen / std(Δlen)) with Δlen = len(B) - len(A) (sample std, as pandas); 0 where every Δ is equal."""
    delta = np.asarray(len_b, dtype=float) - np.asarray(len_a, dtype=float)
    std = float(np.std(delta, ddof=1)) if len(delta) > 1 else 0.0
    return np.tanh(delta / std) if std > 0 else np.zeros_like(delta)


def _continuous_log_loss(y_true, y_pred, true_prob) -> float:
    # the rows are doubled (label 1 weighted p, label 0 weighted 1 - p); undo that to score against p itself
    p = np.where(y_true == 1, true_prob, 1 - true_prob)
    q = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return float(-np.mean(p * np.log(q) + (1 - p) * np.log(1 - q)))


def _doubled(x: np.ndarray, y: np.ndarray):
    """Each row twice, labelled 1 (weight p) and 0 (weight 1 - p): sklearn's logistic regression then fits the
    preference as a probability."""
    xx = np.vstack([x, x])
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    prob = np.concatenate([y, 1 - y])  # the probability of each row's label
    groups = np.concatenate([np.arange(len(y)), np.arange(len(y))])
    return xx, labels, prob, groups


def fit_glm(y: Sequence[float], x: np.ndarray) -> tuple[np.ndarray, Any]:
    """The reference's fit: L1 logistic regression without intercept, C chosen by grouped k-fold CV on the
    continuous log loss. `y` are preferences as probabilities in [0, 1]; returns (coefficients, model)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    # unanimous preferences (every row exactly 1 or 2, as lendata's pairwise judge gives) would leave one label
    # with no weight at all; liblinear then fits one class and the LC win rate comes out 50
    y = np.clip(np.asarray(y, dtype=float), CLIP, 1 - CLIP)
    xx, labels, prob, groups = _doubled(x, y)
    n_splits = min(N_SPLITS, len(y))
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        # sklearn 1.8 deprecates `penalty`; the reference's l1/liblinear is l1_ratios=(1,) with the same solver
        warnings.simplefilter("ignore", FutureWarning)
        if n_splits >= 2:
            scorer = make_scorer(_continuous_log_loss, response_method="predict_proba",
                                 greater_is_better=False).set_score_request(true_prob=True)
            model = LogisticRegressionCV(cv=GroupKFold(n_splits=n_splits), scoring=scorer, l1_ratios=(1.0,),
                                         solver="liblinear", fit_intercept=False, random_state=RANDOM_STATE,
                                         use_legacy_attributes=False)
            model.set_fit_request(sample_weight=True)
            model.fit(xx, labels, sample_weight=prob, groups=groups, true_prob=prob)
        else:  # one row: nothing to cross-validate; the reference's fallback C
            model = LogisticRegression(C=100, l1_ratio=1.0, solver="liblinear", fit_intercept=False,
                                       random_state=RANDOM_STATE)
            model.fit(xx, labels, sample_weight=prob)
    return model.coef_[0], model


def _logistic(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -z))


@dataclass(frozen=True)
class WinRates:
    generator_1: str
    generator_2: str
    n: int
    win_rate: float
    win_rate_standard_error: float
    lc_win_rate: float
    lc_standard_error: float
    length_coefficient: float
    model: str  # "minimal" (length + constant), "difficulty" (+ instruction difficulty) or "same system"
    warning: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"n": self.n, "win_rate": self.win_rate, "lc_win_rate": self.lc_win_rate,
                "lc_standard_error": self.lc_standard_error, "length_coefficient": self.length_coefficient,
                "generator_1": self.generator_1, "generator_2": self.generator_2,
                "win_rate_standard_error": self.win_rate_standard_error, "glm": self.model,
                "warning": self.warning}


def _sem(p: np.ndarray) -> float:
    return float(np.std(p, ddof=1) / math.sqrt(len(p))) if len(p) > 1 else 0.0


def lc_for_system(rows: Sequence[Annotation], difficulty: dict[str, float] | None = None) -> WinRates:
    """Raw and LC win rate of one system (generator_2) over one baseline (generator_1)."""
    if not rows:
        raise ValueError("no judged pairs")
    a, b = rows[0].generator_1, rows[0].generator_2
    pref = np.array([r.preference for r in rows])
    wr, wr_se = raw_win_rate(pref)
    if a == b:  # a system against itself is 50 by construction, as in the reference
        return WinRates(a, b, len(rows), wr, wr_se, 50.0, 0.0, 0.0, "same system")
    y = pref - 1
    length = length_feature([len(r.output_1) for r in rows], [len(r.output_2) for r in rows])
    columns = [length]
    if difficulty is not None:
        columns.append(np.array([difficulty[r.instruction] for r in rows]))
    columns.append(np.ones(len(rows)))  # the system's constant: θ_m - θ_b
    x = np.column_stack(columns)
    coef, _ = fit_glm(y, x)
    x0 = x.copy()
    x0[:, 0] = 0.0  # the same rows with no length difference
    predicted = _logistic(x0 @ coef)
    warning = None
    if len(rows) < FEW_PAIRS:
        warning = (f"only {len(rows)} pairs: with this few, cross-validation often chooses a penalty that sets "
                   "every coefficient to 0, and the LC win rate is then exactly 50")
    return WinRates(a, b, len(rows), wr, wr_se, float(predicted.mean() * 100), _sem(predicted) * 100,
                    float(coef[0]), "difficulty" if difficulty is not None else "minimal", warning)


def instruction_difficulty(rows: Sequence[Annotation]) -> dict[str, float]:
    """Each instruction's difficulty, estimated from the systems judged on it: the per-instruction effect of a
    joint L2 logistic fit with a constant and a length term per system (centred to mean 0)."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    systems = sorted({r.generator_2 for r in rows})
    instructions = sorted({r.instruction for r in rows})
    s_index = {s: i for i, s in enumerate(systems)}
    x_index = {x: i for i, x in enumerate(instructions)}
    by_system: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_system[r.generator_2].append(i)
    length = np.zeros(len(rows))
    for idx in by_system.values():  # standardised within each system, as the per-system fit sees it
        length[idx] = length_feature([len(rows[i].output_1) for i in idx], [len(rows[i].output_2) for i in idx])
    k = len(systems)
    r_idx, c_idx, vals = [], [], []
    for i, r in enumerate(rows):  # sparse: a column per system, per system's length term, per instruction
        s = s_index[r.generator_2]
        r_idx += [i, i, i]
        c_idx += [s, k + s, 2 * k + x_index[r.instruction]]
        vals += [1.0, length[i], 1.0]
    x = sparse.csr_matrix((vals, (r_idx, c_idx)), shape=(len(rows), 2 * k + len(instructions)))
    y = np.clip([r.preference - 1 for r in rows], CLIP, 1 - CLIP)
    xx = sparse.vstack([x, x]).tocsr()
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    model = LogisticRegression(C=1.0, solver="liblinear", fit_intercept=False, random_state=RANDOM_STATE)
    model.fit(xx, labels, sample_weight=np.concatenate([y, 1 - y]))
    effects = model.coef_[0][2 * k:]
    effects = effects - effects.mean()
    return {instr: float(effects[x_index[instr]]) for instr in instructions}


def win_rates(rows: Sequence[Annotation], difficulty: bool = True) -> list[WinRates]:
    """Raw and LC win rates of every system (generator_2) against each baseline (generator_1).

    With `difficulty` and other systems judged against the same baseline on most of a system's instructions
    (MIN_COVERAGE), the GLM includes instruction difficulty. It is cross-fitted: the difficulty a system is
    scored with is estimated from the other systems only, so the system's own outcomes (and its length effect)
    cannot leak into the term that the LC prediction keeps."""
    groups: dict[tuple[str, str], list[Annotation]] = defaultdict(list)
    for r in rows:
        groups[(r.generator_1, r.generator_2)].append(r)
    out = []
    for (a, b), rs in sorted(groups.items()):
        others = [r for (a2, b2), rs2 in groups.items() if a2 == a and b2 not in (a, b) for r in rs2]
        gamma = None
        if difficulty and a != b and others:
            estimated = instruction_difficulty(others)
            if sum(r.instruction in estimated for r in rs) >= MIN_COVERAGE * len(rs):
                gamma = {r.instruction: estimated.get(r.instruction, 0.0) for r in rs}
        out.append(lc_for_system(rs, gamma))
    return out
