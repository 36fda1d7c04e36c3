"""A request's verdict: what the guard saw and did, assembled in one place from the monitor's slot state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from guard.policy import ACTIONS
from guard.policy_check import ResolvedRule
from guard.slot_state import SlotSnapshot


@dataclass
class Verdict:
    """What the guard saw and did for one request (JSON-able via ``to_json``)."""

    request_id: str
    scores: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    fired: list[dict[str, Any]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    steered: bool = False
    stopped: bool = False
    would_steer: bool = False
    would_stop: bool = False
    mode: str = "enforce"
    policy: str = ""
    stop_message: str | None = None
    errors: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    trajectory: dict[str, list[float | None]] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id, "scores": self.scores, "fired": self.fired, "actions": self.actions,
            "steered": self.steered, "stopped": self.stopped,
            "would_steer": self.would_steer, "would_stop": self.would_stop, "mode": self.mode, "policy": self.policy,
            "stop_message": self.stop_message, "errors": self.errors,
            "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
        }
        if self.trajectory is not None:
            out["trajectory"] = self.trajectory
        return out



# Actions shadow mode records instead of taking, and the action names a verdict can list, in order.
SHADOWED: tuple[str, ...] = ("steer", "stop")
VERDICT_ACTIONS: tuple[str, ...] = (*ACTIONS, *(f"would_{a}" for a in SHADOWED))


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)



def assemble_verdict(
    request_id: str,
    snap: SlotSnapshot,
    rules: Sequence[ResolvedRule],
    axis_names: Sequence[str],
    trajectory_tokens: int,
    *,
    stopped: bool,
    error_stop: bool,
    errors: int,
    policy_name: str = "",
) -> Verdict:
    """The verdict of one request from its slot ``snap`` (host values) and the host-side flags.

    In shadow mode (``snap.shadow``) a fired ``steer``/``stop`` rule is reported as ``would_steer`` /
    ``would_stop``: judged and recorded, but nothing was changed in the output."""
    scores = {}
    for i, axis in enumerate(axis_names):
        scores[axis] = {
            "prompt": _num(snap.prompt_z[i]), "last": _num(snap.last_z[i]), "ema": _num(snap.ema[i]),
            "max": _num(snap.max_z[i]), "tokens_over": int(snap.over_axis[i]),
        }
    fired = []
    for r, resolved in enumerate(rules):
        if not snap.fired[r]:
            continue
        action = ACTIONS[snap.action[r]]
        if snap.shadow and action in SHADOWED:
            action = "would_" + action
        fired.append({
            "rule": resolved.rule.name, "axis": axis_names[resolved.axis_index],
            "action": action, "score": _num(snap.fired_value[r]),
            "threshold": _num(snap.threshold[r]),
            "phase": "prompt" if resolved.rule.score == "prompt" else "generation",
            "token_index": int(snap.fired_token[r]),
        })
    fired.sort(key=lambda f: (f["phase"] != "prompt", f["token_index"]))
    taken = {f["action"] for f in fired} - {"observe"}
    if error_stop:
        taken.add("stop")
    stop_rules = {r.rule.name: r.rule for r in rules if r.rule.action == "stop" or r.rule.stop is not None}
    messages = [stop_rules[f["rule"]].stop.message for f in fired  # type: ignore[union-attr]
                if f["action"] == "stop" and f["rule"] in stop_rules and stop_rules[f["rule"]].stop is not None]
    trajectory = None
    if trajectory_tokens and snap.traj is not None:
        n = min(int(snap.gen_count), trajectory_tokens)
        trajectory = {axis: [_num(snap.traj[t][i]) for t in range(n)] for i, axis in enumerate(axis_names)}
    return Verdict(
        request_id=request_id, scores=scores, fired=fired,
        actions=[a for a in VERDICT_ACTIONS if a in taken],
        steered=any(f["action"] == "steer" for f in fired),
        stopped=stopped or any(f["action"] == "stop" for f in fired),
        would_steer=any(f["action"] == "would_steer" for f in fired),
        would_stop=any(f["action"] == "would_stop" for f in fired),
        mode="shadow" if snap.shadow else "enforce", policy=policy_name,
        stop_message=next((m for m in messages if m), None),
        errors=errors, prompt_tokens=int(snap.prompt_tokens),
        generated_tokens=int(snap.gen_count), trajectory=trajectory,
    )
