"""Worker-process side of the plugin: attach a guard session after the model loads; answer RPCs.

``attach`` runs right after ``load_model`` in every vLLM worker (see ``plugin``). It checks the
runner is one the row map understands, then builds the consumer (the runtime ``Guard``, or the
activation capture for ``--engine vllm`` extraction) on the scoring rank and taps the model's layers
(``tap_op``, before vLLM's first forward compiles it).
A pack that does not fit the model raises here, so the engine refuses to start.

``rpc`` is what ``collective_rpc("axisguard_call", args=(op, ...))`` runs in each worker: the HTTP
routes and the offline verdict API use it (``verdicts``, ``status``, ``captures``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from guard.errors import AxisguardError
from integrations.vllm.config import GuardConfig
from integrations.vllm.session import GuardSession, make_metrics
from integrations.vllm.tensor_parallel import step_sync_for

log = logging.getLogger(__name__)

SESSION_ATTR = "_axisguard_session"


def _check_runner(runner: Any, vllm_config: Any) -> None:
    missing = [a for a in ("input_batch", "query_start_loc", "_model_forward", "execute_model", "requests")
               if not hasattr(runner, a)]
    if missing:
        raise AxisguardError(
            f"axisguard cannot attach to {type(runner).__name__} (missing {', '.join(missing)}); "
            "it needs vLLM's V1 model runner",
            "set VLLM_USE_V2_MODEL_RUNNER=0 (the plugin does so when it is configured before vLLM starts)",
        )


def attach(worker: Any, config: GuardConfig | None = None) -> GuardSession | None:
    """Hook a loaded worker according to ``config`` (default: the environment); None if unconfigured."""
    config = config if config is not None else GuardConfig.from_env()
    if config is None:
        return None
    runner = worker.model_runner
    vllm_config = worker.vllm_config
    _check_runner(runner, vllm_config)
    sync = step_sync_for(vllm_config)
    on_error = None
    if config.mode == "capture":
        from integrations.vllm.capture import CaptureConsumer

        layers = list(config.capture_layers)
        consumer: Any = CaptureConsumer(layers, config.capture_pooling) if sync.is_scoring_rank else None
    else:
        from guard.runtime import Guard
        from integrations.vllm.engine import check_engine_config
        from probes.policies import load_pack_and_policy

        pack, policy = load_pack_and_policy(config.pack, config.policy)  # type: ignore[arg-type]
        check_engine_config(vllm_config, config, pack)
        model_name = vllm_config.model_config.served_model_name
        metrics = make_metrics(model_name) if sync.is_scoring_rank else None
        guard = Guard(pack, policy, metrics=metrics, model_name=model_name)
        layers = list(guard.layers)
        if sync.is_scoring_rank:
            from integrations.vllm.live_policy import LivePolicyConsumer

            def make_guard(new_policy: Any) -> Guard:
                return Guard(pack, new_policy, metrics=metrics, model_name=model_name)

            consumer = LivePolicyConsumer(guard, make_guard, layers, metrics)
            on_error = consumer.report_error
        else:
            consumer = None
    session = GuardSession(runner, consumer, layers, sync=sync, verdict_history=config.verdict_history,
                           on_error=on_error)
    setattr(worker, SESSION_ATTR, session)
    log.info("axisguard: %s mode on layers %s (rank %s scores: %s)", config.mode, layers,
             getattr(worker, "rank", 0), sync.is_scoring_rank)
    return session


def session_of(worker: Any) -> GuardSession | None:
    return getattr(worker, SESSION_ATTR, None)


def rpc(worker: Any, op: str, *args: Any) -> Any:
    """Worker-side answer to ``collective_rpc("axisguard_call", args=(op, *args))``; None on non-scoring ranks."""
    session = session_of(worker)
    if session is None or session.consumer is None:
        return None
    if op == "verdicts":
        return session.lookup(str(args[0]))
    if op == "verdicts_many":
        return [session.lookup(str(query)) for query in args[0]]
    if op == "status":
        return session.status()
    if op == "set_policy":  # (policy text, source): the live reload, between two engine steps
        return _set_policy(session, str(args[0]), str(args[1]))
    if op == "captures":
        take = getattr(session.consumer, "take", None)
        if take is None:
            return None
        done = take()
        # One float32 buffer as bytes: RPC results cross processes through msgpack, which would not
        # give numpy arrays back (only their encoded parts) inside a generic structure.
        width = next(iter(done.values()))[session.layers[0]].shape[0] if done else 0
        values = np.zeros((len(done), len(session.layers), width), dtype=np.float32)
        for i, rid in enumerate(done):
            for j, layer in enumerate(session.layers):
                values[i, j] = done[rid][layer]
        return {"ids": list(done), "layers": session.layers, "shape": list(values.shape), "data": values.tobytes()}
    raise ValueError(f"unknown axisguard rpc {op!r}; allowed: verdicts, verdicts_many, status, set_policy, captures")


def _set_policy(session: GuardSession, text: str, source: str) -> dict[str, Any]:
    """Swap the policy of new requests; an answer with ``error`` (and the old policy running) if refused."""
    from guard.policy import policy_from_text

    swap = getattr(session.consumer, "set_policy", None)
    if swap is None:
        return {"error": "this worker does not guard (capture mode); nothing to reload"}
    try:
        return dict(swap(policy_from_text(text, source)))
    except AxisguardError as exc:
        return {"error": str(exc)}
