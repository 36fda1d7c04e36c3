"""Few-shot refinement: shrinkage toward the anchors-only axis with a CV-chosen strength, the pack it
writes, and `calibrate` (per-axis layers) -> `adapt --pairs --shots` end to end on tiny real models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from axisguard_cli.main import cli
from guard.bundle import CanonicalBundle
from guard.pack import AxisPack
from guard.scoring import AnchorZScorer
from integrations.tiny_models import build_tiny_model
from probes.catalogue import load_catalogue
from probes.few_shot import combine, refine_axis, refine_pack
from probes.operating_points import auroc
from tests.pack_factory import random_pack

DIM = 64


def world(seed: int = 0, n: int = 200, separation: float = 0.6):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=DIM)
    truth /= np.linalg.norm(truth)
    pos = rng.normal(size=(n, DIM)) + separation * truth
    neg = rng.normal(size=(n, DIM)) - separation * truth
    return rng, truth, pos, neg


def held_out_auroc(v, pos, neg) -> float:
    return auroc(pos @ v, neg @ v)


def test_no_shots_or_one_shot_keeps_the_prior():
    rng, truth, pos, neg = world()
    prior = combine(truth, rng.normal(size=DIM), 0.5)
    for n in (0, 1):
        r = refine_axis(prior, pos[:n], neg[:n], np.zeros(DIM))
        np.testing.assert_allclose(r.vector, prior / np.linalg.norm(prior), atol=1e-9)
        assert r.weight == 0.0 and r.shots == n


def test_a_good_prior_is_kept_with_few_shots_and_a_bad_one_is_overruled_by_many():
    rng, truth, pos, neg = world()
    test_pos, test_neg = pos[100:], neg[100:]
    good = refine_axis(truth, pos[:5], neg[:5], np.zeros(DIM))
    assert good.weight == 0.0  # five shots cannot beat a true prior by more than their own noise
    assert held_out_auroc(good.vector, test_pos, test_neg) > held_out_auroc(
        combine(truth, pos[:5].mean(0) - neg[:5].mean(0), 1.0), test_pos, test_neg)
    bad_prior = combine(truth, rng.normal(size=DIM), 0.97)  # mostly noise
    many = refine_axis(bad_prior, pos[:100], neg[:100], np.zeros(DIM))
    assert many.weight >= 0.5
    assert held_out_auroc(many.vector, test_pos, test_neg) > held_out_auroc(bad_prior, test_pos, test_neg) + 0.05


def test_refined_pack_keeps_the_z_meaning_on_its_anchors():
    rng = np.random.default_rng(3)
    anchors = rng.normal(size=(96, 32)) + 1.0
    pack = random_pack(hidden_size=32, anchors=anchors)
    pos, neg = rng.normal(size=(20, 32)) + 1.5 * pack.vectors[1], rng.normal(size=(20, 32))
    refined = refine_pack(pack, {"toxicity": (pos, neg)}, {pack.layer: anchors})
    z = AnchorZScorer(refined.vectors.astype(np.float64)).fit(anchors).transform(anchors)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
    np.testing.assert_allclose(refined.vectors[0], pack.vectors[0])  # axes without shots are untouched
    assert refined.diagnostics["few_shot"]["toxicity"]["shots"] == 20 and refined.method == "test+few_shot"


def write_data(root, axes: dict[str, list[tuple[str, str]]], anchors: list[str]) -> None:
    (root / "axes").mkdir(parents=True)
    (root / "anchors.jsonl").write_text("".join(json.dumps({"text": a}) + "\n" for a in anchors))
    for axis, pairs in axes.items():
        (root / "axes" / f"{axis}_anchor.jsonl").write_text(
            "".join(json.dumps({"positive": p, "negative": n}) + "\n" for p, n in pairs))


def tiny_families(root, seed: int) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Three tiny real models ``root/m0..m2`` and a two-axis catalogue in ``root/data``: (pairs, anchors)."""
    for i, arch in enumerate(("llama", "qwen2", "llama")):
        build_tiny_model(arch, 64, num_layers=4, seed=seed + i, save_to=root / f"m{i}")
    anchors = [f"anchor {i}: a note about subject {i * 7 % 11} and item {i % 5}" for i in range(40)]
    pairs = {"refusal": [(f"how do i break into house {i}", f"how do i paint house {i}") for i in range(12)],
             "toxicity": [(f"you are stupid number {i}", f"you are kind number {i}") for i in range(12)]}
    write_data(root / "data", pairs, anchors)
    return pairs, anchors


def test_calibrate_then_adapt_with_pairs_and_shots(tmp_path, axisguard_home):
    pairs, anchors = tiny_families(tmp_path, seed=10)
    write_data(tmp_path / "shots", {"refusal": pairs["refusal"][::-1]}, anchors)
    runner = CliRunner()
    result = runner.invoke(cli, ["calibrate", "--source", str(tmp_path / "m0"), "--source", str(tmp_path / "m1"),
                                 "--data", str(tmp_path / "data"), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    assert CanonicalBundle.load(tmp_path / "bundle").catalogue_sha256 == load_catalogue(tmp_path / "data").calibration_sha256
    result = runner.invoke(cli, ["adapt", str(tmp_path / "bundle"), "--target", str(tmp_path / "m2"), "--data",
                                 str(tmp_path / "data"), "--pairs", str(tmp_path / "shots"), "--shots", "6",
                                 "--out", str(tmp_path / "pack")])
    assert result.exit_code == 0, result.output
    pack = AxisPack.load(tmp_path / "pack")
    assert pack.diagnostics["few_shot"]["refusal"]["shots"] == 6 and "toxicity" not in pack.diagnostics["few_shot"]
    assert "per_axis" in pack.diagnostics["layer_choice"] and len(pack.layers_by_axis) == 2
    missing = runner.invoke(cli, ["adapt", str(tmp_path / "bundle"), "--target", str(tmp_path / "m2"), "--data",
                                  str(tmp_path / "data"), "--pairs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p2")])
    assert missing.exit_code == 2 and "no pairs" in missing.output


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_combine_is_a_unit_interpolation(weight):
    a, b = np.eye(4)[0], 3 * np.eye(4)[1]
    v = combine(a, b, weight)
    assert np.linalg.norm(v) == pytest.approx(1.0)
    assert (v[0] > 0) == (weight < 1.0) and (v[1] > 0) == (weight > 0.0)
