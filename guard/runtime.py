"""The runtime facade that engine adapters (transformers, vLLM) call: ``Guard`` and ``RowMap``.

An adapter installs a hook on each decoder layer in ``Guard.layers`` and, on every forward step,
calls ``on_hidden(layer, hidden, rows)`` with that layer's residual stream ``[T, d]`` and a
``RowMap`` telling which request each row belongs to. At ``score_layer`` the guard scores all rows
(one matmul for all axes), updates per-request state (``guard.monitor``) and judges the policy's
rules; at every hooked layer it returns a DELTA to add to the residual stream (non-zero only on rows
of requests whose ``steer`` rule fired) or None. Scores are computed on the hidden state *before*
steering at that layer. Steering at a layer below the score layer starts one step after firing
(that layer has already run when the rule fires); at the score layer and above it starts in the
firing step, from the triggering row: the last prompt token for ``prompt`` rules, the step's
generated rows otherwise.

``on_hidden`` never raises: an exception is caught, counted (``axisguard_errors_total{stage}``) and
logged once per kind; the step's requests continue unguarded (``on_error: fail_open``) or are
marked to stop (``fail_closed``; ``should_stop`` turns True).

Host synchronisation: steering decisions stay on the device. What the host must learn (a ``stop``,
the verdict's events, action counters) is read back when a rule fired. On CPU this check is free and
done every step; on accelerators (``defer_events``, the default there) the flag is copied
asynchronously and read on a later call, so the common "nothing fired" step never waits for the
device, and ``should_stop`` may turn True one step late. Metrics are accumulated on the device and
flushed in bulk every ``metrics_every`` steps or ``metrics_interval_s`` seconds.

Rules whose axis is not in the pack are skipped with a warning (policy ``unknown_axes: skip``) or
make the constructor raise (``unknown_axes: error``); other policy/pack conflicts always raise.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

import torch

from guard.deferred_flag import DeferredFlag
from guard.error_handler import ErrorHandler
from guard.fault_injection import FaultInjection
from guard.metrics import GuardMetrics
from guard.monitor import Monitor
from guard.overrides import resolve_overrides
from guard.pack import AxisPack
from guard.policy import Policy
from guard.policy_check import ResolvedRule, require_runnable
from guard.request_table import RequestTable
from guard.rows import RowMap, StepIndex
from guard.step_steering import StepSteering
from guard.verdict import SHADOWED, Verdict, assemble_verdict

__all__ = ["Guard", "RowMap", "Verdict"]  # what adapters import from here

log = logging.getLogger(__name__)


class Guard:
    """Scores, judges and steers requests for one model and one pack (see the module docstring)."""

    def __init__(
        self,
        pack: AxisPack,
        policy: Policy,
        metrics: GuardMetrics | None = None,
        model_name: str = "",
        *,
        trajectory_tokens: int = 0,
        metrics_every: int = 32,
        metrics_interval_s: float = 1.0,
        defer_events: bool | None = None,
    ) -> None:
        check = require_runnable(policy, pack)
        for warning in check.warnings:
            log.warning("axisguard policy %r: %s", policy.name, warning)
        self.pack = pack
        self.policy = policy
        self.policy_check = check
        self.rules: list[ResolvedRule] = check.resolved
        self.model_name = model_name or (metrics.model_name if metrics else "") or pack.model.name
        self.metrics = metrics
        self.monitor = Monitor(pack, policy, self.rules, trajectory_tokens=trajectory_tokens)
        # Per-axis layers: each axis is scored at its own layer; the rules are judged once per step, at
        # the deepest scoring layer (``score_layer``), when every axis has its score for the step.
        self.score_layers: list[int] = pack.score_layers
        self.score_layer = self.score_layers[-1]
        self._score_set = set(self.score_layers)
        self._z_step: torch.Tensor | None = None
        self._steering = StepSteering(self.rules, self.monitor)
        self.layers: list[int] = sorted({*self.score_layers, *self._steering.by_layer})
        self._layer_set = set(self.layers)
        self._requests = RequestTable()
        self._lock = threading.RLock()
        self._errors = ErrorHandler(metrics)
        self._index_cache: tuple[Any, ...] | None = None
        self._last_layer = math.inf
        self._row_steer: torch.Tensor | None = None
        self._defer_setting = defer_events
        self._defer = bool(defer_events)
        self._flag = DeferredFlag()
        self._steps = 0
        self._fault = FaultInjection.from_env()  # test-only (AXISGUARD_TEST_FAULT); None in production
        self._fault_steps = 0
        self._metrics_every = max(1, metrics_every)
        self._metrics_interval = metrics_interval_s
        self._last_flush = time.monotonic()
        self._steps_since_flush = 0
        if metrics is not None:
            metrics.set_pack(pack)
            self.monitor.metrics.set_buckets(metrics.z_buckets)

    # --- set-up ------------------------------------------------------------------------------------

    def _move_to(self, device: torch.device) -> None:
        self.monitor.to(device)
        self._steering.build(device)
        self._index_cache = None
        self._defer = device.type != "cpu" if self._defer_setting is None else bool(self._defer_setting)
        self._flag.use_device(device)

    def _resolve_threshold(self, resolved: ResolvedRule, value: float | str) -> float:
        if value == "auto":
            return self.pack.auto_threshold(resolved.axis_index)
        return float(value)

    # --- request lifecycle -------------------------------------------------------------------------

    def start_request(self, request_id: str, overrides: Mapping[str, Any] | None = None) -> None:
        """Begin guarding a request; ``overrides`` are checked against the policy's allow-list
        (``AxisguardError`` names the key, the bad value and the allowed keys). Call it before the
        request's first step; ``on_hidden`` starts unknown ids itself, without overrides."""
        resolved = resolve_overrides(self.policy, overrides)
        with self._lock:
            if request_id in self._requests:
                self._drop(request_id)
            slot = self.monitor.allocate(resolved, self._resolve_threshold)
            self._requests.add(request_id, slot, shadow=(resolved.mode or self.policy.mode) == "shadow")
            if self.metrics is not None:
                self.metrics.set_active(len(self._requests))

    def finish_request(self, request_id: str) -> Verdict | None:
        """Final verdict, then the request's state is dropped (None if the id is unknown)."""
        with self._lock:
            if request_id not in self._requests:
                return None
            try:
                verdict = self._verdict(request_id)
            except Exception as exc:  # never let bookkeeping break the engine
                self._on_error("finish", exc, [request_id])
                verdict = Verdict(request_id, errors=self._requests[request_id].errors)
            self._drop(request_id)
            if self.metrics is not None:
                try:
                    outcome = ("stopped" if verdict.stopped else "steered" if verdict.steered
                               else "flagged" if "flag" in verdict.actions else "clean")
                    self.metrics.inc_finished(outcome)
                    self.metrics.set_active(len(self._requests))
                except Exception as exc:
                    self._on_error("metrics", exc, [])
            return verdict

    def _drop(self, request_id: str) -> None:
        self.monitor.release(self._requests.pop(request_id).slot)

    def active_requests(self) -> int:
        return len(self._requests)

    def should_stop(self, request_id: str) -> bool:
        """True once a ``stop`` rule fired for the request (or a guard error under ``fail_closed``)."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None:
                return False
            if self._defer:
                self._poll()
            return req.stopped

    def verdict(self, request_id: str) -> Verdict:
        """The request's verdict so far (reads device state back: not for every step)."""
        with self._lock:
            if request_id not in self._requests:
                raise KeyError(request_id)
            return self._verdict(request_id)

    # --- the per-step hook -------------------------------------------------------------------------

    def on_hidden(self, layer: int, hidden: torch.Tensor, rows: RowMap) -> torch.Tensor | None:
        """Score / steer one layer's residual stream ``[T, d]`` (or ``[B, t, d]``); returns a delta of
        the same shape to ADD to it, or None. Never raises (see the module docstring)."""
        if layer not in self._layer_set:
            return None
        started = time.perf_counter()
        stage = "start"
        with self._lock:
            try:
                if layer <= self._last_layer:  # layers come in increasing order within a step
                    self._row_steer = None
                    self._z_step = None
                self._last_layer = layer
                if hidden.device != self.monitor.device:
                    self._move_to(hidden.device)
                flat = hidden.reshape(-1, hidden.shape[-1])
                ix = self._index(rows, flat.shape[0])
                h32 = None
                if layer in self._score_set:
                    stage = "score"
                    h32 = flat if flat.dtype == torch.float32 else flat.float()
                    if self._fault is not None:  # test-only fault switch (guard/fault_injection.py)
                        if layer == self.score_layers[0]:
                            self._fault_steps += 1
                        h32 = self._fault.apply(self._fault_steps, h32)
                    z = self._score(layer, h32)
                if layer == self.score_layer:
                    if self._defer:
                        self._poll()
                    stage = "policy"
                    fired_now, self._row_steer = self.monitor.update(z, ix)
                    self._after_step(fired_now)
                stage = "steer"
                delta = self._steer(layer, flat, h32, ix, rows)
                return None if delta is None else delta.reshape(hidden.shape)
            except Exception as exc:
                self._on_error(stage, exc, getattr(rows, "request_ids", []))
                return None
            finally:
                if layer == self.score_layer and self.metrics is not None:
                    try:
                        self.metrics.observe_step_seconds(time.perf_counter() - started)
                    except Exception as exc:
                        self._on_error("metrics", exc, [])

    def _score(self, layer: int, h32: torch.Tensor) -> torch.Tensor:
        """The step's z-scores [T, K]: at once for a one-layer pack; else filled in layer by layer
        (columns of axes whose layer has not run yet stay NaN until it has)."""
        if len(self.score_layers) == 1:
            return self.monitor.score(h32)
        if self._z_step is None or self._z_step.shape[0] != h32.shape[0]:
            self._z_step = torch.full((h32.shape[0], self.monitor.num_axes), float("nan"), device=h32.device)
        self.monitor.score_at(layer, h32, self._z_step)
        return self._z_step

    def _index(self, rows: RowMap, num_rows: int) -> StepIndex:
        cache = self._index_cache
        if cache is not None and cache[0] is rows and cache[1] == self.monitor.version and cache[2] == num_rows:
            return cache[3]
        slots = []
        for request_id in rows.request_ids:
            req = self._requests.get(request_id)
            if req is None:
                self.start_request(request_id)
                req = self._requests[request_id]
            slots.append(req.slot)
        ix = self.monitor.index_rows(rows, slots, num_rows)
        self._index_cache = (rows, self.monitor.version, num_rows, ix)
        return ix

    def _after_step(self, fired_now: torch.Tensor) -> None:
        self._steps += 1
        self._steps_since_flush += 1
        if self.rules:
            if self._defer:
                self._flag.post(self.monitor.unreported_flag())
            elif bool(fired_now.any()):
                self._drain()
        if self.metrics is not None and (
            self._steps_since_flush >= self._metrics_every
            or time.monotonic() - self._last_flush >= self._metrics_interval
        ):
            self.flush_metrics()

    def _steer(self, layer: int, flat: torch.Tensor, h32: torch.Tensor | None, ix: StepIndex,
               rows: RowMap) -> torch.Tensor | None:
        if layer not in self._steering.by_layer or not self._may_steer(rows, layer):
            return None
        if layer >= self.score_layer and self._row_steer is not None:
            active = self._row_steer
        else:
            active = self.monitor.rows_to_steer(ix)
        h = h32 if h32 is not None else flat.float()
        delta = self._steering.delta(layer, h, active, self.monitor.steer_strength(ix))
        if delta is None:
            return None
        # A non-finite row (a broken forward, or an injected fault) must not spread into the stream.
        return torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0).to(flat.dtype)

    def _may_steer(self, rows: RowMap, layer: int) -> bool:
        """Host-side shortcut: skip steering work when no request of this step can be steered."""
        if self._defer and (layer >= self.score_layer or self._flag.pending):
            return True  # this step's (or an unread) firing is not known on the host yet
        for request_id in rows.request_ids:
            req = self._requests.get(request_id)
            if req is not None and req.steering:
                return True
        return False

    # --- host-side events --------------------------------------------------------------------------

    def _poll(self) -> None:
        """Deferred mode: act on the last copied 'something fired' flag once it has arrived."""
        if self._flag.take():
            self._drain()

    def _drain(self) -> None:
        """Read newly fired rules back to the host: stops, steering flags, action counters."""
        for event in self.monitor.take_fired():
            request_id = self._requests.owner(event.slot)
            if request_id is None:
                continue
            req = self._requests[request_id]
            action = event.action
            if req.shadow and action in SHADOWED:
                action = "would_" + action  # judged and counted, the output is left alone
            elif action == "stop":
                req.stopped = True
            elif action == "steer":
                req.steering = True
            if self.metrics is not None:
                rule = self.rules[event.rule_index]
                self.metrics.inc_action(self.pack.axis_names[rule.axis_index], action, rule.rule.name)

    def record_error(self, stage: str, exc: BaseException, request_ids: Any = ()) -> None:
        """For adapters: count and handle an exception raised in their own glue code exactly like one
        inside the guard (metrics by stage, logged once per kind, fail-open/closed per the policy)."""
        with self._lock:
            self._on_error(stage, exc, request_ids)

    def _on_error(self, stage: str, exc: BaseException, request_ids: Any) -> None:
        try:
            self._errors.handle(stage, exc, self._requests.known(list(request_ids)), self.policy.on_error)
        except Exception:  # pragma: no cover - the error path itself must never raise
            pass

    # --- metrics ------------------------------------------------------------------------------------

    def flush_metrics(self) -> None:
        """Push the device-side accumulators to Prometheus (one device sync)."""
        if self.metrics is None:
            return
        try:
            totals = self.monitor.metrics.take_totals()
            steered = []
            for r in self._steering.rules:
                assert r.rule.steer is not None and r.steer_axis_index is not None
                steered.append((self.pack.axis_names[r.steer_axis_index], r.rule.steer.method, totals.steered[r.index]))
            self.metrics.push_totals(totals, self.monitor.axis_names, steered)
        except Exception as exc:
            self._on_error("metrics", exc, [])
        finally:
            self._last_flush = time.monotonic()
            self._steps_since_flush = 0

    # --- verdicts ------------------------------------------------------------------------------------

    def _verdict(self, request_id: str) -> Verdict:
        self._drain()
        req = self._requests[request_id]
        return assemble_verdict(
            request_id, self.monitor.snapshot(req.slot), self.rules, self.monitor.axis_names,
            self.monitor.trajectory_tokens, stopped=req.stopped, error_stop=req.error_stop, errors=req.errors,
            policy_name=self.policy.name,
        )
