"""Operating points of a detector: AUROC, and the true-positive rate at a fixed false-positive rate
with bootstrap confidence intervals.

A guardrail is run at a threshold, not at an AUROC: "flag 1 % of ordinary traffic" is the knob an
operator turns, and the question is what fraction of harmful requests that threshold catches.
Higher scores mean "more positive" everywhere in this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

DEFAULT_FPRS = (0.01, 0.05)
BOOTSTRAP_ROUNDS = 1000


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of scores ``pos`` (label 1) against ``neg`` (label 0)."""
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _rank_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """The same AUROC from mid-ranks (Mann-Whitney U), without sklearn's per-call overhead: the
    bootstrap calls it a thousand times per interval."""
    ranks = rankdata(np.r_[pos, neg])
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auroc_standard_error(value: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC ``value`` on ``n_pos`` positives and ``n_neg`` negatives
    (Hanley & McNeil 1982; needs no resampling, so cheap inside a cross-validation loop)."""
    a = min(max(float(value), 0.0), 1.0)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1.0 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / max(n_pos * n_neg, 1)
    return float(np.sqrt(max(var, 0.0)))


def threshold_at_fpr(neg: np.ndarray, fpr: float) -> float:
    """The score above which at most a fraction ``fpr`` of ``neg`` lies (strictly greater flags)."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    neg = np.sort(np.asarray(neg, np.float64).ravel())
    if len(neg) == 0:
        raise ValueError("need at least one negative score")
    allowed = int(np.floor(fpr * len(neg)))  # negatives that may lie above the threshold
    return float(neg[len(neg) - 1 - allowed])


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Fraction of ``pos`` strictly above the threshold that flags at most ``fpr`` of ``neg``."""
    return float(np.mean(np.asarray(pos, np.float64) > threshold_at_fpr(neg, fpr)))


@dataclass(frozen=True)
class OperatingPoint:
    """TPR at one target FPR, with a percentile bootstrap interval (pos and neg resampled apart)."""

    fpr: float
    tpr: float
    low: float
    high: float
    n_pos: int
    n_neg: int

    def as_dict(self) -> dict:
        return asdict(self)

    def cell(self) -> str:
        return f"{self.tpr:.2f} [{self.low:.2f}, {self.high:.2f}]"


def operating_points(
    pos: np.ndarray,
    neg: np.ndarray,
    fprs: tuple[float, ...] = DEFAULT_FPRS,
    rounds: int = BOOTSTRAP_ROUNDS,
    level: float = 0.95,
    seed: int = 0,
) -> list[OperatingPoint]:
    """TPR at each FPR in ``fprs`` with a ``level`` bootstrap interval.

    With few negatives a 1 % FPR is coarse (100 negatives: the threshold is the single highest one),
    so the interval is wide; that width is the honest answer, report it.
    """
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    rng = np.random.default_rng(seed)
    pos_idx = rng.integers(0, len(pos), size=(rounds, len(pos)))
    neg_idx = rng.integers(0, len(neg), size=(rounds, len(neg)))
    tail = (1.0 - level) / 2
    points = []
    for fpr in fprs:
        samples = np.array([tpr_at_fpr(pos[p], neg[n], fpr) for p, n in zip(pos_idx, neg_idx, strict=True)])
        low, high = np.quantile(samples, [tail, 1.0 - tail])
        points.append(OperatingPoint(fpr, tpr_at_fpr(pos, neg, fpr), float(low), float(high), len(pos), len(neg)))
    return points


def auroc_interval(pos: np.ndarray, neg: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC (pos and neg resampled apart)."""
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    rng = np.random.default_rng(seed)
    samples = [_rank_auroc(pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))])
               for _ in range(rounds)]
    tail = (1.0 - level) / 2
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)
