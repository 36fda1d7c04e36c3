"""The soak's client side: a mixed, bounded load through the OpenAI client, one record per request.

``build_plan`` draws a reproducible list of requests (chat or completions, streamed or not, ``n`` of
1 or 2, various ``max_tokens``, per-request overrides that enable a flag / steer / stop rule or are
refused by the policy, ~10 % of streams cancelled by the client after the first chunks).
``run_load`` sends them at a fixed concurrency and returns what the client saw, including the
guard's verdicts for each completed response, fetched right after it completed (so the test does not
depend on the bounded verdict store still holding old ids).
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

from scripts.guarded_server import http_json

# Per-request overrides the soak policy allows ("*.enabled"); a refused one changes a rule's action.
OVERRIDES: dict[str, dict[str, str] | None] = {
    "none": None,
    "flag": {"axisguard.flag_override.enabled": "true"},
    "steer": {"axisguard.steer_override.enabled": "true"},
    "stop": {"axisguard.stop_override.enabled": "true"},
    "refused": {"axisguard.stop_override.action": "steer"},
    "guard_off": {"axisguard.enabled": "false"},
}
STREAM_ERROR = -1  # Outcome.status of a stream that answered with an error event instead of tokens
OVERRIDE_WEIGHTS = {"none": 0.45, "flag": 0.12, "steer": 0.12, "stop": 0.12, "refused": 0.09, "guard_off": 0.1}


@dataclass
class Planned:
    index: int
    endpoint: str  # "chat" | "completions"
    prompt: str
    stream: bool
    n: int
    max_tokens: int
    override: str
    cancel_after_chunks: int = 0  # > 0: a streamed request the client abandons after that many chunks


@dataclass
class Outcome:
    index: int
    endpoint: str
    stream: bool
    n: int
    override: str
    status: int = 0  # HTTP status (200, 400, ...); 0: no HTTP answer at all
    error: str = ""
    cancelled: bool = False
    response_id: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    latency_s: float = 0.0
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    verdict_status: int = 0


def build_plan(prompts: list[str], count: int, seed: int = 0, cancel_fraction: float = 0.1) -> list[Planned]:
    rng = random.Random(seed)
    names, weights = list(OVERRIDE_WEIGHTS), list(OVERRIDE_WEIGHTS.values())
    plan = []
    for i in range(count):
        stream = rng.random() < 0.5
        cancel = stream and rng.random() < 2 * cancel_fraction  # half the requests stream
        plan.append(Planned(
            index=i, endpoint="chat" if rng.random() < 0.6 else "completions", prompt=rng.choice(prompts),
            stream=stream, n=2 if rng.random() < 0.12 else 1, max_tokens=rng.choice([4, 8, 16, 24]),
            override=rng.choices(names, weights)[0], cancel_after_chunks=2 if cancel else 0,
        ))
    return plan


async def _one(client: Any, model: str, base_url: str, req: Planned, fetch_verdicts: bool,
               api_key: str | None) -> Outcome:
    import openai

    out = Outcome(req.index, req.endpoint, req.stream, req.n, req.override)
    body: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens, "n": req.n, "stream": req.stream,
                            "temperature": 0.0 if req.n == 1 else 0.8, "seed": req.index}
    xargs = OVERRIDES[req.override]
    extra = {"vllm_xargs": xargs} if xargs else None
    started = time.monotonic()
    try:
        if req.endpoint == "chat":
            call = client.chat.completions.create(messages=[{"role": "user", "content": req.prompt}],
                                                  extra_body=extra, **body)
        else:
            call = client.completions.create(prompt=req.prompt, extra_body=extra, **body)
        response = await call
        texts = [""] * req.n
        reasons: list[str | None] = [None] * req.n
        if req.stream:
            chunks = 0
            async for chunk in response:
                out.response_id = chunk.id
                chunks += 1
                for choice in chunk.choices:
                    piece = choice.delta.content if req.endpoint == "chat" else choice.text
                    texts[choice.index] += piece or ""
                    reasons[choice.index] = choice.finish_reason or reasons[choice.index]
                if req.cancel_after_chunks and chunks >= req.cancel_after_chunks:
                    out.cancelled = True
                    await response.close()  # the client walks away mid-stream
                    break
        else:
            out.response_id = response.id
            for choice in response.choices:
                texts[choice.index] = choice.message.content or "" if req.endpoint == "chat" else choice.text
                reasons[choice.index] = choice.finish_reason
            out.completion_tokens = response.usage.completion_tokens if response.usage else 0
        out.status = 200
        out.texts, out.finish_reasons = texts, [r or "" for r in reasons]
    except openai.APIStatusError as exc:
        out.status, out.error = exc.status_code, str(exc)[:300]
    except openai.APIConnectionError as exc:
        out.error = f"connection: {exc}"[:300]
    except openai.APIError as exc:  # an error event inside a stream (HTTP 200 already sent)
        out.status, out.error = STREAM_ERROR, str(exc)[:300]
    out.latency_s = time.monotonic() - started
    if fetch_verdicts and out.status == 200 and not out.cancelled and out.response_id:
        path = "/axisguard/requests/" + urllib.parse.quote(out.response_id, safe="")
        out.verdict_status, reply = await asyncio.to_thread(http_json, base_url + path, None, 60, api_key)
        out.verdicts = list(reply.get("verdicts", [])) if out.verdict_status == 200 else []
    return out


async def _run(base_url: str, model: str, plan: list[Planned], concurrency: int, fetch_verdicts: bool,
               deadline_s: float, on_progress: Any, api_key: str | None) -> list[Outcome]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=api_key or "none", max_retries=0, timeout=300)
    queue: asyncio.Queue[Planned] = asyncio.Queue()
    for req in plan:
        queue.put_nowait(req)
    results: list[Outcome] = []
    stop_at = time.monotonic() + deadline_s

    async def worker() -> None:
        while not queue.empty() and time.monotonic() < stop_at:
            req = queue.get_nowait()
            results.append(await _one(client, model, base_url, req, fetch_verdicts, api_key))
            if on_progress:
                on_progress(len(results), len(plan))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return sorted(results, key=lambda o: o.index)


def run_load(base_url: str, model: str, plan: list[Planned], concurrency: int, fetch_verdicts: bool = True,
             deadline_s: float = 1800, on_progress: Any = None,
             api_key: str | None = None) -> tuple[list[Outcome], float]:
    """Send ``plan`` at ``concurrency``; stops taking new requests after ``deadline_s``. Returns the
    outcomes (sorted by plan index) and the wall time."""
    started = time.monotonic()
    results = asyncio.run(_run(base_url, model, plan, concurrency, fetch_verdicts, deadline_s, on_progress, api_key))
    return results, time.monotonic() - started


def as_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [asdict(o) for o in outcomes]
