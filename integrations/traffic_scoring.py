"""Score prompts the way the runtime monitor sees them, for setting thresholds from ordinary traffic.

Each prompt goes through guarded ``generate`` (greedy, a few tokens) with a guard that has the pack
but no rules, so nothing is steered or stopped and the generation is the model's own; the guard's
verdict gives the prompt's z and the per-token z trajectory of the generation — the very numbers
the monitor's rules compare (``probes.traffic_thresholds``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from guard.pack import AxisPack
from guard.policy import Policy
from guard.runtime import Guard
from integrations.hf_guard import guarded_generate
from integrations.hf_loading import LoadedModel
from probes.traffic_thresholds import ScoredRequest


def score_traffic(loaded: LoadedModel, pack: AxisPack, prompts: Sequence[str], new_tokens: int = 16,
                  batch_size: int = 8, use_chat_template: bool | None = None) -> list[ScoredRequest]:
    """Prompt z [K] and generated tokens' z [t, K] of every prompt (t <= ``new_tokens``; EOS ends early)."""
    guard = Guard(pack, Policy.model_validate({"rules": []}), trajectory_tokens=max(new_tokens, 1))
    outputs = guarded_generate(loaded, prompts, guard, max_new_tokens=max(new_tokens, 1), batch_size=batch_size,
                               use_chat_template=use_chat_template)
    names = pack.axis_names
    scored = []
    for out in outputs:
        verdict = out.verdict or {}
        prompt_z = np.array([_value(verdict["scores"][a]["prompt"]) for a in names])
        trajectory = verdict.get("trajectory") or {}
        steps = len(trajectory.get(names[0], [])) if new_tokens > 0 else 0
        generated = np.array([[_value(trajectory[a][t]) for a in names] for t in range(steps)]).reshape(steps, len(names))
        scored.append(ScoredRequest(prompt_z, generated))
    return scored


def _value(v: float | None) -> float:
    return float("nan") if v is None else float(v)
