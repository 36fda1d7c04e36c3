"""Policy thresholds from an operator's ordinary traffic: each rule flags a requested fraction of it.

A rule fires when a per-request *statistic* crosses its threshold; which statistic depends on the
rule's score kind (``guard.monitor``), and the one computed here is exactly what the monitor
compares, so "threshold = the (1 - fpr) quantile of the statistic on benign prompts" makes the rule
flag a fraction ``fpr`` of such traffic:

* ``prompt``: the z-score of the prompt's last token;
* ``generation``: the largest EMA of generated tokens' z from the ``min_tokens``-th token on (the
  rule fires the first time the EMA is over the threshold);
* ``token``: the ``min_tokens``-th largest generated-token z (within the best ``window`` tokens when
  the rule has a window): the rule fires iff that many tokens are over the threshold.

Rules with ``direction: below`` use the negated score, so "higher statistic = fires sooner" always.
A request too short for the rule (fewer than ``min_tokens`` generated tokens) never fires: its
statistic is ``-inf``. The quantile itself is ``probes.operating_points.threshold_at_fpr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from guard.policy import Rule
from guard.policy_check import ResolvedRule
from probes.operating_points import threshold_at_fpr


@dataclass(frozen=True)
class ScoredRequest:
    """One request as the monitor saw it: ``prompt_z`` [K] and generated tokens' z ``generated`` [t, K]."""

    prompt_z: np.ndarray
    generated: np.ndarray


@dataclass(frozen=True)
class RuleThreshold:
    """A rule's threshold for a requested flag rate, with what it achieves on the sample it was set on
    (``sample_rate``) and, when positives were given, on them (``recall``)."""

    rule: str
    axis: str
    score: str
    threshold: float
    requested_rate: float
    sample_rate: float
    sample_size: int
    never_fire: int
    recall: float | None = None
    positives: int = 0


def _ema(z: np.ndarray, alpha: float) -> np.ndarray:
    """The monitor's EMA of each generated token's z (the first token initialises it)."""
    out = np.empty_like(z)
    for t, value in enumerate(z):
        out[t] = value if t == 0 else (1.0 - alpha) * out[t - 1] + alpha * value
    return out


def _kth_largest(z: np.ndarray, k: int, window: int | None) -> float:
    if len(z) < k:
        return float("-inf")
    if not window or window >= len(z):
        return float(np.sort(z)[-k])
    if window < k:
        return float("-inf")
    return max(float(np.sort(z[end - window:end])[-k]) for end in range(window, len(z) + 1))


def rule_statistic(rule: Rule, axis_index: int, request: ScoredRequest, ema_alpha: float) -> float:
    """The value the monitor compares with ``rule``'s threshold for this request (sign-adjusted)."""
    sign = 1.0 if rule.direction == "above" else -1.0
    if rule.score == "prompt":
        return sign * float(request.prompt_z[axis_index])
    z = sign * np.asarray(request.generated, np.float64)[:, axis_index] if len(request.generated) else np.zeros(0)
    if rule.score == "token":
        return _kth_largest(z, rule.min_tokens, rule.window)
    if len(z) < rule.min_tokens:
        return float("-inf")
    return float(_ema(z, ema_alpha)[rule.min_tokens - 1:].max())  # EMA is linear: EMA(sign z) = sign EMA(z)


def rule_statistics(rule: Rule, axis_index: int, requests: Sequence[ScoredRequest], ema_alpha: float) -> np.ndarray:
    return np.array([rule_statistic(rule, axis_index, r, ema_alpha) for r in requests], np.float64)


def flag_rate(statistics: np.ndarray, threshold_stat: float) -> float:
    """Fraction of requests whose statistic is over the (sign-adjusted) threshold: what the rule flags."""
    return float(np.mean(statistics > threshold_stat)) if len(statistics) else 0.0


def threshold_for_rate(rule: Rule, axis: str, axis_index: int, requests: Sequence[ScoredRequest], fpr: float,
                       ema_alpha: float, positives: Sequence[ScoredRequest] = ()) -> RuleThreshold:
    """The threshold at which ``rule`` flags a fraction ``fpr`` of ``requests`` (at most, in-sample)."""
    stats = rule_statistics(rule, axis_index, requests, ema_alpha)
    finite = stats[np.isfinite(stats)]
    # requests that can never fire count as unflagged negatives: allow fpr of *all* requests
    padded = np.concatenate([finite, np.full(len(stats) - len(finite), finite.min() - 1.0 if len(finite) else 0.0)])
    # written with 4 decimals, rounded towards "fires less" so the in-sample rate stays <= fpr
    cut = float(np.ceil(threshold_at_fpr(padded, fpr) * 1e4) / 1e4)
    sign = 1.0 if rule.direction == "above" else -1.0
    recall, n_pos = None, len(positives)
    if n_pos:
        recall = flag_rate(rule_statistics(rule, axis_index, positives, ema_alpha), cut)
    return RuleThreshold(rule.name, axis, rule.score, sign * cut, fpr, flag_rate(stats, cut), len(stats),
                         int(len(stats) - len(finite)), recall, n_pos)


def policy_thresholds(rules: Sequence[ResolvedRule], axis_names: Sequence[str], requests: Sequence[ScoredRequest],
                      fpr: float, ema_alpha: float, positives: Sequence[ScoredRequest] = ()) -> list[RuleThreshold]:
    """``threshold_for_rate`` for every enabled rule bound to a pack (``guard.policy_check.check_against_pack``)."""
    return [threshold_for_rate(r.rule, axis_names[r.axis_index], r.axis_index, requests, fpr, ema_alpha, positives)
            for r in rules if r.rule.enabled]


def flags(rule: ResolvedRule, threshold: float, requests: Sequence[ScoredRequest], ema_alpha: float) -> np.ndarray:
    """Per request, whether ``rule`` with this policy ``threshold`` (unsigned, as written) flags it."""
    sign = 1.0 if rule.rule.direction == "above" else -1.0
    return rule_statistics(rule.rule, rule.axis_index, requests, ema_alpha) > sign * threshold


def held_out_rate(rule: ResolvedRule, threshold: RuleThreshold, requests: Sequence[ScoredRequest],
                  ema_alpha: float) -> float:
    """The fraction of ``requests`` (a sample the threshold was NOT set on) that the rule flags."""
    return float(np.mean(flags(rule, threshold.threshold, requests, ema_alpha))) if len(requests) else 0.0
