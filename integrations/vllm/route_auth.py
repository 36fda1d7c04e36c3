"""The guard's HTTP routes require vLLM's API key when the server has one (``--api-key``/``VLLM_API_KEY``).

vLLM's own authentication middleware only guards ``/v1``-style paths, so without this the
``/axisguard/*`` routes (verdicts: who asked what and how it scored; any write route) would be open
on a server whose operator believes it is closed. ``require_api_key`` is a dependency of the whole
``/axisguard`` router, so every route added to it, now or later, is covered.

The keys are the ones vLLM uses: the server's ``--api-key`` values (recorded when the plugin's state
is initialised), else ``VLLM_API_KEY``. Comparison is on sha256 digests in constant time, like vLLM's.
No key configured means open routes, as vLLM's own are.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from argparse import Namespace
from typing import Any

from fastapi import HTTPException, Request

_TOKENS_KEY = "axisguard_api_key_digests"


def api_key_digests(args: Namespace | None) -> list[bytes]:
    """sha256 digests of the keys the server accepts (CLI ``--api-key`` wins over ``VLLM_API_KEY``)."""
    keys = getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY") or ""]
    if isinstance(keys, str):
        keys = [keys]
    return [hashlib.sha256(k.encode("utf-8")).digest() for k in keys if k]


def remember_api_keys(state: Any, args: Namespace | None) -> None:
    setattr(state, _TOKENS_KEY, api_key_digests(args))


def _presented(request: Request) -> bytes | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return hashlib.sha256(token.encode("utf-8")).digest()


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries one of the server's keys (or none is set)."""
    digests = getattr(request.app.state, _TOKENS_KEY, None)
    if digests is None:  # state not initialised (yet): fall back to the environment
        digests = api_key_digests(None)
    if not digests:
        return
    presented = _presented(request)
    match = False
    for digest in digests:  # no early exit: the time taken does not depend on which key matched
        match |= presented is not None and secrets.compare_digest(presented, digest)
    if not match:
        raise HTTPException(status_code=401, detail="Unauthorized: this server requires its API key "
                                                    "(Authorization: Bearer KEY) on /axisguard routes too")
