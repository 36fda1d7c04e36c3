"""Reliability through the real server (`axisguard serve`, SmolLM2 on CPU, the OpenAI client): a short
soak, odd and hostile inputs, the verdict route under concurrency, the API key on the guard's routes,
and injected faults (``AXISGUARD_TEST_FAULT``) under fail-closed. The full soak is `make soak`."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.guarded_server import GuardedServer, http_json
from scripts.soak import AXES, MODEL, PROMPTS, build_artifacts, start_server
from scripts.soak_checks import VERDICT_HISTORY, check_guarded, metric_samples, metric_sum
from scripts.soak_load import build_plan, run_load

pytest.importorskip("vllm")
pytest.importorskip("openai")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

KEY = "rel-test-key"
MAX_MODEL_LEN = 512  # scripts.soak.VLLM_ARGS


# Eager: `serve` compiles by default now; an inductor compile per server adds minutes on 2 cores and
# nothing to what this file tests (the tap op is the same in both modes; test_vllm_server is compiled).
EAGER = ("--enforce-eager",)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reliability")
    return {"root": root, **build_artifacts(root)}


@pytest.fixture(scope="module")
def server(artifacts: dict[str, Path]) -> Iterator[GuardedServer]:
    running = start_server(artifacts, artifacts["root"], "guarded", extra_args=EAGER)
    running.api_key = KEY
    running.command += ["--api-key", KEY]
    with running:
        yield running


def status(server: GuardedServer) -> dict[str, Any]:
    code, body = server.get("/axisguard/status")
    assert code == 200, body
    return body


def wait_idle(server: GuardedServer, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        current = status(server)
        if current["active_requests"] == 0 or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


# --- access -----------------------------------------------------------------------------------------------


def test_guard_routes_refuse_calls_without_the_api_key(server: GuardedServer) -> None:
    for path in ("/axisguard/status", "/axisguard/requests/chatcmpl-x"):
        code, body = http_json(server.base_url + path)
        assert code == 401, (path, body)
        assert http_json(server.base_url + path, api_key="wrong")[0] == 401
    assert http_json(server.base_url + "/v1/models")[0] == 401  # vLLM's own routes, for comparison
    assert server.get("/axisguard/status")[0] == 200
    assert server.get("/axisguard/requests/chatcmpl-x")[0] == 404


# --- a short soak --------------------------------------------------------------------------------------


def test_short_soak(server: GuardedServer) -> None:
    plan = build_plan(PROMPTS, 48, seed=1)
    outcomes, _ = run_load(server.base_url, MODEL, plan, concurrency=16, api_key=KEY, deadline_s=600)
    assert len(outcomes) == len(plan)
    after = wait_idle(server)
    checks = check_guarded(outcomes, server.metrics(), after, AXES)
    assert checks["failures"] == [], json.dumps(checks, indent=1)
    assert checks["completed"] > 0 and checks["single_choice_with_one_verdict"] == checks["single_choice_completed"]
    assert after["finished_verdicts"] <= VERDICT_HISTORY


# --- odd and hostile inputs -------------------------------------------------------------------------------


def completion(server: GuardedServer, prompt: Any, max_tokens: int = 4, **extra: Any) -> tuple[int, Any]:
    return server.post("/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                                           "temperature": 0.0, **extra})


def test_edge_prompts_get_answers_and_verdicts(server: GuardedServer) -> None:
    from transformers import AutoTokenizer

    from integrations.model_resolution import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model(MODEL).path))
    specials = [tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens][:3]
    odd = "\u202eevil\u202c \u200b\u200d e\u0301\u0301\u0301 \U0001f600\U0001f9ea 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \ufeff\x00 ＡＢＣ"
    answered = {
        "only special tokens": completion(server, specials * 4),
        "odd unicode": completion(server, odd),
        "odd unicode chat": server.post("/v1/chat/completions", {"model": MODEL, "max_tokens": 4,
                                                                 "messages": [{"role": "user", "content": odd}]}),
        "one token under the limit": completion(server, [specials[0]] * (MAX_MODEL_LEN - 1), max_tokens=1),
    }
    for name, (code, body) in answered.items():
        assert code == 200, (name, body)
        [verdict] = server.get(f"/axisguard/requests/{body['id']}")[1]["verdicts"]
        assert verdict["errors"] == 0 and verdict["prompt_tokens"] > 0, name
    refused = {
        "empty prompt": completion(server, ""),
        "exactly max-model-len tokens": completion(server, [specials[0]] * MAX_MODEL_LEN, max_tokens=1),
        "over max-model-len": completion(server, [specials[0]] * (MAX_MODEL_LEN + 5)),
    }
    for name, (code, body) in refused.items():
        assert code == 400, (name, code, body)  # vLLM's own answer; never a 5xx, never a dead server
    raw = b'{"model": "' + MODEL.encode() + b'", "prompt": "\xff\xfe bad", "max_tokens": 2}'
    assert raw_post(server, "/v1/completions", raw)[0] in (400, 422)
    assert wait_idle(server)["errors"] == {}


def raw_post(server: GuardedServer, path: str, body: bytes, read: bool = True) -> tuple[int, bytes]:
    """POST raw bytes over a plain socket (no client library re-encodes them); ``read=False``: hang up
    right after sending (a client that goes away before the first step)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        sock.sendall(head.encode() + body)
        if not read:
            return 0, b""
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_requests_aborted_before_their_first_step(server: GuardedServer) -> None:
    body = json.dumps({"model": MODEL, "prompt": "Tell me a long story about a lighthouse.", "max_tokens": 64,
                       "stream": True}).encode()
    for _ in range(8):
        raw_post(server, "/v1/completions", body, read=False)
    after = wait_idle(server)
    assert after["active_requests"] == 0 and after["consumer_active_requests"] == 0 and after["errors"] == {}
    assert metric_sum(metric_samples(server.metrics()), "axisguard_requests_active") == 0
    assert completion(server, "Still serving?")[0] == 200


# --- the verdict route under concurrency ------------------------------------------------------------------


def test_verdict_route_under_concurrency(server: GuardedServer) -> None:
    import openai

    async def stream_and_ask(client: Any, i: int) -> tuple[int, int]:
        stream = await client.completions.create(model=MODEL, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=48,
                                                 temperature=0.0, stream=True)
        running = None
        async for chunk in stream:
            if running is None:  # the request is in flight: its verdict must answer now
                quoted = urllib.parse.quote(chunk.id, safe="")
                running = (await asyncio.to_thread(server.get, f"/axisguard/requests/{quoted}"))[0]
        unknown = await asyncio.to_thread(server.get, f"/axisguard/requests/cmpl-unknown-{i}")
        assert unknown[0] == 404 and "hint" in unknown[1]
        return running or 0, unknown[0]

    async def main() -> list[tuple[int, int]]:
        client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)
        try:
            return await asyncio.gather(*(stream_and_ask(client, i) for i in range(12)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert [r for r, _ in results] == [200] * 12


# --- metric labels stay bounded whatever clients send -----------------------------------------------------


def test_crafted_ids_and_overrides_create_no_series(server: GuardedServer) -> None:
    before = {(name, tuple(sorted(labels.items()))) for name, labels, _ in metric_samples(server.metrics())}
    crafted = ['x"} axisguard_evil 1', "a" * 500, "é\u202e", "{{model}}"]
    for text in crafted:
        server.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "request_id": text})
        server.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2,
                                        "vllm_xargs": {f"axisguard.{text}.enabled": "true"}})
    wait_idle(server)
    samples = metric_samples(server.metrics())
    after = {(name, tuple(sorted(labels.items()))) for name, labels, _ in samples}
    new = {labels for _, labels in after - before}
    assert all(not any(c in v for c in crafted for _, v in labels) for labels in new), new
    values = {v for _, labels, _ in samples for v in labels.values()}
    assert not any(c in v for c in crafted for v in values)


# --- injected faults, fail-closed, under load -------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_server(artifacts: dict[str, Path], server: GuardedServer) -> Iterator[GuardedServer]:
    """Starts after the module's other server has stopped (one engine at a time on this machine)."""
    server.stop()
    policy = artifacts["root"] / "fail-closed.yaml"
    policy.write_text(artifacts["policy"].read_text().replace("on_error: fail_open", "on_error: fail_closed"))
    running = start_server({**artifacts, "policy": policy}, artifacts["root"], "faulty",
                           env={"AXISGUARD_TEST_FAULT": "raise:7"}, extra_args=EAGER)
    with running:
        yield running


def test_fail_closed_stops_the_affected_requests_and_serves_the_others(faulty_server: GuardedServer) -> None:
    sequential = [completion(faulty_server, PROMPTS[i], max_tokens=3) for i in range(8)]
    plan = [p for p in build_plan(PROMPTS, 40, seed=2) if p.override in ("none", "flag")]
    outcomes, _ = run_load(faulty_server.base_url, MODEL, plan, concurrency=16, deadline_s=600)
    verdicts = []
    for code, body in sequential:
        assert code == 200, body
        [verdict] = faulty_server.get(f"/axisguard/requests/{body['id']}")[1]["verdicts"]
        verdicts.append((verdict, body["choices"][0]["finish_reason"]))
    assert {o.status for o in outcomes} == {200} and all(len(o.verdicts) == 1 for o in outcomes if o.n == 1)
    verdicts += [(o.verdicts[0], o.finish_reasons[0]) for o in outcomes if o.n == 1]
    for verdict, finish in verdicts:
        assert verdict["stopped"] == (verdict["errors"] > 0), verdict  # stopped exactly when affected
        if verdict["errors"]:
            assert "stop" in verdict["actions"] and finish == "content_filter", (verdict, finish)  # in-band (#14)
    affected = sum(v["errors"] > 0 for v, _ in verdicts)
    assert 0 < affected < len(verdicts), "some requests hit a fault, others did not"
    after = wait_idle(faulty_server)
    assert after["active_requests"] == 0
    samples = metric_samples(faulty_server.metrics())
    assert metric_sum(samples, "axisguard_errors_total") >= 1  # counted per faulty step, not per request
    log = (Path(faulty_server.log_path).read_text(errors="replace") if faulty_server.log_path else "")
    assert log.count("InjectedFault error in stage") == 1, "logged once per kind, counted always"
    assert completion(faulty_server, "Are you still there?")[0] == 200
