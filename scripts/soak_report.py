"""The soak's report: the summary table (also put into ``bench/results/README.md`` between markers)
and the plot (latency CDF with and without the guard, RSS during the guarded load)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from scripts.soak_checks import COMPARABLE

README_BEGIN, README_END = "<!-- soak:begin -->", "<!-- soak:end -->"


def markdown_table(report: dict[str, Any]) -> str:
    g, c = report["guarded"], report["guarded"]["checks"]
    v, r = report.get("vanilla", {}), report.get("ratios_guarded_over_vanilla", {})
    rows = [
        ("requests / concurrency", f"{report['requests']} / {report['concurrency']}"),
        ("completed / cancelled by client / refused overrides", f"{c['completed']} / {c['cancelled']} / "
         f"{c['refused_400']} (400) + {c['refused_in_stream']} (streamed: error event)"),
        ("lost (no HTTP answer) / 5xx (guarded, vanilla)", f"{c['no_answer']} / {c['http_5xx']}, "
         f"{v.get('http_5xx', 'n/a')}"),
        ("single-choice responses with exactly one verdict", f"{c['single_choice_with_one_verdict']} of "
         f"{c['single_choice_completed']}"),
        ("n > 1 responses with n verdicts (fixed by the in-band verdicts work, #14)",
         f"{c['n_gt_1_with_n_verdicts']} of {c['n_gt_1_completed']}"),
        ("guard errors / requests_active after / verdict store (limit)",
         f"{c['guard_errors']:.0f} / {c['requests_active_after']:.0f} / {c['verdict_store']} ({c['verdict_store_limit']})"),
        ("engine-core RSS start / middle / end (MiB)", f"{g['rss']['start']['max_process_mib']} / "
         f"{g['rss']['middle_max']['max_process_mib']} / {g['rss']['end']['max_process_mib']}"),
        ("engine-core RSS start / end without the guard (MiB)", f"{v['rss']['start']['max_process_mib']} / "
         f"{v['rss']['end']['max_process_mib']}" if "rss" in v else "n/a"),
        ("throughput: the whole plan, requests/s guarded / vanilla, ratio", f"{g['timing']['plan_requests_per_s']} / "
         f"{v.get('timing', {}).get('plan_requests_per_s', 'n/a')}, {r.get('throughput', 'n/a')}"),
        (f"p50 latency guarded / vanilla (s), ratio ({g['timing']['comparable_requests']} requests doing the "
         "same work in both)", f"{g['timing']['p50_s']} / "
         f"{v.get('timing', {}).get('p50_s', 'n/a')}, {r.get('p50_latency', 'n/a')}"),
        ("p99 latency guarded / vanilla (s), ratio (same requests)", f"{g['timing']['p99_s']} / "
         f"{v.get('timing', {}).get('p99_s', 'n/a')}, {r.get('p99_latency', 'n/a')}"),
        ("greedy outputs identical with / without the guard (not steered or stopped)",
         "{identical} of {compared}".format(**v["same_greedy_outputs"]) if "same_greedy_outputs" in v else "n/a"),
        ("checks", "passed" if report["passed"] else "FAILED: " + "; ".join(c["failures"])),
    ]
    return "\n".join(["| soak | result |", "|---|---|", *(f"| {k} | {x} |" for k, x in rows)]) + "\n"


def update_readme(path: Path, table: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{README_BEGIN}\n{table}{README_END}"
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        text = head + block + rest.split(README_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Soak (`make soak`)\n\n" + block + "\n"
    path.write_text(text)


def plot(report: dict[str, Any], root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in ("guarded", "vanilla"):
        rows = root / f"outcomes-{name}.json"
        if not rows.exists():
            continue
        lat = sorted(o["latency_s"] for o in json.loads(rows.read_text())
                     if o["status"] == 200 and not o["cancelled"] and o["override"] in COMPARABLE)
        left.plot(lat, np.linspace(0, 1, len(lat)), label=name)
    left.set_xlabel("request latency (s)")
    left.set_ylabel("fraction of completed requests")
    left.legend()
    left.set_title("latency CDF (requests doing the same work)")
    samples = report["guarded"]["rss"]["samples_mib"]
    right.plot(np.arange(len(samples)) * 2.0, samples)
    right.set_xlabel("seconds into the guarded load")
    right.set_ylabel("engine-core RSS (MiB)")
    right.set_title("RSS during the guarded load")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
