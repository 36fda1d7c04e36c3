"""Per-token overhead of the runtime guard on the transformers path, as ratios to plain `generate`.

Three configurations run interleaved in one process (plain, monitor, monitor+steer), each round in
a rotated order, and the ratio of each round's guarded time to that round's plain time is reported
(median over rounds), so machine noise hits all three alike. Decoding is greedy with a forced
length (``min_new_tokens``) so every configuration generates the same number of tokens.

* monitor: the pack's axes scored every step, rules that never fire (the common case);
* monitor+steer: a rule that fires on every prompt and adds a relative refusal push from the
  first generated token on (every row steered every step: the worst case);
* monitor@3layers: as monitor, with the axes spread over three layers (a pack with per-axis
  layers: three hooks per step instead of one).

The model is a zoo name/folder, or ``random:ARCH:D:LAYERS`` for random weights of a given shape
(overhead does not depend on the weights, and random weights need no download), e.g.
``random:llama:576:30`` is SmolLM2-135M's shape.

    python -m scripts.bench_guard_overhead --model random:llama:576:30 --batch 8 --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from guard.axes import AxisSpec
from guard.model_info import ModelInfo
from guard.pack import AxisPack
from guard.policy import Policy
from guard.runtime import Guard
from guard.scoring import anchor_score_stats
from integrations.hf_extraction import extract_activations
from integrations.hf_guard import guarded_generate
from scripts.bench_workload import AXES, PROMPTS


def load(spec: str, device: str, dtype: torch.dtype):
    if spec.startswith("random:"):
        from integrations.tiny_models import build_tiny_model

        _, arch, hidden, layers = spec.split(":")
        loaded = build_tiny_model(arch, int(hidden), num_layers=int(layers), seed=0)
    else:
        from integrations.hf_loading import load_model

        loaded = load_model(spec)
    loaded.model.to(device=device, dtype=dtype)
    return loaded


def build_pack(loaded, layers: list[int]) -> AxisPack:
    """Random axes; axis k read at ``layers[k % len(layers)]`` (one layer: a format-1 style pack)."""
    acts = extract_activations(loaded, [f"Anchor prompt {i}: {p}" for i, p in enumerate(PROMPTS * 4)], layers,
                               progress=False)
    rng = np.random.default_rng(0)
    k = len(AXES)
    vectors = rng.normal(size=(k, loaded.hidden_size))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    axis_layers = [layers[i % len(layers)] for i in range(k)]
    offset, scale, means = np.zeros(k), np.zeros(k), []
    for i, layer in enumerate(axis_layers):
        anchors = acts[layer].astype(np.float64)
        o, s = anchor_score_stats(anchors, vectors[i:i + 1])
        offset[i], scale[i] = o[0], s[0]
        means.append(anchors.mean(0))
    return AxisPack(ModelInfo(loaded.name, loaded.architecture, loaded.hidden_size, loaded.num_layers, axis_layers[0]),
                    [AxisSpec(a) for a in AXES], vectors.astype(np.float32), means[0].astype(np.float32),
                    offset.astype(np.float32), scale.astype(np.float32), np.full(k, 2.0, np.float32),
                    np.full(k, -1.0, np.float32), "bench", "0" * 64, axis_layers=axis_layers,
                    axis_anchor_mean=np.stack(means).astype(np.float32))


def policies() -> dict[str, Policy]:
    never = [{"name": f"{a}_{s}", "axis": a, "score": s, "threshold": 1e6, "action": "flag"}
             for a in AXES for s in ("prompt", "generation")]
    steer = {"name": "push", "axis": "refusal", "score": "prompt", "threshold": -1e6, "action": "steer",
             "steer": {"method": "add", "strength": 0.05, "relative": True}}
    return {"monitor": Policy.model_validate({"rules": never}),
            "monitor+steer": Policy.model_validate({"rules": [*never, steer]})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama:576:30")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    logging.getLogger("guard.runtime").setLevel(logging.ERROR)  # the bench's thresholds are deliberately extreme
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device != "cpu" else torch.float32)
    loaded = load(args.model, args.device, dtype)
    layer = loaded.num_layers * 3 // 4
    packs = {"one": build_pack(loaded, [layer]),
             "three": build_pack(loaded, [loaded.num_layers // 2, loaded.num_layers * 5 // 8, layer])}
    prompts = (PROMPTS * ((args.batch + len(PROMPTS) - 1) // len(PROMPTS)))[: args.batch]
    gen = {"min_new_tokens": args.new_tokens}

    def run(name: str) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one guarded_generate call."""
        pack = packs["three" if name.endswith("@3layers") else "one"]
        policy = policies()[name.removesuffix("@3layers")] if name != "plain" else None
        guard = None if policy is None else Guard(pack, policy, metrics=None)
        if args.device != "cpu":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = guarded_generate(loaded, prompts, guard, max_new_tokens=args.new_tokens, batch_size=args.batch,
                               generation_kwargs=gen)
        if args.device != "cpu":
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        print(f"{name:>14}: {elapsed:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr, flush=True)
        assert all(len(o.token_ids) == args.new_tokens for o in out), "forced length not honoured"
        if name == "monitor+steer":
            assert all(o.verdict["steered"] for o in out)
        return elapsed, cpu

    names = ["plain", "monitor", "monitor+steer", "monitor@3layers"]
    for name in names:  # warm-up
        run(name)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            w, c = run(name)
            wall[name].append(w)
            cpu[name].append(c)
    tokens = args.batch * args.new_tokens

    def ratios(times: dict[str, list[float]]) -> dict[str, float]:
        return {n: statistics.median(a / b for a, b in zip(times[n], times["plain"], strict=True)) for n in names[1:]}

    result = {
        "model": args.model, "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "dtype": str(dtype).removeprefix("torch."), "batch": args.batch, "new_tokens": args.new_tokens,
        "rounds": args.rounds, "threads": torch.get_num_threads(), "score_layer": layer, "axes": len(AXES),
        "layers_3": packs["three"].score_layers,
        "wall_ms_per_token": {n: 1000 * statistics.median(t) / tokens for n, t in wall.items()},
        "wall_ratio_to_plain": ratios(wall),
        # On a shared CPU the process CPU time (one thread) is the robust measure: other jobs stretch
        # wall time, not the work done.
        "cpu_ms_per_token": {n: 1000 * statistics.median(t) / tokens for n, t in cpu.items()},
        "cpu_ratio_to_plain": ratios(cpu),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
