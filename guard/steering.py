"""Counter-steering maths, pure torch: each operation maps hidden states to a DELTA to add to them.

Rows are hidden states ``h`` [T, d] at one layer; ``u`` is a unit axis vector [d]. ``mean`` (the
pack's anchor mean) centres the geometry the same way the score does (``guard.scoring``), so that
"projection" below means ``(h - mean) · u``:

* ``add``: ``alpha · u`` (or ``alpha · ||h|| · u`` with ``relative``): push along the axis.
* ``ablate``: remove the centred component along ``u``; afterwards ``(h' - mean) · u == 0``.
* ``clamp``: move each row along ``u`` so that ``cos(h' - mean, u)`` equals a target (the orthogonal
  part is kept, so the cosine, hence the z-score, lands exactly on the target). ``side`` makes it
  conditional: only rows above (or below) the target are corrected, the rest are left alone, which is
  the CAST / ``adjust_rs`` idea of steering only what is on the wrong side.
* ``clamp_projection``: the same with a target raw projection instead of a cosine.

``strength`` may be a float or a per-row tensor [T] (the runtime steers only some rows: rows with
strength 0 get an exactly-zero delta). For ablate/clamp it is the fraction of the correction applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Side = Literal["above", "below", "both"]
_MAX_COS = 0.999  # a target cosine of +-1 would need an infinite projection


def _per_row(strength: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(strength, torch.Tensor):
        return strength.to(like.dtype).reshape(-1, 1)
    return strength


def unit(vector: torch.Tensor) -> torch.Tensor:
    """``vector / ||vector||``."""
    return vector / vector.norm().clamp_min(1e-12)


def projection(hidden: torch.Tensor, direction: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """``(h - mean) · u`` for every row: [T]."""
    centred = hidden if mean is None else hidden - mean
    return centred @ direction


def cosine(hidden: torch.Tensor, direction: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """``cos(h - mean, u)`` for every row: [T]."""
    centred = hidden if mean is None else hidden - mean
    return (centred @ direction) / centred.norm(dim=-1).clamp_min(1e-6)


def add(
    hidden: torch.Tensor, direction: torch.Tensor, strength: float | torch.Tensor, relative: bool = False
) -> torch.Tensor:
    """Delta ``alpha · u`` (``alpha · ||h|| · u`` when relative); zero strength gives an exact zero."""
    alpha = _per_row(strength, hidden)
    if relative:
        alpha = alpha * hidden.norm(dim=-1, keepdim=True)
    return torch.zeros_like(hidden) + alpha * direction.to(hidden.dtype)


def ablate(
    hidden: torch.Tensor,
    direction: torch.Tensor,
    mean: torch.Tensor | None = None,
    strength: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Delta removing the (centred) component along ``u``: ``-strength · ((h - mean) · u) · u``."""
    u = direction.to(hidden.dtype)
    return -_per_row(strength, hidden) * projection(hidden, u, mean).unsqueeze(-1) * u


def clamp_projection(
    hidden: torch.Tensor,
    direction: torch.Tensor,
    target: float | torch.Tensor,
    mean: torch.Tensor | None = None,
    side: Side = "both",
    strength: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Delta setting ``(h - mean) · u`` to ``target`` (only rows above/below it with ``side``)."""
    u = direction.to(hidden.dtype)
    proj = projection(hidden, u, mean)
    change = target - proj
    change = _one_side(change, side)
    return _per_row(strength, hidden) * change.unsqueeze(-1) * u


def clamp(
    hidden: torch.Tensor,
    direction: torch.Tensor,
    target_cos: float | torch.Tensor,
    mean: torch.Tensor | None = None,
    side: Side = "both",
    strength: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Delta moving each row along ``u`` so that ``cos(h' - mean, u) == target_cos``.

    With ``c = h - mean``, ``p = c · u`` and ``o = ||c - p u||`` (kept fixed), the new projection is
    ``p' = t · o / sqrt(1 - t^2)``. ``side='above'`` corrects only rows whose cosine is above the
    target (pulls them down to it), ``'below'`` only rows below it.
    """
    u = direction.to(hidden.dtype)
    centred = hidden if mean is None else hidden - mean
    proj = centred @ u
    ortho = (centred.pow(2).sum(-1) - proj.pow(2)).clamp_min(0.0).sqrt()
    if isinstance(target_cos, torch.Tensor):
        t = target_cos.to(hidden.dtype).clamp(-_MAX_COS, _MAX_COS)
    else:
        t = torch.tensor(max(-_MAX_COS, min(_MAX_COS, float(target_cos))), dtype=hidden.dtype, device=hidden.device)
    new_proj = t * ortho / torch.sqrt(1.0 - t * t)
    change = _one_side(new_proj - proj, side)
    return _per_row(strength, hidden) * change.unsqueeze(-1) * u


def _one_side(change: torch.Tensor, side: Side) -> torch.Tensor:
    # change < 0 means the row is above its target (it must move down), > 0 below it.
    if side == "above":
        return change.clamp_max(0.0)
    if side == "below":
        return change.clamp_min(0.0)
    return change


def z_to_cosine(z: float | torch.Tensor, offset: float | torch.Tensor, scale: float | torch.Tensor):
    """Invert the score normalisation: the cosine whose z-score is ``z`` (see ``guard.pack``)."""
    return offset + scale * z


@dataclass(frozen=True)
class SteerOp:
    """One configured steering operation along one axis (what a policy's ``steer`` block compiles to)."""

    method: Literal["add", "ablate", "clamp"]
    direction: torch.Tensor
    strength: float = 1.0
    relative: bool = False
    mean: torch.Tensor | None = None
    target_cos: float | None = None
    side: Side = "above"

    def delta(self, hidden: torch.Tensor, strength: float | torch.Tensor | None = None) -> torch.Tensor:
        """Delta for ``hidden`` [T, d]; ``strength`` (float or per-row [T]) replaces the configured one."""
        s = self.strength if strength is None else strength
        u = self.direction.to(device=hidden.device, dtype=hidden.dtype)
        mean = None if self.mean is None else self.mean.to(device=hidden.device, dtype=hidden.dtype)
        if self.method == "add":
            return add(hidden, u, s, self.relative)
        if self.method == "ablate":
            return ablate(hidden, u, mean, s)
        if self.target_cos is None:
            raise ValueError("clamp needs target_cos")
        return clamp(hidden, u, self.target_cos, mean, self.side, s)
