"""Row attribution inside a real vLLM engine: every captured row belongs to the right request, at the
right position, under chunked prefill and mixed prefill/decode batches (prefix caching off here)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tests.vllm_support import (
    flush_finished,
    inprocess_engine,
    session_of,
    tiny_guarded_files,
)

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

SCORE_LAYER = 2
POLICY = """
name: observe-only
rules:
  - {name: watch, axis: refusal, threshold: 3.0, action: observe}
"""


class Recorder:
    """Recording stand-in for the guard: keeps every row it is shown, per request, in arrival order."""

    def __init__(self, layers: list[int]) -> None:
        self.layers = layers
        self.step = 0
        self.rows: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self.complete: dict[str, list[int]] = defaultdict(list)
        self.steps: list[tuple[set[str], set[str]]] = []  # (requests with prompt rows, with generated rows)

    def start_request(self, request_id: str, overrides: Any = None) -> None:
        pass

    def on_step(self, layer: int, hidden: torch.Tensor, step: Any) -> torch.Tensor | None:
        self.step += 1
        rows = step.row_map()
        prompt_reqs, gen_reqs = set(), set()
        for r, rid in enumerate(rows.request_ids):
            mask = rows.row_request == r
            is_prompt = rows.is_prompt[mask]
            self.rows[rid].append((self.step, hidden[mask].clone(), is_prompt.clone()))
            if bool(rows.prompt_complete[r]):
                self.complete[rid].append(self.step)
            if bool(is_prompt.any()):
                prompt_reqs.add(rid)
            if bool((~is_prompt).any()):
                gen_reqs.add(rid)
        self.steps.append((prompt_reqs, gen_reqs))
        return None

    def should_stop(self, request_id: str) -> bool:
        return False

    def finish_request(self, request_id: str) -> dict[str, Any] | None:
        return {"request_id": request_id}

    def verdict(self, request_id: str) -> dict[str, Any] | None:
        return None

    def active_requests(self) -> int:
        return 0


@contextlib.contextmanager
def swapped_consumer(llm: Any, consumer: Any) -> Iterator[None]:
    session = session_of(llm)
    original = session.consumer
    session.consumer = consumer
    try:
        yield
    finally:
        flush_finished(llm)
        session.consumer = original


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tiny_guarded_files(tmp_path_factory.mktemp("vllm_rows"), POLICY, SCORE_LAYER)


@pytest.fixture(scope="module")
def llm(tiny: dict[str, Any]) -> Iterator[Any]:
    env = {"AXISGUARD_PACK": str(tiny["pack"]), "AXISGUARD_POLICY": str(tiny["policy"])}
    # Prefix caching off here: these tests compare every row of a request with transformers, and
    # a cache hit leaves the cached prefix's rows out (test_vllm_compiled covers caching on).
    with inprocess_engine(tiny["folder"], env, enable_prefix_caching=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def hf_model(tiny: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny["folder"]), dtype=torch.float32,
                                                local_files_only=True).eval()


def hf_stream(model: Any, token_ids: list[int], layer: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0]


PROMPTS = [
    "A long prompt that needs several prefill chunks of sixteen tokens each to be read.",
    "short",
    "a medium-sized prompt, two chunks",
]


def test_engine_settings_kept(llm: Any) -> None:
    """The plugin no longer forces eager mode or turns prefix caching off: what was asked is kept."""
    config = llm.llm_engine.vllm_config
    assert config.cache_config.enable_prefix_caching is False
    assert config.model_config.enforce_eager is True
    assert session_of(llm).layers == [SCORE_LAYER]


def test_rows_belong_to_their_request_at_the_right_position(llm: Any, hf_model: Any) -> None:
    from vllm import SamplingParams

    recorder = Recorder([SCORE_LAYER])
    max_tokens = 5
    with swapped_consumer(llm, recorder):
        outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)
    by_external = {rid.rsplit("-", 1)[0]: rid for rid in recorder.rows}
    for output in outputs:
        rid = by_external[output.request_id]
        prompt = list(output.prompt_token_ids)
        generated = list(output.outputs[0].token_ids)
        assert len(generated) == max_tokens
        rows = torch.cat([h for _, h, _ in recorder.rows[rid]])
        is_prompt = torch.cat([p for _, _, p in recorder.rows[rid]])
        # Every token the engine read for this request, in order: the prompt, then each generated
        # token but the last (its successor is never computed).
        sequence = prompt + generated[:-1]
        assert rows.shape[0] == len(sequence)
        expected = hf_stream(hf_model, sequence, SCORE_LAYER)
        torch.testing.assert_close(rows, expected, atol=1e-4, rtol=1e-4)
        assert is_prompt.tolist() == [i < len(prompt) for i in range(len(sequence))]
        # The prompt is declared complete exactly once: in the step that read its last token.
        last_prompt_step = max(s for s, _, p in recorder.rows[rid] if bool(p.any()))
        assert recorder.complete[rid] == [last_prompt_step]

    long_rid = by_external[outputs[0].request_id]
    prompt_steps = {s for s, _, p in recorder.rows[long_rid] if bool(p.any())}
    assert len(prompt_steps) >= 3, "the long prompt should have been read in several chunks"
    assert any(prompt_reqs and gen_reqs - prompt_reqs for prompt_reqs, gen_reqs in recorder.steps), \
        "expected at least one step mixing one request's prefill with another's decode"


def test_finished_requests_are_released(llm: Any) -> None:
    from vllm import SamplingParams

    recorder = Recorder([SCORE_LAYER])
    with swapped_consumer(llm, recorder):
        llm.generate(PROMPTS[:2], SamplingParams(max_tokens=3, temperature=0.0), use_tqdm=False)
        flush_finished(llm)
        session = session_of(llm)
        assert session.status()["active_requests"] == 0
        assert all(any(v["request_id"] == rid for _, v in session.verdicts.matching(rid)) for rid in recorder.rows)


def test_repeated_prompt_is_scored_in_full(llm: Any) -> None:
    """Prefix caching off: the second run computes (and counts) every prompt row again."""
    from vllm import SamplingParams

    from integrations.vllm.verdicts import get_verdict

    prompt = "The same fairly long prompt, sent twice in a row, to see if any prefix gets cached. " * 2
    params = SamplingParams(max_tokens=2, temperature=0.0)
    first = llm.generate([prompt], params, use_tqdm=False)[0]
    second = llm.generate([prompt], params, use_tqdm=False)[0]
    flush_finished(llm)
    v1, v2 = get_verdict(llm, first.request_id), get_verdict(llm, second.request_id)
    assert v1 is not None and v2 is not None
    assert v1["prompt_tokens"] == v2["prompt_tokens"] == len(first.prompt_token_ids)
    for axis in v1["scores"]:
        assert v1["scores"][axis]["prompt"] == pytest.approx(v2["scores"][axis]["prompt"], abs=1e-4)
    assert second.num_cached_tokens in (0, None)


def test_step_rows_match_the_runtime_row_map() -> None:
    """The host-side layout and the facade's RowMap agree (chunked prefill + decodes in one step)."""
    from integrations.vllm.row_mapping import StepRows

    step = StepRows(request_ids=["a", "b", "c"], query_start_loc=np.array([0, 1, 17, 20]),
                    num_computed=np.array([7, 16, 0]), num_prompt=np.array([5, 40, 3]))
    rows = step.row_map()
    assert rows.row_request.tolist() == step.row_request().tolist()
    assert rows.is_prompt.tolist() == step.is_prompt().tolist()
    assert step.positions().tolist() == [7, *range(16, 32), 0, 1, 2]
    assert rows.prompt_complete.tolist() == [False, False, True]
