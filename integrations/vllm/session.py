"""The worker-side guard session: one per vLLM worker, attached right after the model is loaded.

It ties the pieces together around one model runner:

* **request lifecycle**: before every step, requests vLLM finished or aborted (``finished_req_ids``)
  are finished in the consumer and their verdicts moved to a bounded store; new requests are
  started with their per-request overrides (``SamplingParams.extra_args``);
* **step context**: right before the forward, the step's row layout is read from the runner
  (``row_mapping``); the layer taps (``tap_op``) only act while that context is set, so vLLM's own dummy and
  profiling forwards pass through untouched;
* **taps**: at each tapped layer the consumer (the runtime ``Guard``, or the activation capture)
  gets the residual stream of the real rows and may return a delta, added in place;
* **safety net**: anything that raises in this path is caught, counted by stage and logged once per
  kind; the step continues unguarded. A guard must never take the engine down.

Only the scoring rank (TP rank 0) has a consumer; see ``tensor_parallel``.

The runtime ``Guard`` is the serving consumer (``GuardConsumer`` below, a shape adapter); the
activation capture (``capture``) is the extraction one.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from guard.runtime import Guard
from integrations.vllm.choices import in_choice_order
from integrations.vllm.config import overrides_from_extra_args
from integrations.vllm.hooks import add_to_stream, residual_stream
from integrations.vllm.row_mapping import StepRows, step_rows_from_runner
from integrations.vllm.tap_op import install_taps, tap_context
from integrations.vllm.tensor_parallel import SingleRank, StepSync
from integrations.vllm.verdicts import VerdictStore, id_matches

log = logging.getLogger(__name__)


class StepConsumer(Protocol):
    """What the session feeds (implemented by ``GuardConsumer`` and ``CaptureConsumer``)."""

    layers: list[int]

    def start_request(self, request_id: str, overrides: Any = None) -> None: ...
    def on_step(self, layer: int, hidden: torch.Tensor, step: StepRows) -> torch.Tensor | None: ...
    def should_stop(self, request_id: str) -> bool: ...
    def finish_request(self, request_id: str) -> dict[str, Any] | None: ...
    def verdict(self, request_id: str) -> dict[str, Any] | None: ...
    def active_requests(self) -> int: ...


# (stage, exception, request ids of the step) -> None: handles an error caught in this path (count,
# log, fail-open/closed); the guard consumer routes it to ``Guard.record_error``.
ErrorReporter = Callable[[str, BaseException, list[str]], None]

# Sessions by vLLM config object, so the stop logits processor (built by vLLM from the same config)
# finds its session without globals shared between engines of one process.
_SESSIONS: dict[int, weakref.ReferenceType[GuardSession]] = {}
_SESSIONS_LOCK = threading.Lock()


def session_for(vllm_config: Any) -> GuardSession | None:
    with _SESSIONS_LOCK:
        ref = _SESSIONS.get(id(vllm_config))
    return ref() if ref is not None else None


class GuardSession:
    """Owns the hooks and per-request bookkeeping of one worker (see the module docstring)."""

    def __init__(self, runner: Any, consumer: StepConsumer | None, layers: list[int],
                 sync: StepSync | None = None, verdict_history: int = 10_000,
                 on_error: ErrorReporter | None = None) -> None:
        self.runner = runner
        self.consumer = consumer
        self.sync = sync or SingleRank()
        self.verdicts = VerdictStore(verdict_history)
        self.errors: Counter[str] = Counter()
        self._on_error = on_error
        self._logged: set[tuple[str, str]] = set()
        self._active: set[str] = set()
        self._step: StepRows | None = None
        self.steps = 0
        self.layers = sorted(set(layers))
        self._handles = install_taps(runner.get_model(), self.layers, getattr(runner, "vllm_config", None))
        self._wrap_runner()
        with _SESSIONS_LOCK:
            _SESSIONS[id(runner.vllm_config)] = weakref.ref(self)

    # --- runner wrapping ----------------------------------------------------------------------------

    def _wrap_runner(self) -> None:
        runner = self.runner
        execute_model = runner.execute_model
        model_forward = runner._model_forward

        def guarded_execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            self._guarded("lifecycle", self._on_schedule, scheduler_output)
            return execute_model(scheduler_output, *args, **kwargs)

        def guarded_model_forward(*args: Any, **kwargs: Any) -> Any:
            self._step = self._guarded("row_map", step_rows_from_runner, runner)
            self.steps += 1
            try:
                with tap_context(self._on_layer):
                    return model_forward(*args, **kwargs)
            finally:
                self._step = None

        runner.execute_model = guarded_execute_model
        runner._model_forward = guarded_model_forward

    def close(self) -> None:
        """Remove the taps and the runner wrappers (the runner behaves as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for name in ("execute_model", "_model_forward"):
            self.runner.__dict__.pop(name, None)
        with _SESSIONS_LOCK:
            _SESSIONS.pop(id(self.runner.vllm_config), None)

    # --- lifecycle ------------------------------------------------------------------------------------

    def _on_schedule(self, scheduler_output: Any) -> None:
        for request_id in scheduler_output.finished_req_ids:
            self.finish(request_id)
        if self.consumer is None:
            return
        for new in scheduler_output.scheduled_new_reqs:
            params = getattr(new, "sampling_params", None)
            if params is None:  # pooling requests are not generated, nothing to guard
                continue
            self.start(new.req_id, getattr(params, "extra_args", None))

    def start(self, request_id: str, extra_args: Any) -> None:
        assert self.consumer is not None
        self._active.add(request_id)
        try:
            overrides = overrides_from_extra_args(extra_args)
            self.consumer.start_request(request_id, overrides or None)
        except Exception as exc:  # validated at admission already; never fail the request here
            self._count("start_request", exc)
            self._guarded("start_request", self.consumer.start_request, request_id, None)

    def finish(self, request_id: str) -> None:
        if self.consumer is None or request_id not in self._active:
            return
        self._active.discard(request_id)
        verdict = self._guarded("finish_request", self.consumer.finish_request, request_id)
        if verdict is not None:
            self.verdicts.put(request_id, verdict)

    # --- hooks ----------------------------------------------------------------------------------------

    def _on_layer(self, layer: int, output: Any) -> None:
        step = self._step
        if step is None or step.num_tokens == 0:
            return
        rows = step.num_tokens
        delta = None
        if self.consumer is not None and self.sync.is_scoring_rank:
            stream = residual_stream(output)[:rows]
            delta = self._guarded("hook", self.consumer.on_step, layer, stream, step)
            if delta is not None and tuple(delta.shape) != tuple(stream.shape):
                self._count("hook", ValueError(f"delta shape {tuple(delta.shape)} != {tuple(stream.shape)}"))
                delta = None
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        delta = self.sync.share_delta(delta, hidden[:rows])
        if delta is not None:
            add_to_stream(output, delta)

    # --- queries (RPC, stop logits processor) -----------------------------------------------------

    def stop_rows(self, request_ids: list[str]) -> list[int]:
        """Batch indices of requests the guard wants stopped."""
        if self.consumer is None:
            return []
        consumer = self.consumer
        return [i for i, rid in enumerate(request_ids) if rid in self._active and
                self._guarded("should_stop", consumer.should_stop, rid)]

    def lookup(self, query: str) -> list[dict[str, Any]]:
        """Verdicts for a client's request id, one per choice in the response's order (``index``):
        finished ones from the store, running ones live."""
        found = self.verdicts.matching(query)
        if self.consumer is not None:
            for rid in sorted(self._active):
                if id_matches(query, rid):
                    verdict = self._guarded("verdict", self.consumer.verdict, rid)
                    if verdict is not None:
                        found.append((rid, verdict))
        return in_choice_order(query, found)

    def status(self) -> dict[str, Any]:
        return {
            "active_requests": len(self._active),
            "consumer_active_requests": self.consumer.active_requests() if self.consumer is not None else 0,
            "finished_verdicts": len(self.verdicts),
            "errors": dict(self.errors),
            "layers": self.layers,
            "steps": self.steps,
            "scoring_rank": self.sync.is_scoring_rank,
        }

    # --- safety net -----------------------------------------------------------------------------------

    def _guarded(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            self._count(stage, exc)
            return None

    def _count(self, stage: str, exc: BaseException) -> None:
        self.errors[stage] += 1
        if self._on_error is not None:
            try:
                step = self._step
                self._on_error(stage, exc, list(step.request_ids) if step is not None else [])
                return
            except Exception:  # the reporter must not break the safety net itself; log below
                pass
        kind = (stage, type(exc).__name__)
        if kind not in self._logged:
            self._logged.add(kind)
            log.error("axisguard: %s failed (%s: %s); the request continues unguarded. "
                      "Further %s errors of this kind are counted, not logged.",
                      stage, type(exc).__name__, exc, stage, exc_info=exc)


# --- the runtime ``Guard`` as the step consumer --------------------------------------------------
# It only adapts shapes: the session hands over a step's rows as ``StepRows``; the guard wants the
# facade's ``RowMap``, and verdicts leave the worker as JSON dicts.


# vLLM-side failure points -> the guard's bounded ``stage`` label set (``guard.metrics.ERROR_STAGES``).
_GUARD_STAGE = {
    "lifecycle": "start", "start_request": "start", "row_map": "score", "hook": "score",
    "should_stop": "policy", "finish_request": "finish", "verdict": "finish",
}


def make_metrics(model_name: str) -> Any:
    """The guard's Prometheus metrics (multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set), or None."""
    try:
        from guard.metrics import GuardMetrics
    except ImportError:  # the metrics module is optional for the plumbing
        return None
    return GuardMetrics(model_name=model_name)


class GuardConsumer:
    """Feeds every step to a ``Guard``; returns its steering delta."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.layers = sorted(set(guard.layers))

    def start_request(self, request_id: str, overrides: Mapping[str, Any] | None = None) -> None:
        self.guard.start_request(request_id, overrides or None)

    def on_step(self, layer: int, hidden: torch.Tensor, step: StepRows) -> torch.Tensor | None:
        return self.guard.on_hidden(layer, hidden, step.row_map())

    def should_stop(self, request_id: str) -> bool:
        return self.guard.should_stop(request_id)

    def finish_request(self, request_id: str) -> dict[str, Any] | None:
        verdict = self.guard.finish_request(request_id)
        return verdict.to_json() if verdict is not None else None

    def verdict(self, request_id: str) -> dict[str, Any] | None:
        try:
            return self.guard.verdict(request_id).to_json()
        except KeyError:  # not started yet, or already finished
            return None

    def report_error(self, stage: str, exc: BaseException, request_ids: list[str]) -> None:
        """Errors caught in the vLLM glue count and act like the guard's own (metrics, fail-open/closed)."""
        self.guard.record_error(_GUARD_STAGE.get(stage, "score"), exc, request_ids)

    def active_requests(self) -> int:
        return self.guard.active_requests()
