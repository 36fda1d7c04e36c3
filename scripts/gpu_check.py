"""Self-contained check (torch only, no vLLM) of the guard's CUDA-graph design: piecewise graphs, tap between.

axisguard's design (a) (``integrations/vllm/tap_op.py``): the tap op is one of vLLM's graph splitting
ops, so the model runs as captured CUDA graphs for the pieces between taps, and the tap (scoring,
policy, steering) runs eagerly between two replays, reading and writing the very buffer the next
piece's graph reads. This script builds that on a small decoder stack (pre-norm residual MLP
blocks), captures one CUDA graph per piece, and on every replay changes the inputs, the row mask,
the thresholds and the steering strengths; it asserts that the scores the tap saw and the final
hidden states equal an eager run of the same stack with the same tap, on every replay.

It also shows why FULL graphs are switched to PIECEWISE: a single graph captured over the whole
forward (tap included) replays the tap's device work with the decisions of capture time, so a changed
mask/threshold/strength is ignored; the script asserts that the full graph then disagrees with eager.

Without a GPU it falls back to running the same pieces on CPU without CUDA graphs (``--compile``
compiles each piece with torch.compile/inductor instead) and says so: a CPU run checks the harness
and the tap logic, not CUDA graphs.

    python scripts/gpu_check.py [--replays 20] [--out bench/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

HIDDEN, LAYERS, ROWS, AXES = 256, 8, 64, 4
TAPPED = (2, 5)  # taps after these blocks; the pieces are the blocks between them


@dataclass
class Policy:
    """What the runner writes before each step (per-row enable mask, per-axis thresholds and strengths)."""

    row_mask: torch.Tensor  # [ROWS] bool
    thresholds: torch.Tensor  # [AXES]
    strengths: torch.Tensor  # [AXES]


class Stack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(HIDDEN), torch.nn.Linear(HIDDEN, 4 * HIDDEN), torch.nn.GELU(),
                                torch.nn.Linear(4 * HIDDEN, HIDDEN)) for _ in range(LAYERS))

    def run_blocks(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            h = h + block(h)
        return h


class Tap:
    """Score every row on the axes, steer the rows whose policy fires (in place), keep the scores."""

    def __init__(self, axes: torch.Tensor) -> None:
        self.axes = axes  # [AXES, HIDDEN] unit rows
        self.policy: Policy | None = None
        self.seen: list[torch.Tensor] = []

    def __call__(self, h: torch.Tensor) -> None:
        assert self.policy is not None
        z = h @ self.axes.T  # [ROWS, AXES]
        self.seen.append(z.detach().clone())
        fire = self.policy.row_mask[:, None] & (z > self.policy.thresholds[None, :])
        h.add_((fire.to(h.dtype) * self.policy.strengths[None, :]) @ self.axes)


def pieces_of() -> list[tuple[int, int]]:
    bounds = [0, *(t + 1 for t in TAPPED), LAYERS]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def eager_forward(stack: Stack, tap: Tap, x: torch.Tensor) -> torch.Tensor:
    h = x.clone()
    for i, (start, stop) in enumerate(pieces_of()):
        h = stack.run_blocks(h, start, stop)
        if i < len(TAPPED):
            tap(h)
    return h


class Piecewise:
    """One callable per piece: a replayed CUDA graph (GPU), or an eager / compiled function (CPU)."""

    def __init__(self, stack: Stack, tap: Tap, device: torch.device, compile_cpu: bool) -> None:
        self.tap = tap
        self.static_in = torch.zeros(ROWS, HIDDEN, device=device)
        self.runs: list[Callable[[], None]] = []
        self.outs: list[torch.Tensor] = []
        source = self.static_in
        for start, stop in pieces_of():
            fn: Callable[[torch.Tensor], torch.Tensor] = functools.partial(stack.run_blocks, start=start, stop=stop)
            if device.type == "cuda":
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        fn(source)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = fn(source)  # reads ``source`` (the previous piece's output buffer) at replay
                self.runs.append(graph.replay)
            else:
                fn = torch.compile(fn) if compile_cpu else fn
                out = torch.zeros(ROWS, HIDDEN, device=device)
                self.runs.append(lambda fn=fn, src=source, dst=out: dst.copy_(fn(src)))
            self.outs.append(out)
            source = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.static_in.copy_(x)
        for i, run in enumerate(self.runs):
            run()
            if i < len(TAPPED):
                self.tap(self.outs[i])  # eager, between two graphs, in place on the next graph's input
        return self.outs[-1].clone()


def random_policy(gen: torch.Generator, device: torch.device) -> Policy:
    return Policy(row_mask=(torch.rand(ROWS, generator=gen) < 0.5).to(device),
                  thresholds=(torch.randn(AXES, generator=gen) * 0.5).to(device),
                  strengths=(torch.randn(AXES, generator=gen) * 2.0).to(device))


def full_graph_ignores_policy(stack: Stack, axes: torch.Tensor, device: torch.device, gen: torch.Generator) -> bool:
    """Capture the whole forward, tap included, as ONE graph; change the policy; does replay still match eager?"""
    tap = Tap(axes)
    tap.policy = random_policy(gen, device)
    static_in = torch.randn(ROWS, HIDDEN, generator=gen).to(device)
    eager_forward(stack, tap, static_in)  # warm-up (library handles) before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = eager_forward(stack, tap, static_in)
    # The tap's mask/threshold/strength tensors were read during capture; new policy objects are not.
    tap.policy = Policy(row_mask=torch.ones(ROWS, dtype=torch.bool, device=device),
                        thresholds=torch.full((AXES,), -1e9, device=device),
                        strengths=torch.full((AXES,), 5.0, device=device))
    graph.replay()
    expected = eager_forward(stack, tap, static_in)
    return not torch.allclose(static_out, expected, atol=1e-4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="CPU fallback: torch.compile each piece")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        print("gpu_check: no CUDA device: falling back to CPU pieces WITHOUT CUDA graphs"
              f" ({'torch.compile' if args.compile else 'eager'} pieces); this does not test CUDA graphs.")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    stack = Stack().to(device).eval()
    axes = torch.nn.functional.normalize(torch.randn(AXES, HIDDEN, generator=gen), dim=1).to(device)
    graph_tap, eager_tap = Tap(axes), Tap(axes)
    tolerance = 1e-5 if device.type == "cuda" else 1e-4
    worst_score, worst_out, steered_rows = 0.0, 0.0, 0
    with torch.no_grad():
        piecewise = Piecewise(stack, graph_tap, device, args.compile)
        for _ in range(args.replays):
            x = torch.randn(ROWS, HIDDEN, generator=gen).to(device)
            policy = random_policy(gen, device)
            graph_tap.policy = eager_tap.policy = policy
            graph_tap.seen.clear()
            eager_tap.seen.clear()
            got = piecewise.forward(x)
            want = eager_forward(stack, eager_tap, x)
            for g, w in zip(graph_tap.seen, eager_tap.seen, strict=True):
                assert torch.allclose(g, w, atol=tolerance), "scores differ from eager"
                worst_score = max(worst_score, float((g - w).abs().max()))
                steered_rows += int((policy.row_mask[:, None] & (w > policy.thresholds)).any(1).sum())
            assert torch.allclose(got, want, atol=tolerance), "steered output differs from eager"
            worst_out = max(worst_out, float((got - want).abs().max()))
        full_graph_wrong = full_graph_ignores_policy(stack, axes, device, gen) if device.type == "cuda" else None
    if full_graph_wrong is not None:
        assert full_graph_wrong, "a full graph was expected to ignore the changed policy"
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (no CUDA graphs: fallback)",
        "torch": torch.__version__, "cuda_graphs": device.type == "cuda", "pieces": len(pieces_of()),
        "taps": len(TAPPED), "replays": args.replays, "rows": ROWS, "hidden": HIDDEN,
        "steered_rows_total": steered_rows, "max_abs_score_diff": worst_score, "max_abs_output_diff": worst_out,
        "tolerance": tolerance, "full_graph_ignores_changed_policy": full_graph_wrong,
        "seconds": round(time.time() - started, 2), "ok": True,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
