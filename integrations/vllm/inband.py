"""The guard's verdict where OpenAI-API clients look for it: in the response (an ASGI middleware).

For ``POST /v1/chat/completions`` and ``/v1/completions`` of a guarded server:

* the JSON body gains ``"axisguard": {"verdicts": [...]}``, one verdict per choice (``index``), equal
  to what ``GET /axisguard/requests/{id}`` answers; a stream carries it in its last chunk before
  ``data: [DONE]`` (the usage chunk when ``stream_options.include_usage`` is set);
* a choice the guard stopped reads ``finish_reason: "content_filter"``, and when it was stopped
  before any text, the stop rule's ``stop.message`` (if the policy sets one) as its content; other
  choices of an ``n > 1`` response are left alone;
* headers: ``x-axisguard-actions`` / ``x-axisguard-stopped`` on plain responses; on streams
  ``x-axisguard-prompt-actions``, what was decided by the time the first chunk left (prompt rules).

The verdicts are read from the worker when the response is complete (``collective_rpc``, which vLLM
runs between engine steps), running or finished alike, so what the client reads is final and the
same as the route's. Off with ``in_band: false`` in the policy: responses stay as vLLM made them.
A failure here is logged once and the response goes out unchanged: the guard never breaks a reply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

GUARDED_PATHS = ("/v1/chat/completions", "/v1/completions")
CONTENT_FILTER = "content_filter"

Lookup = Callable[[Any, str], Awaitable[list[dict[str, Any]]]]  # (ASGI scope, response id) -> verdicts
Switch = Callable[[], bool]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _actions(verdicts: list[dict[str, Any]]) -> str:
    return ",".join(sorted({a for v in verdicts for a in v.get("actions", [])}))


def apply_to_choice(choice: dict[str, Any], verdict: dict[str, Any] | None, produced_text: bool) -> None:
    """A stopped choice: ``content_filter``, and the rule's message if nothing was said yet."""
    if verdict is None or not verdict.get("stopped") or choice.get("finish_reason") is None:
        return
    choice["finish_reason"] = CONTENT_FILTER
    message = verdict.get("stop_message")
    if not message or produced_text:
        return
    for key in ("message", "delta"):  # chat (plain, stream)
        if isinstance(choice.get(key), dict):
            choice[key]["content"] = message
            return
    choice["text"] = message  # completions


def _text_of(choice: dict[str, Any]) -> str:
    for key in ("message", "delta"):
        if isinstance(choice.get(key), dict):
            return str(choice[key].get("content") or "")
    return str(choice.get("text") or "")


class InBandVerdicts:
    """ASGI middleware (see the module docstring); ``lookup`` reads the verdicts, ``enabled`` is the switch."""

    def __init__(self, app: Any, lookup: Lookup, enabled: Switch) -> None:
        self.app = app
        self.lookup = lookup
        self.enabled = enabled
        self._logged = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in GUARDED_PATHS \
                or not self._on():
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Exchange(self, scope, send).send)

    def _on(self) -> bool:
        try:
            return bool(self.enabled())
        except Exception:
            return False

    def failed(self, exc: BaseException) -> None:
        if not self._logged:
            self._logged = True
            log.error("axisguard: adding the verdict to a response failed (%s: %s); responses go out "
                      "unchanged, further failures are not logged", type(exc).__name__, exc, exc_info=exc)


class _Exchange:
    """One response passing through: buffered (JSON) or rewritten event by event (SSE)."""

    def __init__(self, owner: InBandVerdicts, scope: Any, send: Any) -> None:
        self.owner, self.scope, self._send = owner, scope, send
        self.start: dict[str, Any] | None = None
        self.kind = "pass"
        self.body = b""
        self.pending = b""
        self.held: list[dict[str, Any]] = []  # finish/usage chunks: the last one gets the verdicts
        self.text_seen: set[int] = set()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = dict((k.lower(), v) for k, v in message.get("headers", []))
            ctype = headers.get(b"content-type", b"").decode().lower()
            if message.get("status") == 200 and ctype.startswith("application/json"):
                self.kind = "json"
            elif message.get("status") == 200 and ctype.startswith("text/event-stream"):
                self.kind = "sse"
            if self.kind == "pass":
                await self._send(message)
            else:
                self.start = message
            return
        if message["type"] != "http.response.body" or self.kind == "pass":
            await self._send(message)
            return
        if self.kind == "json":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                await self._finish_json()
            return
        await self._stream(message)

    async def _send_start(self, extra: list[tuple[bytes, bytes]], length: int | None = None) -> None:
        start, self.start = self.start, None
        if start is None:
            return
        headers = [(k, v) for k, v in start.get("headers", []) if not (length is not None and k.lower() == b"content-length")]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        await self._send({**start, "headers": headers + extra})

    # --- plain JSON -----------------------------------------------------------------------------------

    async def _finish_json(self) -> None:
        body, extra = self.body, []
        try:
            data = json.loads(body)
            verdicts = await self.owner.lookup(self.scope, str(data["id"]))
            by_index = {v.get("index"): v for v in verdicts}
            for choice in data.get("choices", []):
                apply_to_choice(choice, by_index.get(choice.get("index")), bool(_text_of(choice)))
            data["axisguard"] = {"verdicts": verdicts}
            body = _dumps(data)
            extra = [(b"x-axisguard-actions", _actions(verdicts).encode()),
                     (b"x-axisguard-stopped", b"true" if any(v.get("stopped") for v in verdicts) else b"false")]
        except Exception as exc:
            self.owner.failed(exc)
            body = self.body
        await self._send_start(extra, length=len(body))
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    # --- server-sent events -----------------------------------------------------------------------------

    async def _stream(self, message: dict[str, Any]) -> None:
        self.pending += message.get("body", b"")
        more = message.get("more_body", False)
        out = b""
        while b"\n\n" in self.pending:
            event, self.pending = self.pending.split(b"\n\n", 1)
            out += await self._event(event)
        if not more:
            out += self._release_held() + self.pending
            self.pending = b""
        if self.start is not None:
            await self._send_start(await self._prompt_headers(out))
        if out or not more:
            await self._send({"type": "http.response.body", "body": out, "more_body": more})

    async def _prompt_headers(self, first: bytes) -> list[tuple[bytes, bytes]]:
        try:
            chunk = json.loads(first.split(b"\n\n", 1)[0].removeprefix(b"data: "))
            verdicts = await self.owner.lookup(self.scope, str(chunk["id"]))
            return [(b"x-axisguard-prompt-actions", _actions(verdicts).encode())]
        except Exception:  # no chunk yet (or not JSON): no header, the body says it all
            return []

    async def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: "):
            return self._release_held() + event + b"\n\n"
        payload = event[len(b"data: "):]
        if payload.strip() == b"[DONE]":
            return await self._with_verdicts() + event + b"\n\n"
        try:
            chunk = json.loads(payload)
            choices = chunk.get("choices") or []
            for choice in choices:
                if _text_of(choice):
                    self.text_seen.add(int(choice.get("index", 0)))
            finishing = [c for c in choices if c.get("finish_reason") is not None]
            if finishing:
                by_index = {v.get("index"): v for v in await self.owner.lookup(self.scope, str(chunk["id"]))}
                for choice in finishing:
                    index = int(choice.get("index", 0))
                    apply_to_choice(choice, by_index.get(index), index in self.text_seen)
            if finishing or not choices:  # may be the last chunk: keep it until the next one shows up
                out = self._release_held()
                self.held.append(chunk)
                return out
            return self._release_held() + event + b"\n\n"
        except Exception as exc:
            self.owner.failed(exc)
            return self._release_held() + event + b"\n\n"

    def _release_held(self) -> bytes:
        out = b"".join(b"data: " + _dumps(c) + b"\n\n" for c in self.held)
        self.held = []
        return out

    async def _with_verdicts(self) -> bytes:
        if not self.held:
            return b""
        last = self.held[-1]
        try:
            last["axisguard"] = {"verdicts": await self.owner.lookup(self.scope, str(last["id"]))}
        except Exception as exc:
            self.owner.failed(exc)
        return self._release_held()
