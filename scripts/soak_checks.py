"""The soak's checks: what must hold after a load through the guarded server (``check_guarded``),
the Prometheus text parsed into samples, and the with/without-guard comparisons.

Used by ``scripts.soak`` (``make soak``) and by the short version in ``tests/test_reliability_server``.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

import numpy as np

from scripts.soak_load import STREAM_ERROR, Outcome

VERDICT_HISTORY = 256  # the servers' AXISGUARD_VERDICT_HISTORY: small on purpose, the bound is exercised


def metric_samples(text: str, prefix: str = "axisguard_") -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? ([^ ]+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            out.append((match.group(1), labels, float(match.group(3))))
    return out


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


# Requests that do the same work with and without the guard (nothing refused, steered or stopped):
# latency is compared on these; the plan's wall time covers everything.

COMPARABLE = ("none", "flag", "guard_off")


def latency_summary(outcomes: list[Outcome], wall_s: float) -> dict[str, float]:
    done = [o for o in outcomes if o.status == 200 and not o.cancelled]
    lat = sorted(o.latency_s for o in done if o.override in COMPARABLE)
    return {
        "completed": len(done), "wall_s": round(wall_s, 2),
        "plan_requests_per_s": round(len(outcomes) / wall_s, 3) if wall_s else 0.0,
        "comparable_requests": len(lat),
        "p50_s": round(statistics.median(lat), 3) if lat else 0.0,
        "p99_s": round(float(np.percentile(lat, 99)), 3) if lat else 0.0,
    }



def check_guarded(outcomes: list[Outcome], metrics_text: str, status: dict[str, Any], axes: tuple[str, ...],
                  baseline_5xx: int = 0) -> dict[str, Any]:
    """What must hold after a guarded load; returns the counts and a list of failures (empty: passed)."""
    from guard.metrics import ERROR_STAGES
    from guard.policy import ACTIONS

    failures: list[str] = []
    no_answer = [o.index for o in outcomes if o.status == 0 and not o.cancelled]
    five = [o.index for o in outcomes if o.status >= 500]
    if no_answer:
        failures.append(f"{len(no_answer)} requests got no HTTP answer: {no_answer[:10]}")
    if len(five) > baseline_5xx:
        failures.append(f"{len(five)} 5xx answers (baseline without the guard: {baseline_5xx})")
    refused = [o for o in outcomes if o.override == "refused"]
    # vLLM validates a streamed request after the 200 went out: the refusal is the stream's error event.
    if any(not (o.status == 400 or (o.status == STREAM_ERROR and "axisguard" in o.error)) for o in refused):
        failures.append("a refused override was not answered 400 (or, streamed, with an axisguard error event)")
    stray_errors = [o.index for o in outcomes if o.status == STREAM_ERROR and o.override != "refused"]
    if stray_errors:
        failures.append(f"{len(stray_errors)} streams ended in an error event: {stray_errors[:10]}")
    completed = [o for o in outcomes if o.status == 200 and not o.cancelled]
    single = [o for o in completed if o.n == 1]
    wrong = [(o.response_id, len(o.verdicts)) for o in single if len(o.verdicts) != 1]
    if wrong:
        failures.append(f"{len(wrong)} completed responses without exactly one verdict: {wrong[:5]}")
    multi = [o for o in completed if o.n > 1]
    multi_ok = sum(len(o.verdicts) == o.n for o in multi)
    for o in single:
        if not o.verdicts:
            continue
        v = o.verdicts[0]
        # A stopped choice reads finish_reason "content_filter" (in-band verdicts, policy in_band default on).
        expect = {"stop": v["stopped"] and all(r == "content_filter" for r in o.finish_reasons) and not any(o.texts),
                  "steer": v["steered"], "flag": "flag" in v["actions"],
                  "guard_off": not v["actions"], "none": set(v["actions"]) <= {"flag"}}.get(o.override, True)
        if not expect:
            failures.append(f"request {o.index} ({o.override}): verdict {v['actions']} / finish {o.finish_reasons}")
        if v["errors"]:
            failures.append(f"request {o.index}: verdict counts {v['errors']} guard errors")
    samples = metric_samples(metrics_text)
    finished = metric_sum(samples, "axisguard_requests_finished_total")
    engine_done = sum(o.n for o in completed)
    engine_started_max = engine_done + sum(o.n for o in outcomes if o.cancelled)
    if not engine_done <= finished <= engine_started_max:
        failures.append(f"axisguard_requests_finished_total {finished} outside [{engine_done}, {engine_started_max}]")
    stopped_client = sum(o.n for o in completed if o.override == "stop")
    stopped_metric = metric_sum(samples, "axisguard_requests_finished_total", outcome="stopped")
    if not stopped_client <= stopped_metric <= stopped_client + sum(o.n for o in outcomes if o.cancelled):
        failures.append(f"stopped: metric {stopped_metric}, client saw {stopped_client}")
    active = metric_sum(samples, "axisguard_requests_active")
    errors = metric_sum(samples, "axisguard_errors_total")
    if active != 0:
        failures.append(f"axisguard_requests_active is {active} after the load")
    if errors or status.get("errors"):
        failures.append(f"guard errors: metric {errors}, status {status.get('errors')}")
    if status.get("finished_verdicts", 0) > VERDICT_HISTORY:
        failures.append(f"verdict store holds {status['finished_verdicts']} > {VERDICT_HISTORY}")
    allowed = {"axis": set(axes), "action": set(ACTIONS), "stage": set(ERROR_STAGES),
               "outcome": {"clean", "flagged", "steered", "stopped"}, "phase": {"prompt", "generation"},
               "method": {"add", "ablate", "clamp"}}
    # Every label but axisguard_pack_info's (which describes the loaded pack, fixed at start) must come
    # from a closed set; none may carry anything a client sent.
    label_values = {(k, v) for name, labels, _ in samples if name != "axisguard_pack_info" for k, v in labels.items()}
    stray = sorted((k, v) for k, v in label_values if k in allowed and v not in allowed[k])
    model_names = {v for k, v in label_values if k == "model_name"}
    if stray or len(model_names) > 1:
        failures.append(f"unbounded metric labels: {stray[:5]} model_name={sorted(model_names)}")
    return {
        "requests": len(outcomes), "completed": len(completed), "cancelled": sum(o.cancelled for o in outcomes),
        "refused_400": sum(o.status == 400 for o in refused),
        "refused_in_stream": sum(o.status == STREAM_ERROR for o in refused), "no_answer": len(no_answer), "http_5xx": len(five),
        "single_choice_with_one_verdict": len(single) - len(wrong), "single_choice_completed": len(single),
        "n_gt_1_completed": len(multi), "n_gt_1_with_n_verdicts": multi_ok,
        "finished_metric": finished, "guard_errors": errors, "requests_active_after": active,
        "verdict_store": status.get("finished_verdicts"), "verdict_store_limit": VERDICT_HISTORY,
        "metric_series": len(samples), "failures": failures,
    }


def same_outputs(guarded: list[Outcome], vanilla: list[Outcome]) -> dict[str, int]:
    """Greedy single-choice requests the guard did not steer or stop (no override, flag only, guard off):
    how many produced the same text with and without the guard. Informative, not a pass criterion:
    vLLM on CPU does not promise identical results across different batch compositions."""
    by_index = {o.index: o for o in vanilla}
    pairs = [(o, by_index[o.index]) for o in guarded
             if o.n == 1 and o.override in ("none", "flag", "guard_off") and o.status == 200 and not o.cancelled
             and o.index in by_index and by_index[o.index].status == 200]
    return {"compared": len(pairs), "identical": sum(g.texts == v.texts for g, v in pairs)}
