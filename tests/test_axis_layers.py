"""Per-axis layers: the pack format (old packs still load), the runtime scoring each axis at its own
layer and steering at the steering axis' layer, and label-free per-axis calibration/adaptation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from guard.axes import AxisSpec
from guard.model_info import ModelInfo
from guard.pack import AxisPack
from guard.policy import Policy
from guard.runtime import Guard, RowMap
from probes.calibration import adapt_pack, build_bundle
from tests.pack_factory import hidden_for_z, random_pack
from tests.synthetic import family, latent_world

BASE = random_pack(num_layers=6, layer=2)
PACK = dataclasses.replace(BASE, axis_layers=[1, 3, 4], axis_anchor_mean=None)  # refusal@1 toxicity@3 sycophancy@4


def prompt_rows(z: list[list[float]]) -> tuple[torch.Tensor, RowMap]:
    rows = RowMap(["a"], torch.zeros(len(z), dtype=torch.long), torch.ones(len(z), dtype=torch.bool))
    return hidden_for_z(PACK, z, seed=len(z)), rows


def run_step(guard: Guard, z_by_layer: dict[int, list[list[float]]]) -> dict[int, torch.Tensor | None]:
    """One forward step: each hooked layer sees rows with the given z-scores (the same RowMap object)."""
    rows = prompt_rows(next(iter(z_by_layer.values())))[1]
    deltas = {}
    for layer in guard.layers:
        hidden = hidden_for_z(PACK, z_by_layer.get(layer, [[0.0, 0.0, 0.0]] * len(rows.request_ids)), seed=layer)
        deltas[layer] = guard.on_hidden(layer, hidden, rows)
    return deltas


def policy(*rules: dict) -> Policy:
    return Policy.model_validate({"rules": list(rules)})


def test_a_pack_with_per_axis_layers_round_trips_and_an_old_pack_reads_as_one_layer(tmp_path):
    loaded = AxisPack.load(PACK.save(tmp_path / "new"))
    assert loaded.layers_by_axis == [1, 3, 4] and loaded.score_layers == [1, 3, 4] and loaded.per_axis_layers
    np.testing.assert_allclose(loaded.axis_anchor_mean, PACK.axis_anchor_mean)
    old = AxisPack.load(BASE.save(tmp_path / "old"))
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert manifest["pack_format"] == 2
    assert old.layers_by_axis == [2, 2, 2] and not old.per_axis_layers


def test_each_axis_is_scored_at_its_own_layer_and_rules_judged_once_per_step():
    g = Guard(PACK, policy({"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0},
                           {"name": "syc", "axis": "sycophancy", "score": "prompt", "threshold": 2.0}))
    assert g.layers == [1, 3, 4]
    # refusal is high at its layer (1); sycophancy is high only at layer 1, not at its own layer (4)
    run_step(g, {1: [[3.0, 0.0, 3.0]], 3: [[0.0, 0.0, 0.0]], 4: [[-3.0, 0.0, 0.5]]})
    verdict = g.verdict("a")
    assert [f["rule"] for f in verdict.fired] == ["harm"]
    assert verdict.scores["refusal"]["prompt"] == pytest.approx(3.0, abs=1e-3)
    assert verdict.scores["sycophancy"]["prompt"] == pytest.approx(0.5, abs=1e-3)


def test_steering_defaults_to_the_steering_axis_layer():
    g = Guard(PACK, policy({"name": "tox", "axis": "toxicity", "score": "prompt", "threshold": 2.0,
                            "action": "steer", "steer": {"method": "clamp", "target": "safe"}}))
    assert g.rules[0].steer_layers == (3,)
    run_step(g, {3: [[0.0, 3.0, 0.0]]})  # the prompt fires the rule (judged at the deepest layer, 4)
    # steering at layer 3 (below the judging layer) starts with the next step: the first generated token
    rows = RowMap(["a"], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool))
    deltas = {layer: g.on_hidden(layer, hidden_for_z(PACK, [[0.0, 3.0, 0.0]], seed=layer), rows) for layer in g.layers}
    assert deltas[1] is None and deltas[4] is None and deltas[3] is not None
    assert g.verdict("a").steered


def test_calibrate_and_adapt_choose_a_layer_per_axis_without_target_labels(tmp_path):
    world = latent_world(n_axes=3)
    sources = [family(world, "src-a", 24, 1, layers=(1, 2, 3)), family(world, "src-b", 20, 2, layers=(1, 2, 3))]
    target = family(world, "tgt", 28, 3, layers=(1, 2, 3))
    specs = [AxisSpec(f"a{k}", "positive", "negative") for k in range(3)]
    bundle = build_bundle(sources, specs, "0" * 64, per_axis_layers=True)
    assert bundle.axis_source_layers is not None and len(bundle.axis_source_layers) == 3
    assert bundle.axis_anchor_kernels is not None and bundle.axis_anchor_kernels.shape[:2] == (3, 2)
    bundle = type(bundle).load(bundle.save(tmp_path / "bundle"))
    info = ModelInfo("tgt", "llama", 28, 5)
    pack = adapt_pack(bundle, target.anchors, info)
    assert set(pack.layers_by_axis) <= {1, 2, 3}
    assert "per_axis" in pack.diagnostics["layer_choice"]
    for k in range(3):  # each reconstructed axis separates the target's test pairs at its own layer
        at = pack.layers_by_axis[k]
        mean, v = pack.axis_anchor_mean[k], pack.vectors[k]
        pos = (target.test_pos[f"a{k}"][at] - mean) @ v
        neg = (target.test_neg[f"a{k}"][at] - mean) @ v
        assert pos.mean() > neg.mean()
    one = adapt_pack(bundle, target.anchors, info, layer=2)
    assert one.layers_by_axis == [2, 2, 2]


def test_an_axis_with_a_read_depth_is_read_at_that_depth_on_sources_and_target(tmp_path):
    """The card's ``read_depth`` replaces both searches (agreement on sources, CKA on the target):
    every model reads the axis at its candidate layer nearest that relative depth; other axes keep
    the search. The depth travels in the bundle, so ``adapt`` needs nothing else."""
    world = latent_world(n_axes=2)
    sources = [family(world, "src-a", 24, 1, layers=(1, 4, 8)), family(world, "src-b", 20, 2, layers=(1, 4, 8))]
    for s in sources:  # 9-layer models: candidate depths 0.125 / 0.5 / 1.0
        s.info = dataclasses.replace(s.info, num_layers=9)
    target = family(world, "tgt", 28, 3, layers=(2, 6, 10))  # 13 layers: depths 1/6, 1/2, 5/6
    specs = [AxisSpec("a0", "positive", "negative", read_depth=0.9), AxisSpec("a1", "positive", "negative")]
    bundle = build_bundle(sources, specs, "0" * 64, per_axis_layers=True)
    assert bundle.axis_source_layers is not None and bundle.axis_source_layers[0] == [8, 8]
    bundle = type(bundle).load(bundle.save(tmp_path / "bundle"))
    assert bundle.axes[0].read_depth == 0.9 and bundle.axes[1].read_depth is None
    pack = adapt_pack(bundle, target.anchors, ModelInfo("tgt", "llama", 28, 13))
    assert pack.layers_by_axis[0] == 10
    assert pack.diagnostics["layer_choice"]["per_axis"]["a0"]["source_depth"] == 0.9
