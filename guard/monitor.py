"""Per-request monitor state, updated for a whole forward step at once.

Every request owns a *slot*: one row in each state tensor (prompt score, last/EMA/max score per axis,
per-rule counters, fired flags, steering state, optional bounded trajectory). A step is processed
with one matmul for all axes (``guard.scoring.z_scores``) and scatter/index ops over the step's
rows; there is no Python loop over tokens and no host synchronisation. Rows that belong to no
request (padding) are redirected to a spare *trash* slot instead of being masked out (boolean
masking would force a device sync). A finished request's slot is freed and reset on reuse; the
state grows only with the number of concurrent requests (capacity doubles when full).

Score kinds (see ``guard.policy``): ``prompt`` = z of the prompt's last token, judged when the
prompt completes; ``generation`` = EMA of generated tokens' z (the first token initialises it);
``token`` = count of generated tokens over the threshold (optionally in a sliding window, kept as a
small ring of bits per rule).

The state is typed (``SlotState``, one tensor per field; ``Accumulators`` for metrics). Callers read it
only through the events API: ``take_fired`` (rules that fired, once each), ``unreported_flag`` (a
device flag, no sync), ``steer_strength``, ``take_totals`` (metric sums for a flush) and ``snapshot``
(one request's state on the host, for its verdict). The row contract lives in ``guard.rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any

import numpy as np
import torch

from guard.pack import AxisPack
from guard.policy import ACTIONS, Policy, RequestOverrides, ResolvedRule
from guard.rows import RowMap, StepIndex
from guard.scoring import z_scores


class ScoreKind(IntEnum):
    """What a rule watches (see ``guard.policy``); stored per rule as a device tensor of these codes."""

    PROMPT = 0
    GENERATION = 1
    TOKEN = 2


KIND_CODES = {"prompt": ScoreKind.PROMPT, "generation": ScoreKind.GENERATION, "token": ScoreKind.TOKEN}
ACTION_CODES = {name: i for i, name in enumerate(ACTIONS)}
STEER = ACTION_CODES["steer"]
FOREVER = 1 << 62


class SlotState:
    """Every per-request tensor, one row per slot plus the trash slot (shapes in ``Monitor._spec``).

    K axes, n rules: scores ``prompt_z``/``last_z``/``ema``/``max_z`` [K]; counters ``prompt_tokens``,
    ``gen_count``, ``over_axis`` [K], ``rule_over`` [n]; rule outcomes ``fired``/``reported``/
    ``fired_value``/``fired_token`` [n]; steering ``steer_on``/``steer_left`` [n]; the request's rule
    settings after overrides ``threshold``/``min_tokens``/``enabled``/``action``/``strength`` [n];
    optional ``hist`` [n, window] (token-rule window bits) and ``traj`` [trajectory_tokens, K].
    """

    prompt_z: torch.Tensor
    prompt_tokens: torch.Tensor
    gen_count: torch.Tensor
    last_z: torch.Tensor
    ema: torch.Tensor
    max_z: torch.Tensor
    over_axis: torch.Tensor
    rule_over: torch.Tensor
    fired: torch.Tensor
    reported: torch.Tensor
    fired_value: torch.Tensor
    fired_token: torch.Tensor
    steer_on: torch.Tensor
    steer_left: torch.Tensor
    threshold: torch.Tensor
    min_tokens: torch.Tensor
    enabled: torch.Tensor
    action: torch.Tensor
    strength: torch.Tensor
    shadow: torch.Tensor
    hist: torch.Tensor
    traj: torch.Tensor

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return list(vars(self).items())

    def move_to(self, device: torch.device) -> None:
        for name, tensor in self.items():
            setattr(self, name, tensor.to(device))


@dataclass
class SlotSnapshot:
    """One slot's ``SlotState`` on the host, as Python lists/numbers (``hist``/``traj`` when kept)."""

    prompt_z: list[float]
    prompt_tokens: int
    gen_count: int
    last_z: list[float]
    ema: list[float]
    max_z: list[float]
    over_axis: list[int]
    rule_over: list[int]
    fired: list[bool]
    reported: list[bool]
    fired_value: list[float]
    fired_token: list[int]
    steer_on: list[bool]
    steer_left: list[int]
    threshold: list[float]
    min_tokens: list[int]
    enabled: list[bool]
    action: list[int]
    strength: list[float]
    shadow: bool = False
    hist: list[list[bool]] | None = None
    traj: list[list[float]] | None = None


@dataclass
class Accumulators:
    """Device-side metric sums since the last flush: z histogram ``buckets`` [K, B], ``sum`` [K],
    ``sq`` (sum of squares, all axes), ``tokens`` [prompt, generation], ``steered`` [n]."""

    buckets: torch.Tensor
    sum: torch.Tensor
    sq: torch.Tensor
    tokens: torch.Tensor
    steered: torch.Tensor

    def move_to(self, device: torch.device) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name).to(device))


@dataclass
class MetricTotals:
    """``Accumulators`` read back to the host for one Prometheus flush."""

    buckets: list[list[float]]
    sums: list[float]
    squares: float
    prompt_tokens: int
    generated_tokens: int
    steered: list[int]


@dataclass(frozen=True)
class FiredEvent:
    """A rule that fired for the request in ``slot`` (reported to the host once)."""

    slot: int
    rule_index: int
    action: str


class Monitor:
    """Scores rows against a pack and keeps per-request state; see the module docstring."""

    def __init__(
        self,
        pack: AxisPack,
        policy: Policy,
        rules: Sequence[ResolvedRule],
        trajectory_tokens: int = 0,
        capacity: int = 8,
    ) -> None:
        self.pack = pack
        self.policy = policy
        self.rules = list(rules)
        self.axis_names = pack.axis_names
        self.alpha = float(policy.ema_alpha)
        self.trajectory_tokens = int(trajectory_tokens)
        self.window = max([r.rule.window or 0 for r in self.rules], default=0)
        self.device = torch.device("cpu")
        k, n = len(self.axis_names), len(self.rules)
        self.num_axes, self.num_rules = k, n
        f32 = torch.float32
        self.vectors = torch.as_tensor(np.asarray(pack.vectors), dtype=f32)
        self.anchor_mean = torch.as_tensor(np.asarray(pack.anchor_mean), dtype=f32)
        # per-axis layers: the axes read at each layer, and each axis' centring (its layer's anchor mean)
        self.axis_anchor_mean = torch.as_tensor(np.asarray(pack.axis_anchor_mean), dtype=f32)
        self.axes_at = {layer: torch.tensor([k for k, at in enumerate(pack.layers_by_axis) if at == layer])
                        for layer in pack.score_layers}
        self.offset = torch.as_tensor(np.asarray(pack.score_offset), dtype=f32)
        self.scale = torch.as_tensor(np.asarray(pack.score_scale), dtype=f32)
        self._layer_scorers = self._scorers_by_layer()
        self.rule_axis = torch.tensor([r.axis_index for r in self.rules], dtype=torch.long)
        self.rule_kind = torch.tensor([KIND_CODES[r.rule.score] for r in self.rules], dtype=torch.long)
        self.rule_sign = torch.tensor([1.0 if r.rule.direction == "above" else -1.0 for r in self.rules])
        self.rule_window = torch.tensor([r.rule.window or 0 for r in self.rules], dtype=torch.long)
        self.rule_duration = torch.tensor(
            [r.rule.steer.duration if r.rule.steer and r.rule.steer.duration else FOREVER for r in self.rules],
            dtype=torch.long,
        )
        # Per-axis threshold for the verdict's "tokens_over": the lowest "above" rule threshold on the
        # axis, else half-way between the calibrated negative and positive means.
        axis_thr = [pack.auto_threshold(i) for i in range(k)]
        for i in range(k):
            mine = [r.threshold for r in self.rules if r.axis_index == i and r.rule.direction == "above"]
            if mine:
                axis_thr[i] = min(mine)
        self.axis_threshold = torch.tensor(axis_thr, dtype=f32)
        self.z_bounds = torch.tensor([], dtype=f32)  # finite histogram bounds, set by set_buckets
        self.collect_metrics = False  # accumulate histogram/drift/token counts (only when metrics exist)
        self.defaults = {
            "threshold": torch.tensor([r.threshold for r in self.rules], dtype=f32),
            "min_tokens": torch.tensor([r.rule.min_tokens for r in self.rules], dtype=torch.long),
            "enabled": torch.tensor([r.rule.enabled for r in self.rules], dtype=torch.bool),
            "action": torch.tensor([ACTION_CODES[r.rule.action] for r in self.rules], dtype=torch.long),
            "strength": torch.tensor([r.rule.steer.strength if r.rule.steer else 0.0 for r in self.rules], dtype=f32),
        }
        nan, inf = float("nan"), float("-inf")
        # name -> (per-slot shape, dtype, fill value or a per-rule default key)
        self._spec: dict[str, tuple[tuple[int, ...], torch.dtype, Any]] = {
            "prompt_z": ((k,), f32, nan),
            "prompt_tokens": ((), torch.long, 0),
            "gen_count": ((), torch.long, 0),
            "last_z": ((k,), f32, nan),
            "ema": ((k,), f32, nan),
            "max_z": ((k,), f32, inf),
            "over_axis": ((k,), torch.long, 0),
            "rule_over": ((n,), torch.long, 0),
            "fired": ((n,), torch.bool, False),
            "reported": ((n,), torch.bool, False),
            "fired_value": ((n,), f32, nan),
            "fired_token": ((n,), torch.long, -1),
            "steer_on": ((n,), torch.bool, False),
            "steer_left": ((n,), torch.long, 0),
            "threshold": ((n,), f32, "threshold"),
            "min_tokens": ((n,), torch.long, "min_tokens"),
            "enabled": ((n,), torch.bool, "enabled"),
            "action": ((n,), torch.long, "action"),
            "strength": ((n,), f32, "strength"),
            # shadow mode: rules are judged and recorded, steering never switches on (stop: see Guard)
            "shadow": ((), torch.bool, False),
        }
        if self.window:
            self._spec["hist"] = ((n, self.window), torch.bool, False)
        if self.trajectory_tokens:
            self._spec["traj"] = ((self.trajectory_tokens, k), f32, nan)
        self.capacity = 0
        self.state = SlotState()
        self.free: list[int] = []
        self.version = 0  # bumped whenever slots change meaning (alloc, free, growth)
        self._grow(max(1, capacity))
        self.reset_accumulators()

    # --- slots ------------------------------------------------------------------------------------

    @property
    def trash(self) -> int:
        return self.capacity

    def _fill(self, name: str, rows: int) -> torch.Tensor:
        shape, dtype, fill = self._spec[name]
        if isinstance(fill, str):
            return self.defaults[fill].to(self.device).expand(rows, *shape).clone()
        return torch.full((rows, *shape), fill, dtype=dtype, device=self.device)

    def _grow(self, new_capacity: int) -> None:
        old = self.capacity
        for name in self._spec:
            fresh = self._fill(name, new_capacity + 1)  # + the trash slot
            if old:
                fresh[:old] = getattr(self.state, name)[:old]
            setattr(self.state, name, fresh)
        self.free.extend(range(old, new_capacity))
        self.free.sort(reverse=True)
        self.capacity = new_capacity
        self.version += 1

    def allocate(self, overrides: RequestOverrides, resolve_threshold) -> int:
        if not self.free:
            self._grow(self.capacity * 2)
        slot = self.free.pop()
        for name, tensor in self.state.items():
            tensor[slot] = self._fill(name, 1)[0]
        for r, resolved in enumerate(self.rules):
            values = overrides.rules.get(resolved.rule.name, {})
            for fld, value in values.items():
                if fld == "action":
                    value = ACTION_CODES[value]
                elif fld == "threshold":
                    value = resolve_threshold(resolved, value)
                getattr(self.state, fld)[slot, r] = value
        if not overrides.enabled:
            self.state.enabled[slot] = False
        self.state.shadow[slot] = (overrides.mode or self.policy.mode) == "shadow"
        self.version += 1
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)
        self.version += 1

    def to(self, device: torch.device) -> None:
        """Move everything to the model's device (done once, on the first step)."""
        if device == self.device:
            return
        self.device = device
        self.axes_at = {layer: ix.to(device) for layer, ix in self.axes_at.items()}
        for name in ("vectors", "anchor_mean", "axis_anchor_mean", "offset", "scale", "rule_axis", "rule_kind", "rule_sign",
                     "rule_window", "rule_duration", "axis_threshold", "z_bounds"):
            setattr(self, name, getattr(self, name).to(device))
        self._layer_scorers = self._scorers_by_layer()
        self.defaults = {k: v.to(device) for k, v in self.defaults.items()}
        self.state.move_to(device)
        self.acc.move_to(device)

    # --- per-step indices --------------------------------------------------------------------------

    def index_rows(self, rows: RowMap, slots: Sequence[int], num_rows: int) -> StepIndex:
        """Derive the step's row/request indices (device ops only)."""
        dev = self.device
        n_req = len(rows.request_ids)
        row_request = rows.row_request.to(dev, non_blocking=True).long()
        is_prompt = rows.is_prompt.to(dev, non_blocking=True).bool()
        if row_request.shape[0] < num_rows:  # engine padding rows past the scheduled tokens
            pad = num_rows - row_request.shape[0]
            row_request = torch.cat([row_request, row_request.new_full((pad,), -1)])
            is_prompt = torch.cat([is_prompt, is_prompt.new_zeros(pad)])
        elif row_request.shape[0] > num_rows:
            raise ValueError(f"RowMap has {row_request.shape[0]} rows but the hidden states have {num_rows}")
        valid = row_request >= 0
        row_index = torch.where(valid, row_request, n_req)
        req_slot = torch.tensor(list(slots), dtype=torch.long).to(dev, non_blocking=True)
        slot_ext = torch.cat([req_slot, req_slot.new_full((1,), self.trash)])
        row_slot = slot_ext[row_index]
        prompt_rows = valid & is_prompt
        gen = valid & ~is_prompt
        arange = torch.arange(num_rows, device=dev)
        minus_one = torch.full((n_req + 1,), -1, dtype=torch.long, device=dev)
        last_prompt = minus_one.scatter_reduce(0, row_index, torch.where(prompt_rows, arange, -1), "amax")
        last_gen = minus_one.scatter_reduce(0, row_index, torch.where(gen, arange, -1), "amax")
        zeros = torch.zeros(n_req + 1, dtype=torch.long, device=dev)
        n_gen = zeros.index_add(0, row_index, gen.long())
        n_prompt = zeros.index_add(0, row_index, prompt_rows.long())[:n_req]
        gen_before = torch.cumsum(gen.long(), 0) - gen.long()  # generated rows before each row
        first = torch.full((n_req + 1,), num_rows, dtype=torch.long, device=dev)
        first = first.scatter_reduce(0, row_index, torch.where(gen, gen_before, num_rows), "amin")
        rank = gen_before - first[row_index]
        if rows.prompt_complete is not None:
            complete = rows.prompt_complete.to(dev, non_blocking=True).bool()[:n_req]
            prompt_done_now = complete & (n_prompt > 0)
        else:
            prompt_done_now = n_prompt > 0
        done_ext = torch.cat([prompt_done_now, prompt_done_now.new_zeros(1)])
        steerable = gen | (prompt_rows & (arange == last_prompt[row_index]) & done_ext[row_index])
        return StepIndex(
            num_requests=n_req, num_rows=num_rows, req_slot=req_slot, row_index=row_index, row_slot=row_slot,
            valid=valid, prompt_rows=prompt_rows, gen=gen, rank=rank, n_gen=n_gen, n_prompt=n_prompt,
            last_prompt_row=last_prompt[:n_req], last_gen_row=last_gen[:n_req],
            prompt_done_now=prompt_done_now, steerable=steerable,
        )

    # --- scoring and state update -------------------------------------------------------------------

    def score(self, hidden32: torch.Tensor) -> torch.Tensor:
        """z-scores [T, K] of float32 rows: one matmul for all axes (a pack with one layer)."""
        return z_scores(hidden32, self.anchor_mean, self.vectors, self.offset, self.scale)

    def _scorers_by_layer(self) -> dict[int, tuple[torch.Tensor, ...]]:
        """Per score layer, its axes' columns and their constants (centring, vectors, offset, scale),
        sliced once here rather than gathered again at every step."""
        return {layer: (ix, self.axis_anchor_mean[int(ix[0])], self.vectors[ix], self.offset[ix], self.scale[ix])
                for layer, ix in self.axes_at.items()}

    def score_at(self, layer: int, hidden32: torch.Tensor, into: torch.Tensor) -> None:
        """Per-axis layers: write the z-scores of the axes read at ``layer`` into their columns of
        ``into`` [T, K] (one matmul for those axes; they share the layer, hence the centring)."""
        ix, mean, vectors, offset, scale = self._layer_scorers[layer]
        into[:, ix] = z_scores(hidden32, mean, vectors, offset, scale)

    def update(self, z: torch.Tensor, ix: StepIndex) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold one step's z-scores into the requests' state and judge the rules.

        Returns ``fired_now`` [R, n] (rules that fired in this step) and ``row_steer`` [T, n] (rows to
        steer in this step, per rule, at the score layer and above).
        """
        st, dev = self.state, self.device
        n_req, k, n = ix.num_requests, self.num_axes, self.num_rules
        slots, idx, gen = ix.req_slot, ix.row_index, ix.gen
        rows = z.shape[0]
        if rows == 0:
            return (torch.zeros(n_req, n, dtype=torch.bool, device=dev),
                    torch.zeros(0, n, dtype=torch.bool, device=dev))
        n_gen = ix.n_gen[:n_req]
        has_gen = n_gen > 0

        # prompt: the last prompt token's score (provisional until the prompt completes)
        prompt_z = torch.where((ix.last_prompt_row >= 0).unsqueeze(1), z[ix.last_prompt_row.clamp_min(0)],
                               st.prompt_z[slots])
        prompt_tokens = st.prompt_tokens[slots] + ix.n_prompt

        # generation: EMA over the step's generated rows in order, in closed form
        g_old = st.gen_count[slots]
        g_new = g_old + n_gen
        g_old_ext = torch.cat([g_old, g_old.new_ones(1)])
        decay = 1.0 - self.alpha
        power = (ix.n_gen[idx] - 1 - ix.rank).clamp_min(0).to(z.dtype)
        first_ever = gen & (ix.rank == 0) & (g_old_ext[idx] == 0)
        weight = torch.where(first_ever, decay**power, self.alpha * decay**power) * gen
        contrib = torch.zeros(n_req + 1, k, device=dev).index_add_(0, idx, weight.unsqueeze(1) * z)[:n_req]
        ema_old = st.ema[slots]
        carried = torch.where((g_old > 0).unsqueeze(1), ema_old * decay ** n_gen.to(z.dtype).unsqueeze(1), 0.0)
        ema = torch.where(has_gen.unsqueeze(1), carried + contrib, ema_old)
        last_z = torch.where(has_gen.unsqueeze(1), z[ix.last_gen_row.clamp_min(0)], st.last_z[slots])
        step_max = torch.full((n_req + 1, k), float("-inf"), device=dev).scatter_reduce_(
            0, idx.unsqueeze(1).expand(-1, k), torch.where(gen.unsqueeze(1), z, float("-inf")), "amax")[:n_req]
        max_z = torch.maximum(st.max_z[slots], step_max)
        over = gen.unsqueeze(1) & (z > self.axis_threshold)
        over_axis = st.over_axis[slots] + torch.zeros(n_req + 1, k, dtype=torch.long, device=dev).index_add_(
            0, idx, over.long())[:n_req]
        updates = {"prompt_z": prompt_z, "prompt_tokens": prompt_tokens, "gen_count": g_new, "ema": ema,
                   "last_z": last_z, "max_z": max_z, "over_axis": over_axis}

        if self.trajectory_tokens:
            pos = g_old_ext[idx] + ix.rank
            keep = gen & (pos < self.trajectory_tokens)
            st.traj[torch.where(keep, ix.row_slot, self.trash), torch.where(keep, pos, 0)] = z

        fired_now = torch.zeros(n_req, n, dtype=torch.bool, device=dev)
        row_steer = torch.zeros(rows, n, dtype=torch.bool, device=dev)
        if n:
            fired_now, row_steer = self._judge(z, ix, updates, g_old_ext)
        for name, value in updates.items():
            getattr(st, name).index_copy_(0, slots, value)
        if self.collect_metrics:
            self._accumulate(z, ix)
        return fired_now, row_steer

    def _judge(self, z, ix: StepIndex, upd: dict[str, torch.Tensor], g_old_ext: torch.Tensor):
        st, dev = self.state, self.device
        n_req, n = ix.num_requests, self.num_rules
        slots, idx, gen = ix.req_slot, ix.row_index, ix.gen
        n_gen = ix.n_gen[:n_req]
        sign, axis = self.rule_sign, self.rule_axis
        thr = st.threshold[slots]
        min_tokens = st.min_tokens[slots]
        g_new = upd["gen_count"]

        # token rules: generated rows over their request's threshold, counted per request
        z_rule = z[:, axis]
        over_rows = gen.unsqueeze(1) & (sign * (z_rule - st.threshold[ix.row_slot]) > 0)
        rule_over = st.rule_over[slots] + torch.zeros(n_req + 1, n, dtype=torch.long, device=dev).index_add_(
            0, idx, over_rows.long())[:n_req]
        upd["rule_over"] = rule_over
        token_count = rule_over
        if self.window:
            w = self.window
            pos = (g_old_ext[idx] + ix.rank) % w
            hist = st.hist
            hist[torch.where(gen, ix.row_slot, self.trash), :, torch.where(gen, pos, 0)] = over_rows
            ages = (g_new.unsqueeze(1) - 1 - torch.arange(w, device=dev)) % w  # [R, W]
            in_window = (ages.unsqueeze(1) < self.rule_window.view(1, n, 1)) & (ages < g_new.unsqueeze(1)).unsqueeze(1)
            windowed = (hist[slots] & in_window).sum(-1)
            token_count = torch.where(self.rule_window > 0, windowed, rule_over)

        prompt_v = upd["prompt_z"][:, axis]
        ema_v = upd["ema"][:, axis]
        last_v = upd["last_z"][:, axis]
        stepped = (n_gen > 0).unsqueeze(1)
        prompt_ok = ix.prompt_done_now.unsqueeze(1) & (sign * (prompt_v - thr) > 0)
        gen_ok = stepped & (g_new.unsqueeze(1) >= min_tokens) & (sign * (ema_v - thr) > 0)
        token_ok = stepped & (token_count >= min_tokens)
        kind = self.rule_kind
        cond = torch.where(kind == ScoreKind.PROMPT, prompt_ok, torch.where(kind == ScoreKind.GENERATION, gen_ok, token_ok))
        fired_old = st.fired[slots]
        fired_now = cond & st.enabled[slots] & ~fired_old
        value = torch.where(kind == ScoreKind.PROMPT, prompt_v, torch.where(kind == ScoreKind.GENERATION, ema_v, last_v))
        token = torch.where(kind == ScoreKind.PROMPT, (upd["prompt_tokens"] - 1).unsqueeze(1), (g_new - 1).unsqueeze(1))
        upd["fired"] = fired_old | fired_now
        upd["fired_value"] = torch.where(fired_now, value, st.fired_value[slots])
        upd["fired_token"] = torch.where(fired_now, token, st.fired_token[slots])

        # steering: on from the firing step, for `duration` generated tokens
        steer_fire = fired_now & (st.action[slots] == STEER) & ~st.shadow[slots].unsqueeze(1)
        steer_on = st.steer_on[slots] | steer_fire
        steer_left = torch.where(steer_fire, self.rule_duration, st.steer_left[slots])
        steer_ext = torch.cat([steer_on, steer_on.new_zeros(1, n)])
        row_steer = steer_ext[idx] & ix.steerable.unsqueeze(1)
        steer_left = steer_left - torch.where(steer_on, n_gen.unsqueeze(1), 0)
        upd["steer_on"] = steer_on & (steer_left > 0)
        upd["steer_left"] = steer_left
        return fired_now, row_steer

    def rows_to_steer(self, ix: StepIndex) -> torch.Tensor:
        """[T, n] rows to steer at layers *below* the score layer (state as of the previous step)."""
        return self.state.steer_on[ix.row_slot] & ix.steerable.unsqueeze(1)

    # --- metric accumulators (flushed to Prometheus in bulk) ----------------------------------------

    def set_buckets(self, bounds: Sequence[float]) -> None:
        """Turn metric accumulation on, with these histogram bucket bounds."""
        self.z_bounds = torch.tensor([b for b in bounds if np.isfinite(b)], dtype=torch.float32, device=self.device)
        self.collect_metrics = True
        self.reset_accumulators()

    def reset_accumulators(self) -> None:
        k, n, dev = self.num_axes, self.num_rules, self.device
        buckets = self.z_bounds.numel() + 1
        self.acc = Accumulators(
            buckets=torch.zeros(k, buckets, device=dev),
            sum=torch.zeros(k, device=dev),
            sq=torch.zeros((), device=dev),
            tokens=torch.zeros(2, dtype=torch.long, device=dev),  # prompt, generation
            steered=torch.zeros(n, dtype=torch.long, device=dev),
        )

    def _accumulate(self, z: torch.Tensor, ix: StepIndex) -> None:
        acc = self.acc
        valid = ix.valid.unsqueeze(1).to(z.dtype)
        clean = torch.nan_to_num(z, nan=0.0, posinf=1e6, neginf=-1e6) * valid
        k, buckets = acc.buckets.shape
        bucket = torch.bucketize(clean, self.z_bounds)
        flat = (bucket + torch.arange(k, device=z.device) * buckets).reshape(-1)
        acc.buckets.view(-1).index_add_(0, flat, valid.expand_as(z).reshape(-1))
        acc.sum += clean.sum(0)
        acc.sq += clean.pow(2).sum()
        acc.tokens += torch.stack([ix.prompt_rows.sum(), ix.gen.sum()])

    def count_steered(self, rule_index: int, mask: torch.Tensor) -> None:
        if self.collect_metrics:
            self.acc.steered[rule_index] += mask.sum()

    # --- reading state back (host) -------------------------------------------------------------------

    def snapshot(self, slot: int) -> SlotSnapshot:
        """One slot's state on the host (a device sync; used for verdicts, not per step)."""
        values: dict[str, Any] = {name: tensor[slot].tolist() for name, tensor in self.state.items()}
        return SlotSnapshot(**values)

    # --- events and totals for the host (the runtime reads the monitor only through these) -----------

    def unreported_flag(self) -> torch.Tensor:
        """A device bool: has any rule fired that ``take_fired`` has not returned yet (no sync)."""
        cap = self.capacity
        return (self.state.fired[:cap] & ~self.state.reported[:cap]).any()

    def take_fired(self) -> list[FiredEvent]:
        """Rules that fired since the last call, once each (a device sync when there are any)."""
        st, cap = self.state, self.capacity
        where = (st.fired[:cap] & ~st.reported[:cap]).nonzero()
        if where.numel() == 0:
            return []
        slots, rules = where[:, 0], where[:, 1]
        actions = st.action[slots, rules]
        st.reported[slots, rules] = True
        return [FiredEvent(slot, rule, ACTIONS[a])
                for slot, rule, a in zip(slots.tolist(), rules.tolist(), actions.tolist(), strict=True)]

    def steer_strength(self, ix: StepIndex) -> torch.Tensor:
        """[T, n] each row's per-rule steering strength (the request's overrides applied)."""
        return self.state.strength[ix.row_slot]

    def take_totals(self) -> MetricTotals:
        """The metric accumulators on the host (one device sync), then reset."""
        acc = self.acc
        totals = MetricTotals(buckets=acc.buckets.tolist(), sums=acc.sum.tolist(), squares=float(acc.sq),
                              prompt_tokens=int(acc.tokens[0]), generated_tokens=int(acc.tokens[1]),
                              steered=acc.steered.tolist())
        self.reset_accumulators()
        return totals
