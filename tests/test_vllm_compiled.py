"""The guard on vLLM's default engine: torch.compile'd model (inductor on CPU) and prefix caching on.

Three engines, one after the other, on the same tiny Llama: an eager guarded engine (the reference),
a vanilla compiled engine (no axisguard) that fills a private compile cache, and the guarded
compiled engine shared by the tests. Tolerance for scores, compiled vs eager: 1e-3 in z units
(inductor reorders float32 reductions; observed differences are ~1e-5).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vllm_support import (
    flush_finished,
    inprocess_engine,
    session_of,
    switchable_policy,
    tiny_guarded_files,
)

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

SCORE_LAYER = 2
POLICY = switchable_policy("compiled-test", ["enabled", "*.enabled"], steer="{method: add, strength: 4.0}")
PROMPTS = ["The first prompt, somewhat longer than the others.", "second prompt", "and a third one"]
BLOCK = 32  # small KV blocks so that short prompts fill whole blocks (CPU default: 128)
COMPILED = dict(enforce_eager=False, enable_prefix_caching=True, block_size=BLOCK)
SCORE_TOL = 1e-3
STEER = {"steer_prompt.enabled": True}
STOP = {"stop_prompt.enabled": True}


def params(overrides: dict[str, Any] | None = None, max_tokens: int = 8, **kwargs: Any) -> Any:
    from vllm import SamplingParams

    extra = {"axisguard": overrides} if overrides else None
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, extra_args=extra, **kwargs)


def run(llm: Any, prompts: list[Any], overrides: dict[str, Any] | None = None, **kwargs: Any) -> list[Any]:
    from integrations.vllm.verdicts import attach_verdicts

    outputs = llm.generate(prompts, params(overrides, **kwargs), use_tqdm=False)
    flush_finished(llm)
    return list(zip(outputs, attach_verdicts(llm, outputs), strict=True))


def tokens(results: list[Any]) -> list[list[int]]:
    return [list(output.outputs[0].token_ids) for output, _ in results]


def workload(llm: Any) -> dict[str, list[Any]]:
    return {"plain": run(llm, PROMPTS), "steered": run(llm, PROMPTS, STEER), "stopped": run(llm, PROMPTS, STOP)}


def fresh_vllm_env() -> None:
    """vLLM caches its environment after an engine starts; re-read it (VLLM_CACHE_ROOT) for the next one."""
    import vllm.envs

    vllm.envs.disable_envs_cache()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vllm_compiled")
    files = tiny_guarded_files(root, POLICY, SCORE_LAYER)
    return {"folder": files["folder"], "root": root,
            "env": {"AXISGUARD_PACK": str(files["pack"]), "AXISGUARD_POLICY": str(files["policy"]),
                    "VLLM_CACHE_ROOT": str(root / "vllm-cache")}}


@pytest.fixture(scope="module")
def eager(tiny: dict[str, Any]) -> dict[str, list[Any]]:
    fresh_vllm_env()
    with inprocess_engine(tiny["folder"], tiny["env"], enforce_eager=True) as llm:
        return workload(llm)


@pytest.fixture(scope="module")
def vanilla(tiny: dict[str, Any], eager: dict[str, list[Any]]) -> dict[str, Any]:
    """vLLM without axisguard, compiled: its graph (no tap) lands in the same on-disk compile cache.
    It gets the guard's logits processor too (a no-op without a session), so that its config differs
    from the guarded engine's by nothing but what the tap records."""
    from vllm.compilation.counter import compilation_counter

    from integrations.vllm.stop import QUALNAME

    fresh_vllm_env()
    env = {"VLLM_CACHE_ROOT": tiny["env"]["VLLM_CACHE_ROOT"]}
    with inprocess_engine(tiny["folder"], env, logits_processors=[QUALNAME], **COMPILED) as llm:
        assert session_of(llm) is None
        outputs = llm.generate(PROMPTS, params(), use_tqdm=False)
        return {"tokens": [list(o.outputs[0].token_ids) for o in outputs],
                "saved": compilation_counter.num_aot_artifacts_saved,
                "cache_dir": llm.llm_engine.vllm_config.compilation_config.local_cache_dir}


@pytest.fixture(scope="module")
def compiled(tiny: dict[str, Any], vanilla: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from vllm.compilation.counter import compilation_counter

    fresh_vllm_env()
    loaded_before = compilation_counter.num_aot_artifacts_loaded
    with inprocess_engine(tiny["folder"], tiny["env"], **COMPILED) as llm:
        yield {"llm": llm, "loaded": compilation_counter.num_aot_artifacts_loaded - loaded_before,
               "cache_dir": llm.llm_engine.vllm_config.compilation_config.local_cache_dir,
               "results": workload(llm)}


def assert_scores_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for axis, stats in want["scores"].items():
        for key, value in stats.items():
            if isinstance(value, float):
                assert got["scores"][axis][key] == pytest.approx(value, abs=SCORE_TOL), (axis, key)
            else:
                assert got["scores"][axis][key] == value, (axis, key)


def test_engine_is_compiled_with_prefix_caching(compiled: dict[str, Any]) -> None:
    from vllm.config import CompilationMode

    from integrations.vllm.prefix_cache import is_policy_active

    llm = compiled["llm"]
    config = llm.llm_engine.vllm_config
    assert config.model_config.enforce_eager is False
    assert config.compilation_config.mode != CompilationMode.NONE
    assert config.cache_config.enable_prefix_caching is True
    assert config.additional_config["axisguard_tap"] == {"version": 1, "layers": [SCORE_LAYER]}
    assert is_policy_active(llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_manager)
    assert session_of(llm).errors == {}


def test_compile_cache_never_serves_the_vanilla_graph(compiled: dict[str, Any], vanilla: dict[str, Any]) -> None:
    """The vanilla engine saved its graph (no tap) in the same cache root; the guarded engine must look
    it up under another key: with the tap missing from the key it would load that graph and score
    nothing. (On CPU, vLLM 0.32 fails to load its own AOT artifacts in DYNAMO_TRACE_ONCE mode and
    recompiles, so the key itself is what is checked; on GPU the load would succeed.)"""
    assert vanilla["saved"] >= 1
    assert vanilla["cache_dir"] and compiled["cache_dir"]
    assert Path(vanilla["cache_dir"]).parent == Path(compiled["cache_dir"]).parent
    assert vanilla["cache_dir"] != compiled["cache_dir"]
    assert compiled["loaded"] == 0
    _, verdict = compiled["results"]["plain"][0]
    assert verdict["prompt_tokens"] > 0


def test_scores_and_outputs_match_eager(compiled: dict[str, Any], eager: dict[str, Any],
                                        vanilla: dict[str, Any]) -> None:
    got, want = compiled["results"]["plain"], eager["plain"]
    assert tokens(got) == tokens(want) == vanilla["tokens"]  # observing changes nothing
    for (_, g), (_, w) in zip(got, want, strict=True):
        assert g["prompt_tokens"] == w["prompt_tokens"] and g["generated_tokens"] == w["generated_tokens"]
        assert_scores_close(g, w)


def test_steered_outputs_equal_eager_steered(compiled: dict[str, Any], eager: dict[str, Any]) -> None:
    got, want = compiled["results"]["steered"], eager["steered"]
    assert tokens(got) == tokens(want)
    assert tokens(got) != tokens(compiled["results"]["plain"]), "steering must change the greedy output"
    assert all(v["steered"] for _, v in got)
    for (_, g), (_, w) in zip(got, want, strict=True):
        assert_scores_close(g, w)


def test_stop_works_compiled(compiled: dict[str, Any]) -> None:
    for output, verdict in compiled["results"]["stopped"]:
        assert verdict["stopped"] is True
        assert list(output.outputs[0].token_ids) in ([], [output.outputs[0].token_ids[0]])
        assert output.outputs[0].finish_reason == "stop"


def long_ids(n: int, start: int = 5) -> list[int]:
    return [start + (i * 7) % 200 for i in range(n)]


def test_prefix_cache_hit_gives_the_same_prompt_scores(compiled: dict[str, Any]) -> None:
    llm = compiled["llm"]
    prompt = {"prompt_token_ids": long_ids(3 * BLOCK + 5)}
    (first, v1), = run(llm, [prompt], max_tokens=4)
    (second, v2), = run(llm, [prompt], max_tokens=4)
    assert not first.num_cached_tokens
    assert second.num_cached_tokens == 3 * BLOCK  # every full block but the one holding the last token
    assert list(first.outputs[0].token_ids) == list(second.outputs[0].token_ids)
    assert_scores_close(v2, v1)
    # Only the computed tail is counted as scored (documented in prefix_cache).
    assert v1["prompt_tokens"] == len(prompt["prompt_token_ids"])
    assert v2["prompt_tokens"] == len(prompt["prompt_token_ids"]) - 3 * BLOCK


def test_steered_blocks_are_never_reused(compiled: dict[str, Any]) -> None:
    """Next turn of a chat: the prompt holds the steered answer. Without the cache policy vLLM would
    serve the answer's blocks (KV computed with steering) from the cache to this unsteered request."""
    llm = compiled["llm"]
    prompt = long_ids(BLOCK + 8, start=11)
    (steered, verdict), = run(llm, [{"prompt_token_ids": prompt}], STEER, max_tokens=2 * BLOCK, ignore_eos=True)
    assert verdict["steered"]
    answer = list(steered.outputs[0].token_ids)
    next_turn = {"prompt_token_ids": prompt + answer + long_ids(8, start=3)}
    (plain, _), = run(llm, [next_turn], {"enabled": False}, max_tokens=2)
    # vLLM alone would reuse (len(prompt) + len(answer) - 1) // BLOCK blocks = 3 here.
    assert plain.num_cached_tokens == BLOCK  # the prompt's first block only: computed before any steering


def test_cache_policy_limit() -> None:
    from types import SimpleNamespace

    from integrations.vllm.prefix_cache import cacheable_tokens

    request = SimpleNamespace(num_prompt_tokens=40)
    assert [cacheable_tokens(request, n) for n in (0, 16, 39, 40, 41, 90)] == [0, 16, 39, 39, 39, 39]

