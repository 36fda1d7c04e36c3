"""Shared helpers for the vLLM integration tests: tiny model folders, random packs, in-process engines."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guard.axes import AxisSpec
from guard.model_info import ModelInfo
from guard.pack import AxisPack
from guard.scoring import anchor_score_stats
from integrations.environment import environment

# Small enough to start in seconds on 2 CPU cores; head_dim 32 (vLLM's CPU attention needs >= 32).
TINY_ARCH, TINY_HIDDEN, TINY_LAYERS = "llama", 64, 4
# Chunked prefill in 16-token chunks: prompts longer than that span several steps and share steps
# with other requests' decodes. Eager by default: inductor compiles take ~30 s per engine on 2 CPU
# cores, and the guard's tap op is the same in both modes; test_vllm_compiled runs it compiled.
ENGINE_KWARGS: dict[str, Any] = dict(
    max_model_len=256, dtype="float32", max_num_batched_tokens=16, max_num_seqs=8,
    kv_cache_memory_bytes=64 << 20, seed=0, enforce_eager=True,
)


def build_tiny_folder(folder: Path, seed: int = 0) -> tuple[Path, str]:
    """A saved tiny Llama (real random weights) and its zoo-style name."""
    from integrations.tiny_models import build_tiny_model

    loaded = build_tiny_model(TINY_ARCH, TINY_HIDDEN, num_layers=TINY_LAYERS, seed=seed, save_to=folder)
    return folder, loaded.name


def random_pack(name: str, layer: int, axes: Sequence[str] = ("refusal", "toxicity"), seed: int = 0,
                hidden: int = TINY_HIDDEN, num_layers: int = TINY_LAYERS, architecture: str = TINY_ARCH,
                anchor_acts: np.ndarray | None = None) -> AxisPack:
    """A pack with random unit axes; z statistics from ``anchor_acts`` (default: random activations)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(axes), hidden))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    anchors = anchor_acts if anchor_acts is not None else rng.normal(size=(64, hidden))
    offset, scale = anchor_score_stats(anchors, vectors)
    return AxisPack(
        model=ModelInfo(name=name, architecture=architecture, hidden_size=hidden, num_layers=num_layers, layer=layer),
        axes=[AxisSpec(a) for a in axes], vectors=vectors.astype(np.float32),
        anchor_mean=anchors.mean(axis=0).astype(np.float32),
        score_offset=offset.astype(np.float32), score_scale=scale.astype(np.float32),
        pos_mean_z=np.full(len(axes), 2.0, np.float32), neg_mean_z=np.full(len(axes), -1.0, np.float32),
        method="random-test-pack", anchors_sha256="test",
    )


ALWAYS = -1.0e6  # a threshold every score crosses: the rule fires at its first judgement


def switchable_policy(name: str, allow_overrides: Sequence[str], steer: str, stop: str = "", extra_rules: str = "") -> str:
    """The policy the vLLM tests share: ``flag_all`` fires on every request; ``steer_prompt`` (``steer``:
    its steering block) and ``stop_prompt`` (``stop``: an optional stop block) fire on every request
    that enables them. ``extra_rules``: more rule lines, appended."""
    allowed = ", ".join(f'"{a}"' for a in allow_overrides)
    stop_block = f", stop: {stop}" if stop else ""
    return (f"name: {name}\nallow_overrides: [{allowed}]\nrules:\n"
            f"  - {{name: flag_all, axis: toxicity, threshold: {ALWAYS}, action: flag}}\n"
            f"  - {{name: steer_prompt, axis: refusal, threshold: {ALWAYS}, action: steer, enabled: false, steer: {steer}}}\n"
            f"  - {{name: stop_prompt, axis: refusal, threshold: {ALWAYS}, action: stop, enabled: false{stop_block}}}\n"
            + extra_rules)


def tiny_guarded_files(root: Path, policy_text: str, layer: int) -> dict[str, Path]:
    """Under ``root``: a tiny model folder, a random pack for it scored at ``layer``, and the policy file."""
    folder, name = build_tiny_folder(root / "model")
    policy = root / "policy.yaml"
    policy.write_text(policy_text)
    return {"folder": folder, "pack": random_pack(name, layer=layer).save(root / "pack"), "policy": policy}


_AXISGUARD_ENV = ("AXISGUARD_PACK", "AXISGUARD_POLICY", "AXISGUARD_CONFIG", "AXISGUARD_DISABLE",
                  "AXISGUARD_CAPTURE_LAYERS", "AXISGUARD_CAPTURE_POOLING", "AXISGUARD_ALLOW_NAME_MISMATCH")


@contextlib.contextmanager
def inprocess_engine(folder: Path, env: Mapping[str, str], **kwargs: Any) -> Iterator[Any]:
    """A ``vllm.LLM`` whose engine and worker run in this process, configured by ``env``."""
    from vllm import LLM

    from integrations.vllm.plugin import install

    full_env: dict[str, str | None] = {k: None for k in _AXISGUARD_ENV}
    full_env.update(env)
    full_env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    with environment(full_env):
        install()  # the plugin may have been loaded unconfigured earlier in this process
        llm = LLM(model=str(folder), tokenizer=str(folder), **{**ENGINE_KWARGS, **kwargs})
        try:
            yield llm
        finally:
            shutdown(llm)


def shutdown(llm: Any) -> None:
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


def worker_of(llm: Any) -> Any:
    return llm.llm_engine.model_executor.driver_worker.worker


def session_of(llm: Any) -> Any:
    from integrations.vllm.worker import session_of as worker_session

    return worker_session(worker_of(llm))


def flush_finished(llm: Any) -> None:
    """Run one more engine step so the worker learns which requests finished (vLLM tells it lazily)."""
    llm.llm_engine.step()


def hf_hidden_states(folder: Path, token_ids: Sequence[int], layer: int) -> torch.Tensor:
    """transformers' residual stream after block ``layer`` for one sequence: [n, d] (layer < last)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        out = model(torch.tensor([list(token_ids)]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0]
