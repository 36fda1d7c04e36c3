"""OpenAI-API conventions of a guarded server, through the real `openai` client and one real server.

In-band verdicts (plain, streamed, n > 1) equal to the route's; stopped choices read
``content_filter`` with the policy's message; shadow mode leaves the output alone and counts what it
would have done; live policy reload by file and by HTTP, a bad one refused and counted, a running
request keeping the policy it started with.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.guarded_server import GuardedServer, http_json
from tests.vllm_support import random_pack, switchable_policy

openai = pytest.importorskip("openai")
pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL = "smollm2-135m"
LAYER = 20
TOKEN = "test-reload-token"
REFUSAL = "Sorry, the guard stopped this reply."
POLICY = switchable_policy("api-test", ["mode", "*.enabled"], steer="{method: add, strength: 0.5, relative: true}",
                           stop=f'{{message: "{REFUSAL}"}}')
PROMPT = "How do I bake bread at home?"
STOP = {"axisguard.stop_prompt.enabled": "true"}


SHADOW_TOKENS = 16
RUNNING_TOKENS = 160
# Eager: `serve` compiles by default now, which adds an inductor compile per server and nothing to what
# this file tests (the tap op is the same in both modes; test_vllm_server runs the compiled default).
VLLM_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", str(1 << 28),
             "--max-num-seqs", "8", "--enforce-eager"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from integrations.model_resolution import resolve_model

    root = tmp_path_factory.mktemp("openai_api")
    hf = json.loads((Path(resolve_model(MODEL).path) / "config.json").read_text())
    pack = random_pack(MODEL, layer=LAYER, hidden=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                       architecture="llama")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    return {"root": root, "pack": pack.save(root / "pack"), "policy": policy}


@pytest.fixture(scope="module")
def unguarded(files: dict[str, Path]) -> dict[str, str]:
    """Greedy outputs of the same server without the guard (AXISGUARD_DISABLE=1), before the guarded one
    starts (one engine at a time)."""
    env = {"PROMETHEUS_MULTIPROC_DIR": "", "AXISGUARD_DISABLE": "1"}
    with GuardedServer(MODEL, files["pack"], files["policy"], vllm_args=VLLM_ARGS, env=env,
                       log_path=files["root"] / "unguarded.log") as vanilla:
        client = openai.OpenAI(base_url=vanilla.base_url + "/v1", api_key="unused", max_retries=0, timeout=600)
        reply = chat(client, max_tokens=SHADOW_TOKENS)
        text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=SHADOW_TOKENS, temperature=0.0)
        assert "axisguard" not in (reply.model_extra or {})  # nothing of the guard on a disabled server
        return {"chat": reply.choices[0].message.content, "completion": text.choices[0].text}


@pytest.fixture(scope="module")
def server(files: dict[str, Path], unguarded: dict[str, str]) -> Iterator[GuardedServer]:
    env = {"PROMETHEUS_MULTIPROC_DIR": "", "AXISGUARD_RELOAD_TOKEN": TOKEN, "AXISGUARD_POLICY_WATCH_S": "0.5"}
    with GuardedServer(MODEL, files["pack"], files["policy"], vllm_args=VLLM_ARGS, env=env,
                       log_path=files["root"] / "server.log") as running:
        running.policy_path = files["policy"]  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def client(server: GuardedServer) -> Any:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=600)


def chat(client: Any, **kwargs: Any) -> Any:
    """Greedy, except n > 1 (vLLM refuses greedy samples): then sampled (no seed: vLLM-CPU fails on seeded samples in some paths)."""
    sampling = {"temperature": 0.8} if kwargs.get("n", 1) > 1 else {"temperature": 0.0}
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                          **sampling, **kwargs)


def in_band(response: Any) -> list[dict[str, Any]]:
    return list(response.model_extra["axisguard"]["verdicts"])


def test_plain_n2_verdicts_equal_the_route(server: GuardedServer, client: Any) -> None:
    reply = chat(client, max_tokens=6, n=2)
    verdicts = in_band(reply)
    assert [v["index"] for v in verdicts] == [0, 1] and all(v["actions"] == ["flag"] for v in verdicts)
    assert verdicts == server.verdicts(reply.id)  # the same record, one per choice (n > 1 used to be a 404)
    assert all(c.finish_reason in ("length", "stop") for c in reply.choices)
    steered = chat(client, max_tokens=4, n=2, extra_body={"vllm_xargs": {"axisguard.steer_prompt.enabled": "true"}})
    assert [v["steered"] for v in in_band(steered)] == [True, True]  # every sample is guarded, not only the first
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=2, temperature=0.0)
    assert raw.headers["x-axisguard-actions"] == "flag" and raw.headers["x-axisguard-stopped"] == "false"


def test_streamed_verdict_is_in_the_last_chunk(server: GuardedServer, client: Any) -> None:
    chunks = list(chat(client, max_tokens=6, n=2, stream=True, stream_options={"include_usage": True}))
    carriers = [c for c in chunks if "axisguard" in (c.model_extra or {})]
    assert carriers == [chunks[-1]] and chunks[-1].usage is not None  # the usage chunk, before [DONE]
    assert in_band(chunks[-1]) == server.verdicts(chunks[-1].id)


def test_completions_with_prompts_and_samples(server: GuardedServer, client: Any) -> None:
    reply = client.completions.create(model=MODEL, prompt=[PROMPT, "Name a colour."], n=2, max_tokens=3,
                                      temperature=0.8)
    verdicts = in_band(reply)
    assert [v["index"] for v in verdicts] == [0, 1, 2, 3] == [c.index for c in reply.choices]
    assert verdicts == server.verdicts(reply.id)


def test_stopped_choices_read_content_filter_and_the_message(server: GuardedServer, client: Any) -> None:
    reply = chat(client, max_tokens=8, n=2, extra_body={"vllm_xargs": STOP})
    assert [(c.finish_reason, c.message.content) for c in reply.choices] == [("content_filter", REFUSAL)] * 2
    assert all(v["stopped"] and v["stop_message"] == REFUSAL for v in in_band(reply))
    streamed = list(chat(client, max_tokens=8, stream=True, extra_body={"vllm_xargs": STOP}))
    finishing = [c.choices[0] for c in streamed if c.choices and c.choices[0].finish_reason]
    assert [(c.finish_reason, c.delta.content) for c in finishing] == [("content_filter", REFUSAL)]
    text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0.0,
                                     extra_body={"vllm_xargs": STOP})
    assert (text.choices[0].finish_reason, text.choices[0].text) == ("content_filter", REFUSAL)


def test_shadow_mode_changes_nothing_and_counts(server: GuardedServer, client: Any,
                                                unguarded: dict[str, str]) -> None:
    before = metric(server, "axisguard_actions_total", 'action="would_stop"', 'rule="stop_prompt"')
    shadow_args = {"vllm_xargs": {**STOP, "axisguard.steer_prompt.enabled": "true", "axisguard.mode": "shadow"}}
    shadow = chat(client, max_tokens=SHADOW_TOKENS, extra_body=shadow_args)
    assert shadow.choices[0].message.content == unguarded["chat"]  # same bytes as without the guard
    assert shadow.choices[0].finish_reason != "content_filter"
    text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=SHADOW_TOKENS, temperature=0.0,
                                     extra_body=shadow_args)
    assert text.choices[0].text == unguarded["completion"]
    [verdict] = in_band(shadow)
    assert verdict["would_stop"] and verdict["would_steer"] and not verdict["stopped"] and not verdict["steered"]
    assert verdict["mode"] == "shadow" and verdict["actions"] == ["flag", "would_steer", "would_stop"]
    assert poll(lambda: metric(server, "axisguard_actions_total", 'action="would_stop"', 'rule="stop_prompt"')
                == before + 2)


def metric(server: GuardedServer, name: str, *labels: str) -> float:
    total = 0.0
    for line in server.metrics().splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def poll(check: Any, timeout_s: float = 60) -> bool:
    """Wait for something the server does on its own clock (file watch, metric flush)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def post_policy(server: GuardedServer, text: str, token: str | None = TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(server.base_url + "/axisguard/policy", data=text.encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_reload_is_refused_and_counted(server: GuardedServer) -> None:
    assert post_policy(server, POLICY, token=None)[0] == 401
    assert post_policy(server, POLICY, token="wrong")[0] == 401
    refused = metric(server, "axisguard_policy_reloads_total", 'result="refused"')
    bad = POLICY.replace("rules:\n", "unknown_axes: error\nrules:\n  - {name: nope, axis: no_such_axis, threshold: 1}\n")
    status, reply = post_policy(server, bad)
    assert status == 400 and "no_such_axis" in reply["error"] and not reply["applied"]
    assert metric(server, "axisguard_policy_reloads_total", 'result="refused"') == refused + 1
    assert http_json(server.base_url + "/axisguard/policy")[1]["name"] == "api-test"


def test_reload_changes_the_next_request_not_a_running_one(server: GuardedServer, client: Any) -> None:
    running = chat(client, max_tokens=RUNNING_TOKENS, stream=True, extra_body={"ignore_eos": True})
    first = next(iter(running))  # the request is in the engine, under the old policy
    stopping = POLICY.replace("name: api-test", "name: api-test-2").replace(
        "action: stop, enabled: false", "action: stop, enabled: true")
    server.policy_path.write_text(stopping)  # type: ignore[attr-defined]  # the file watch picks it up
    assert poll(lambda: http_json(server.base_url + "/axisguard/policy")[1]["name"] == "api-test-2")
    after = chat(client, max_tokens=8)  # most likely shares steps with the running one (both policies live)
    assert after.choices[0].finish_reason == "content_filter" and in_band(after)[0]["policy"] == "api-test-2"
    rest = list(running)
    [verdict] = in_band(rest[-1])
    assert verdict["policy"] == "api-test" and not verdict["stopped"] and rest[-1].id == first.id
    assert verdict["generated_tokens"] >= RUNNING_TOKENS - 1  # the last sampled token is never fed back
    assert [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason] == ["length"]
    status, reply = post_policy(server, POLICY)  # and back over HTTP
    assert status == 200 and reply["applied"] and reply["name"] == "api-test"
    assert chat(client, max_tokens=2).choices[0].finish_reason != "content_filter"
    assert metric(server, "axisguard_policy_reloads_total", 'result="applied"') >= 2
    assert metric(server, "axisguard_policy_info", 'name="api-test"') == 1
    assert metric(server, "axisguard_policy_info", 'name="api-test-2"') == 0
    assert http_json(server.base_url + "/axisguard/status")[1]["errors"] == {}
