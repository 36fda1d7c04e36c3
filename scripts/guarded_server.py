"""A guarded server as a context manager, plus the few HTTP calls a client of it makes (stdlib only).

    with GuardedServer("smollm2-135m", pack="out/pack") as server:
        reply = server.chat("How do I bake bread?")
        server.verdicts(reply["id"])          # the guard's verdict for that response
        server.metrics()                      # vLLM's /metrics text, axisguard_ series included

The server is ``axisguard serve`` in a child process on 127.0.0.1 (its output goes to ``log_path``);
leaving the block stops it (SIGTERM, then SIGKILL of its own process group after a grace period).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from guard.errors import AxisguardError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 600,
              api_key: str | None = None) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON), with ``api_key`` as a bearer token if given; returns the status
    and the decoded JSON (or text)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


class GuardedServer:
    """``axisguard serve MODEL --pack PACK`` for the duration of a ``with`` block."""

    def __init__(self, model: str, pack: str | Path, policy: str | Path | None = None, port: int | None = None,
                 vllm_args: Sequence[str] = (), log_path: str | Path | None = None,
                 startup_timeout_s: float = 900, env: dict[str, str] | None = None,
                 api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key  # passed to vLLM as --api-key; every call below sends it
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "axisguard_cli.main", "serve", "--model", model, "--pack", str(pack),
                        *(["--policy", str(policy)] if policy else []),
                        "--host", "127.0.0.1", "--port", str(self.port), *vllm_args,
                        *(["--api-key", api_key] if api_key else [])]
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def __enter__(self) -> GuardedServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # Own session: the server and the engine processes it spawns form one group we can stop.
        self._proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                      start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""
                self.stop()
                raise AxisguardError(f"the guarded server exited with code {code}\n{tail}",
                                     "see the server log for the reason")
            try:
                if http_json(self.base_url + "/health", timeout=5)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AxisguardError(f"the guarded server was not healthy after {self.startup_timeout_s:.0f} s",
                                     "see the server log; a loaded machine may need a longer timeout")
            time.sleep(2)

    def stop(self, grace_s: float = 60) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None

    # --- calls ------------------------------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return http_json(self.base_url + path, body, api_key=self.api_key)

    def get(self, path: str) -> tuple[int, Any]:
        return http_json(self.base_url + path, api_key=self.api_key)

    def chat(self, text: str, max_tokens: int = 64, xargs: dict[str, Any] | None = None,
             temperature: float = 0.0) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": text}],
                                "max_tokens": max_tokens, "temperature": temperature}
        if xargs:
            body["vllm_xargs"] = xargs
        status, reply = self.post("/v1/chat/completions", body)
        if status != 200:
            raise AxisguardError(f"chat completion failed with HTTP {status}: {reply}")
        return reply

    def verdicts(self, response_id: str) -> list[dict[str, Any]]:
        """The guard's verdicts for a response id ([] if the server has none)."""
        status, reply = self.get(f"/axisguard/requests/{response_id}")
        return list(reply["verdicts"]) if status == 200 else []

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        if status != 200:
            raise AxisguardError(f"/metrics answered HTTP {status}")
        return str(text)
