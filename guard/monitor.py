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

The state is typed (``guard.slot_state.SlotState``, one tensor per field); metric sums live in
``metrics`` (``guard.step_metrics``). Callers read the state only through the events API:
``take_fired`` (rules that fired, once each), ``unreported_flag`` (a device flag, no sync),
``steer_strength``, ``metrics.take_totals`` (metric sums for a flush) and ``snapshot`` (one request's
state on the host, for its verdict). The row contract lives in ``guard.rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from guard.overrides import RequestOverrides
from guard.pack import AxisPack
from guard.policy import ACTIONS, Policy
from guard.policy_check import ResolvedRule
from guard.rows import RowMap, StepIndex, index_rows
from guard.scoring import z_scores
from guard.slot_state import (
    ACTION_CODES,
    FOREVER,
    KIND_CODES,
    STEER,
    FiredEvent,
    ScoreKind,
    SlotSnapshot,
    SlotState,
    slot_spec,
)
from guard.step_metrics import StepMetrics


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
        self.metrics = StepMetrics(k, n)  # device-side Prometheus sums, on once set_buckets is called
        self.defaults = {
            "threshold": torch.tensor([r.threshold for r in self.rules], dtype=f32),
            "min_tokens": torch.tensor([r.rule.min_tokens for r in self.rules], dtype=torch.long),
            "enabled": torch.tensor([r.rule.enabled for r in self.rules], dtype=torch.bool),
            "action": torch.tensor([ACTION_CODES[r.rule.action] for r in self.rules], dtype=torch.long),
            "strength": torch.tensor([r.rule.steer.strength if r.rule.steer else 0.0 for r in self.rules], dtype=f32),
        }
        self._spec = slot_spec(k, n, self.window, self.trajectory_tokens)
        self.capacity = 0
        self.state = SlotState()
        self.free: list[int] = []
        self.version = 0  # bumped whenever slots change meaning (alloc, free, growth)
        self._grow(max(1, capacity))

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
                     "rule_window", "rule_duration", "axis_threshold"):
            setattr(self, name, getattr(self, name).to(device))
        self._layer_scorers = self._scorers_by_layer()
        self.defaults = {k: v.to(device) for k, v in self.defaults.items()}
        self.state.move_to(device)
        self.metrics.to(device)

    # --- per-step indices --------------------------------------------------------------------------

    def index_rows(self, rows: RowMap, slots: Sequence[int], num_rows: int) -> StepIndex:
        """The step's row/request indices on the monitor's device (``guard.rows.index_rows``)."""
        return index_rows(rows, slots, num_rows, self.trash, self.device)

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
        if self.metrics.enabled:
            self.metrics.accumulate(z, ix)
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
