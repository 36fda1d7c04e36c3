"""The ``vllm.endpoint_plugins`` entry point: the guard's HTTP routes on vLLM's OpenAI-compatible server.

* ``GET /axisguard/requests/{id}``: the guard's verdict(s) for a response id (``chatcmpl-...``,
  ``cmpl-...``; a multi-prompt completion returns one verdict per prompt). Works while the request
  runs and after it finished (the worker keeps the last ``AXISGUARD_VERDICT_HISTORY`` verdicts).
  404 when the id is unknown.
* ``GET /axisguard/status``: active requests, errors caught by stage, hooked layers.
* ``POST /axisguard/policy`` (off unless ``AXISGUARD_RELOAD_TOKEN`` is set) / ``GET /axisguard/policy``:
  replace / show the policy in force (``policy_reload``).

It also installs the in-band verdict middleware on the app (``inband``) and, at start-up, the
policy holder with its file watch (``policy_reload``).

With ``--api-key`` (or ``VLLM_API_KEY``) every ``/axisguard`` route needs the same key (``route_auth``).

vLLM loads endpoint plugins only when ``VLLM_PLUGINS`` names them (``axisguard serve`` does that).
Unconfigured, the factory returns a plugin that requires no task the server has, so vLLM skips it
and no route is added. The routes reach the worker through ``collective_rpc("axisguard_call")``,
the path vLLM's endpoint-plugin contract prescribes.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from guard.policy import policy_digest
from integrations.vllm.config import GuardConfig, is_configured
from integrations.vllm.inband import InBandVerdicts
from integrations.vllm.policy_reload import (
    ENV_RELOAD_TOKEN,
    PolicyHolder,
    holder,
    set_holder,
    token_ok,
    watch_interval,
)
from integrations.vllm.route_auth import remember_api_keys, require_api_key
from integrations.vllm.session import make_metrics

NAME = "axisguard"
_STATE_KEY = "axisguard_engine_client"


async def _rpc(engine: Any, op: str, *args: Any) -> Any:
    """The scoring rank's answer (other ranks answer None)."""
    if engine is None:
        return None
    results = await engine.collective_rpc("axisguard_call", args=(op, *args))
    return next((r for r in results if r is not None), None)


async def _call(request: Request, op: str, *args: Any) -> Any:
    return await _rpc(getattr(request.app.state, _STATE_KEY, None), op, *args)


async def _verdicts_for(scope: Any, response_id: str) -> list[dict[str, Any]]:
    """The in-band verdicts of one response (``inband``): the same call as the route's."""
    return list(await _rpc(getattr(scope["app"].state, _STATE_KEY, None), "verdicts", response_id) or [])


def _in_band_on() -> bool:
    held = holder()
    return held is not None and held.policy.in_band


def build_router() -> APIRouter:
    # The dependency covers every route on this router, present and future (``route_auth``).
    router = APIRouter(prefix="/axisguard", tags=["axisguard"], dependencies=[Depends(require_api_key)])

    @router.get("/requests/{request_id}")
    async def request_verdict(request_id: str, request: Request) -> JSONResponse:
        verdicts = await _call(request, "verdicts", request_id)
        if not verdicts:
            return JSONResponse(status_code=404, content={
                "error": f"no axisguard verdict for request {request_id!r}",
                "hint": "use the id of a response from this server (e.g. chatcmpl-...); verdicts of old requests "
                        "are dropped after AXISGUARD_VERDICT_HISTORY newer ones",
            })
        return JSONResponse(content={"id": request_id, "verdicts": verdicts})

    @router.post("/policy")
    async def reload_policy(request: Request) -> JSONResponse:
        allowed = token_ok(request.headers.get("authorization"))
        if allowed is None:
            return JSONResponse(status_code=403, content={
                "error": "policy reload over HTTP is off on this server",
                "hint": f"set {ENV_RELOAD_TOKEN} (from a secret) to turn it on, or change the mounted policy file"})
        if not allowed:
            return JSONResponse(status_code=401, content={
                "error": "missing or wrong reload token", "hint": "send 'Authorization: Bearer <token>'"})
        held = holder()
        if held is None:
            return JSONResponse(status_code=409, content={"error": "this server does not guard (no policy to reload)"})
        try:
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse(status_code=400, content={"applied": False, "error": "the body is not UTF-8 text",
                                                          "hint": "send the policy as YAML or JSON"})
        result = await held.apply(text, "POST /axisguard/policy")
        return JSONResponse(status_code=200 if result.applied else 400, content=result.to_json())

    @router.get("/policy")
    async def policy_in_force() -> JSONResponse:
        held = holder()
        if held is None:
            return JSONResponse(status_code=409, content={"error": "this server does not guard"})
        return JSONResponse(content={"name": held.policy.name, "hash": policy_digest(held.policy),
                                     "mode": held.policy.mode, "in_band": held.policy.in_band})

    @router.get("/status")
    async def status(request: Request) -> JSONResponse:
        return JSONResponse(content=await _call(request, "status") or {})

    return router


class AxisguardEndpoints:
    """``EndpointPlugin`` (see ``vllm.plugins.endpoint_plugins.interface``)."""

    name = NAME

    def __init__(self, enabled: bool) -> None:
        # An empty task set never intersects the server's tasks, so vLLM skips an unconfigured plugin.
        self.required_tasks: tuple[str, ...] | None = ("generate",) if enabled else ()

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(build_router())
        app.add_middleware(InBandVerdicts, lookup=_verdicts_for, enabled=_in_band_on)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        setattr(state, _STATE_KEY, engine_client)
        remember_api_keys(state, args)
        config = GuardConfig.from_env()
        if engine_client is None or config is None or config.mode != "guard" or config.pack is None:
            return
        names = getattr(args, "served_model_name", None) or [getattr(args, "model", "")]
        model_name = names[0] if isinstance(names, list | tuple) else str(names)
        held = PolicyHolder(config.pack, config.policy, engine_client, metrics=make_metrics(model_name))
        set_holder(held)
        held.start_watch(watch_interval())


def register() -> AxisguardEndpoints:
    """Entry point (``vllm.endpoint_plugins``)."""
    return AxisguardEndpoints(enabled=is_configured())
