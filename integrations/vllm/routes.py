"""The ``vllm.endpoint_plugins`` entry point: the guard's HTTP routes on vLLM's OpenAI-compatible server.

* ``GET /axisguard/requests/{id}``: the guard's verdict(s) for a response id (``chatcmpl-...``,
  ``cmpl-...``; a multi-prompt completion returns one verdict per prompt). Works while the request
  runs and after it finished (the worker keeps the last ``AXISGUARD_VERDICT_HISTORY`` verdicts).
  404 when the id is unknown.
* ``GET /axisguard/status``: active requests, errors caught by stage, hooked layers.

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

from integrations.vllm.config import is_configured
from integrations.vllm.route_auth import remember_api_keys, require_api_key

NAME = "axisguard"
_STATE_KEY = "axisguard_engine_client"


async def _call(request: Request, op: str, *args: Any) -> Any:
    """The scoring rank's answer (other ranks answer None)."""
    engine = getattr(request.app.state, _STATE_KEY, None)
    if engine is None:
        return None
    results = await engine.collective_rpc("axisguard_call", args=(op, *args))
    return next((r for r in results if r is not None), None)


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

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        setattr(state, _STATE_KEY, engine_client)
        remember_api_keys(state, args)


def register() -> AxisguardEndpoints:
    """Entry point (``vllm.endpoint_plugins``)."""
    return AxisguardEndpoints(enabled=is_configured())
