"""Live policy reload in the API server: a watched policy file and ``POST /axisguard/policy``.

The API server process holds the policy in force (``PolicyHolder``). A candidate policy, from the
file or the route, is checked against the loaded pack with the checks of ``axisguard policy check``
(schema, axes, layers; ``guard.policy_check.require_runnable``), then sent to the worker
(``collective_rpc("axisguard_call", ("set_policy", ...))``), which swaps it between two engine
steps for new requests; running ones keep theirs (``live_policy``). A refused policy changes
nothing: the reason goes back to the caller (HTTP 400) or into the log, and
``axisguard_policy_reloads_total{result="refused"}`` counts it.

* **File watch.** ``AXISGUARD_POLICY`` is re-read every ``AXISGUARD_POLICY_WATCH_S`` seconds
  (default 2; 0 turns it off) and applied when its content changed. Reading the path afresh each
  time follows a Kubernetes ConfigMap update, which swaps a symlink rather than writing the file.
* **HTTP.** ``POST /axisguard/policy`` with the policy (YAML or JSON) as the body is off unless
  ``AXISGUARD_RELOAD_TOKEN`` is set; the caller sends ``Authorization: Bearer <token>`` (compared
  in constant time). Mount the token from a Secret.

The holder also answers "which policy is in force" for the admission check of per-request
overrides (``stop.GuardStopLogitsProcessor.validate_params``) and for the in-band verdict switch.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import AxisguardError
from guard.pack import AxisPack
from guard.policy import Policy, policy_from_text
from guard.policy_check import require_runnable
from probes.policies import default_policy_text

log = logging.getLogger(__name__)

ENV_RELOAD_TOKEN = "AXISGUARD_RELOAD_TOKEN"
ENV_POLICY_WATCH = "AXISGUARD_POLICY_WATCH_S"
DEFAULT_WATCH_S = 2.0


@dataclass
class ReloadResult:
    """What a reload attempt did: ``applied`` and the new policy's name/hash, or the ``error``."""

    applied: bool
    name: str = ""
    hash: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.applied:
            return {"applied": True, "name": self.name, "hash": self.hash}
        return {"applied": False, "error": self.error}


def watch_interval(environ: Any = None) -> float:
    raw = (environ if environ is not None else os.environ).get(ENV_POLICY_WATCH, "").strip()
    try:
        return float(raw) if raw else DEFAULT_WATCH_S
    except ValueError:
        raise AxisguardError(f"{ENV_POLICY_WATCH}={raw!r} is not a number",
                             "set it to the seconds between checks of the policy file (0: off)") from None


def token_ok(presented: str | None, environ: Any = None) -> bool | None:
    """None when HTTP reload is off; else whether ``presented`` (an Authorization header) carries the token."""
    expected = (environ if environ is not None else os.environ).get(ENV_RELOAD_TOKEN, "")
    if not expected:
        return None
    scheme, _, value = (presented or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected.encode())


class PolicyHolder:
    """The policy in force in this API server, and the way to change it (see the module docstring)."""

    def __init__(self, pack_path: Path, policy_path: Path | None, engine_client: Any, metrics: Any = None) -> None:
        self.pack_path = pack_path
        self.pack = AxisPack.load(pack_path)
        self.path = policy_path
        text = self._read() if policy_path is not None else default_policy_text()
        self.policy = self._check(text, str(policy_path or "default policy"))
        self._seen = _digest(text)
        self._engine = engine_client
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> str:
        assert self.path is not None
        return self.path.read_text(encoding="utf-8")

    def _check(self, text: str, source: str) -> Policy:
        policy = policy_from_text(text, source)
        require_runnable(policy, self.pack, where=str(self.pack_path))
        return policy

    async def apply(self, text: str, source: str) -> ReloadResult:
        """Check ``text`` and make it the policy of new requests; the old one stays on any error."""
        async with self._lock:
            try:
                policy = self._check(text, source)
                answers = await self._engine.collective_rpc("axisguard_call", args=("set_policy", text, source))
                answer = next((a for a in answers if a is not None), None) or {"error": "no worker guards this model"}
                if "error" in answer:
                    raise AxisguardError(str(answer["error"]))
            except AxisguardError as exc:
                self._count("refused")
                log.warning("axisguard: policy reload from %s refused, the previous policy %r stays: %s",
                            source, self.policy.name, exc)
                return ReloadResult(applied=False, error=str(exc))
            self.policy = policy
            self._count("applied")
            log.info("axisguard: policy %r (%s) from %s now guards new requests", policy.name, answer["hash"], source)
            return ReloadResult(applied=True, name=policy.name, hash=str(answer["hash"]))

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.inc_policy_reload(result)

    # --- the file watch ---------------------------------------------------------------------------

    def start_watch(self, interval_s: float) -> None:
        if self.path is None or interval_s <= 0 or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._watch(interval_s))

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check_file()
            except Exception:  # the watch must outlive a bad read; the next round tries again
                log.exception("axisguard: checking the policy file %s failed", self.path)

    async def check_file(self) -> ReloadResult | None:
        """Apply the policy file if its content changed since it was last seen (None: unchanged)."""
        try:
            text = self._read()
        except OSError as exc:  # mid-swap or removed: keep the policy in force, look again next round
            log.debug("axisguard: policy file %s not readable now: %s", self.path, exc)
            return None
        digest = _digest(text)
        if digest == self._seen:
            return None
        self._seen = digest  # a refused version is reported once, not every round
        return await self.apply(text, str(self.path))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_HOLDER: PolicyHolder | None = None


def set_holder(holder: PolicyHolder | None) -> None:
    global _HOLDER
    _HOLDER = holder


def current_policy() -> Policy | None:
    """The policy in force in this API server (None outside a guarded server)."""
    return _HOLDER.policy if _HOLDER is not None else None


def holder() -> PolicyHolder | None:
    return _HOLDER
