"""Binding a policy to a pack: axis indices, numeric thresholds, steering layers; refusing what cannot run.

``check_against_pack`` reports every problem (an axis the pack lacks, a steering layer out of range,
a clamp away from its axis' layer) and warns about thresholds that can never or will always fire.
``require_runnable`` raises on the errors, so a guard refuses a bad policy before it serves.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field

from guard.errors import AxisguardError
from guard.policy import Policy, Rule

if typing.TYPE_CHECKING:
    from guard.pack import AxisPack

log = logging.getLogger(__name__)


@dataclass
class ResolvedRule:
    """A rule bound to a pack: axis indices and numeric thresholds/targets."""

    rule: Rule
    index: int
    axis_index: int
    threshold: float
    steer_axis_index: int | None = None
    steer_layers: tuple[int, ...] = ()
    clamp_target_z: float | None = None


@dataclass
class PolicyCheck:
    """Outcome of ``check_against_pack``: problems that refuse the policy, and warnings."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resolved: list[ResolvedRule] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_against_pack(policy: Policy, pack: AxisPack) -> PolicyCheck:
    """Bind every rule to the pack; report unknown axes, bad layers and thresholds that cannot work."""
    check = PolicyCheck()
    names = pack.axis_names
    num_layers = pack.model.num_layers
    for rule in policy.rules:
        problems: list[str] = []
        missing = [a for a in (rule.axis, rule.steer.axis if rule.steer else None) if a and a not in names]
        if missing:
            message = (f"rule {rule.name!r}: axis {missing[0]!r} is not in the pack "
                       f"(pack axes: {', '.join(names)})")
            if policy.unknown_axes == "error":
                check.errors.append(message)
            else:
                check.warnings.append(message + "; the rule is skipped")
                check.skipped.append(rule.name)
            continue
        k = names.index(rule.axis)
        threshold = pack.auto_threshold(k) if rule.threshold == "auto" else float(rule.threshold)
        resolved = ResolvedRule(rule=rule, index=len(check.resolved), axis_index=k, threshold=threshold)
        pos, neg = float(pack.pos_mean_z[k]), float(pack.neg_mean_z[k])
        if rule.direction == "above" and threshold > max(pos, neg) + 4.0:
            check.warnings.append(
                f"rule {rule.name!r}: threshold {threshold:.2f} is far above the calibrated positive mean "
                f"{pos:.2f} for {rule.axis!r}; it may never fire"
            )
        if rule.direction == "above" and threshold < min(pos, neg):
            check.warnings.append(
                f"rule {rule.name!r}: threshold {threshold:.2f} is below the calibrated negative mean "
                f"{neg:.2f} for {rule.axis!r}; it will fire on most benign traffic"
            )
        if rule.steer is not None:
            steer = rule.steer
            sk = names.index(steer.axis) if steer.axis else k
            own = pack.layers_by_axis[sk]  # the steering axis' layer (its own with per-axis layers)
            layers = tuple(steer.layers) if steer.layers is not None else (own,)
            bad = [layer for layer in layers if layer >= num_layers]
            if bad:
                problems.append(f"steer.layers {bad} out of range; allowed: 0..{num_layers - 1}")
            if steer.method in ("ablate", "clamp") and layers != (own,):
                problems.append(
                    f"steer.method {steer.method!r} needs the axis' anchor statistics, which exist only at "
                    f"layer {own}; allowed steer.layers: [{own}] (or leave it out)"
                )
            resolved.steer_axis_index = sk
            resolved.steer_layers = layers
            if steer.method == "clamp":
                resolved.clamp_target_z = float(pack.neg_mean_z[sk]) if steer.target == "safe" else float(steer.target)
        if problems:
            check.errors.extend(f"rule {rule.name!r}: {p}" for p in problems)
            continue
        check.resolved.append(resolved)
    for message in check.warnings:
        log.debug("policy %s: %s", policy.name, message)
    return check


def require_runnable(policy: Policy, pack: AxisPack, where: str = "") -> PolicyCheck:
    """``check_against_pack``, raising when the guard would refuse the policy (``where``: the pack's path)."""
    check = check_against_pack(policy, pack)
    if not check.ok:
        where = where or str(pack.model.name)
        raise AxisguardError(
            f"policy {policy.name!r} cannot run on the pack for {pack.model.name} ({where}):\n"
            + "\n".join(f"  - {e}" for e in check.errors),
            f"fix the policy, or check it with `axisguard policy check POLICY --pack {where}`",
        )
    return check
