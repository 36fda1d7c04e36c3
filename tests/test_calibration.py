import json

import numpy as np
import pytest

from guard.axes import AxisSpec
from guard.bundle import CanonicalBundle
from guard.errors import MismatchError
from guard.model_info import ModelInfo
from guard.pack import AxisPack
from probes.calibration import adapt_pack, build_bundle
from probes.eval_report import write_report
from probes.evaluation import evaluate_lofo
from tests.synthetic import family, latent_world

AXES = [AxisSpec(f"a{k}", "pos", "neg") for k in range(4)]


@pytest.fixture(scope="module")
def families():
    world = latent_world()
    return [family(world, "fam-a", 40, 1), family(world, "fam-b", 56, 2), family(world, "fam-c", 72, 3)]


def test_bundle_from_two_sources_and_pack_for_a_third(families, tmp_path):
    a, b, c = families
    bundle = build_bundle([a, b], AXES, "sha")
    assert bundle.acs_axes.shape == (4, 120)
    np.testing.assert_allclose(np.linalg.norm(bundle.acs_axes, axis=1), 1.0, atol=1e-6)
    assert set(bundle.diagnostics["layer_choice"]["layers"]) == {"fam-a", "fam-b"}
    assert all(v > 0.5 for v in bundle.diagnostics["source_agreement"].values())
    assert np.all(bundle.pos_mean_z > bundle.neg_mean_z)
    bundle.save(tmp_path / "bundle")
    loaded = CanonicalBundle.load(tmp_path / "bundle")
    pack = adapt_pack(loaded, c.anchors, ModelInfo("fam-c", "synthetic", 72, 4, 0))
    pack.save(tmp_path / "pack")
    pack = AxisPack.load(tmp_path / "pack")
    assert pack.vectors.shape == (4, 72) and pack.layer in c.layers
    # the reconstruction, made from anchors only, points along the target's own labelled direction
    layer = pack.layer
    for k, axis in enumerate(pack.axis_names):
        native = c.pos[axis][layer].mean(0) - c.neg[axis][layer].mean(0)
        assert pack.vectors[k] @ native / np.linalg.norm(native) > 0.4  # random: ~N(0, 1/sqrt(72))


def test_adapt_refuses_foreign_anchors(families):
    a, b, c = families
    bundle = build_bundle([a, b], AXES, "sha")
    with pytest.raises(MismatchError, match="anchors differ"):
        adapt_pack(bundle, c.anchors, anchors_sha256="other")
    short = {layer: acts[:50] for layer, acts in c.anchors.items()}
    with pytest.raises(MismatchError, match="50 anchors"):
        adapt_pack(bundle, short)


def test_leave_one_family_out_beats_random_and_reports_the_schema(families, tmp_path):
    results, details = evaluate_lofo(families, AXES, "sha")
    assert results["protocol"] == "leave-one-family-out"
    assert set(results["layers"]) == {"fam-a", "fam-b", "fam-c"}
    by = {(r["target"], r["method"]): r for r in results["results"]}
    for target in ("fam-a", "fam-b", "fam-c"):
        row = by[(target, "acs_probe")]
        assert set(row) >= {"target", "sources", "method", "multiclass_accuracy", "auroc", "mean_auroc", "fidelity"}
        assert target not in row["sources"] and len(row["sources"]) == 2
        assert by[(target, "reconstructed_axis")]["mean_auroc"] > 0.9
        assert by[(target, "random_axis")]["mean_auroc"] < by[(target, "reconstructed_axis")]["mean_auroc"]
        assert by[(target, "reconstructed_axis")]["multiclass_accuracy"] > 0.5
        assert by[(target, "reconstructed_axis_per_axis_layer")]["mean_auroc"] > 0.9
        ops = by[(target, "reconstructed_axis")]["tpr_at_fpr"]["a0"]
        assert set(ops) == {"0.01", "0.05"} and 0 <= ops["0.01"]["low"] <= ops["0.01"]["tpr"] <= ops["0.01"]["high"] <= 1
        assert ops["0.01"]["tpr"] <= ops["0.05"]["tpr"]
    written = write_report(tmp_path, results, details, families)
    assert (tmp_path / "results.md").read_text().count("reconstructed_axis") >= 3
    assert "TPR @ 1% FPR [95% CI]" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["axes"] == ["a0", "a1", "a2", "a3"]
    assert all(p.stat().st_size > 0 for p in written if p.suffix == ".png")


def test_a_single_axis_skips_the_k_way_accuracy(families, tmp_path):
    results, details = evaluate_lofo(families, AXES[:1], "sha")
    assert {r["multiclass_accuracy"] for r in results["results"]} == {None}
    assert all(r["mean_auroc"] > 0.5 for r in results["results"] if r["method"] == "reconstructed_axis")
    write_report(tmp_path, results, details, families)
    assert "| n/a |" in (tmp_path / "results.md").read_text()
