"""Whitening an axis against benign traffic (probes.traffic_whitening) and `adapt --whiten-with` end to end
on tiny real models."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from axisguard_cli.main import cli
from guard.pack import AxisPack
from integrations.tiny_models import build_tiny_model
from probes.traffic_whitening import whiten_direction, whiten_pack, whitened_on
from tests.test_few_shot import tiny_families
from tests.test_hf_guard import pack_for


def test_isotropic_traffic_leaves_the_direction_alone():
    rng = np.random.default_rng(0)
    v = rng.normal(size=16)
    benign = rng.normal(size=(20000, 16))
    w = whiten_direction(v, benign, ridge=1.0)
    assert w @ v / np.linalg.norm(v) > 0.99
    assert np.isclose(np.linalg.norm(w), 1.0)


def test_a_nuisance_dimension_of_benign_traffic_is_taken_out_of_the_score():
    # The axis mixes a signal dimension (0) with a nuisance (1) that ordinary prompts vary a lot along,
    # like length: benign scores on the plain axis are dominated by the nuisance, whitened ones are not.
    rng = np.random.default_rng(1)
    n, d = 4000, 8
    benign = rng.normal(size=(n, d))
    benign[:, 1] *= 20.0
    harmful = rng.normal(size=(n, d)) + np.eye(d)[0] * 3.0
    harmful[:, 1] *= 20.0
    v = np.eye(d)[0] + np.eye(d)[1]
    w = whiten_direction(v, benign, ridge=0.01)
    assert abs(w[1]) < 0.05 < w[0]

    def separation(direction):
        return (harmful @ direction).mean() - (benign @ direction).mean(), (benign @ direction).std()

    gap_plain, spread_plain = separation(v / np.linalg.norm(v))
    gap_white, spread_white = separation(w)
    assert gap_white / spread_white > 2 * gap_plain / spread_plain


def test_large_ridge_returns_the_axis():
    rng = np.random.default_rng(2)
    v = rng.normal(size=12)
    benign = rng.normal(size=(50, 12)) * np.linspace(1, 30, 12)
    assert whiten_direction(v, benign, ridge=1e6) @ (v / np.linalg.norm(v)) > 0.9999


@pytest.mark.parametrize("bad", [dict(ridge=0.0), dict(benign=np.zeros((1, 4))), dict(benign=np.zeros((5, 3)))])
def test_bad_inputs_say_what_is_wrong(bad):
    args = dict(vector=np.ones(4), benign=np.random.default_rng(3).normal(size=(10, 4)), ridge=1.0) | bad
    with pytest.raises(ValueError):
        whiten_direction(**args)


def test_adapt_whitens_only_the_named_axes_and_refuses_bad_requests(tmp_path, axisguard_home):
    tiny_families(tmp_path, seed=20)
    traffic = tmp_path / "traffic.txt"
    traffic.write_text("".join(f"please help me plan a trip number {i} with {i % 7} stops and a budget\n" for i in range(60)))
    runner = CliRunner()
    result = runner.invoke(cli, ["calibrate", "--source", str(tmp_path / "m0"), "--source", str(tmp_path / "m1"),
                                 "--data", str(tmp_path / "data"), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    adapt = ["adapt", str(tmp_path / "bundle"), "--target", str(tmp_path / "m2"), "--data", str(tmp_path / "data")]
    assert runner.invoke(cli, [*adapt, "--out", str(tmp_path / "plain")]).exit_code == 0
    result = runner.invoke(cli, [*adapt, "--whiten-with", str(traffic), "--out", str(tmp_path / "white")])
    assert result.exit_code == 0, result.output
    plain, white = AxisPack.load(tmp_path / "plain"), AxisPack.load(tmp_path / "white")
    r, t = white.axis_index("refusal"), white.axis_index("toxicity")
    assert np.allclose(white.vectors[t], plain.vectors[t]) and not np.allclose(white.vectors[r], plain.vectors[r], atol=1e-3)
    report = white.diagnostics["traffic_whitening"]
    assert list(report) == ["refusal"] and report["refusal"]["prompts"] == 60
    assert report["refusal"]["cos_to_plain"] == pytest.approx(float(white.vectors[r] @ plain.vectors[r]), abs=1e-3)
    unknown = runner.invoke(cli, [*adapt, "--whiten-with", str(traffic), "--whiten-axes", "honesty", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "honesty" in unknown.output and "choose from" in unknown.output
    traffic.write_text("just one ordinary prompt\n")
    few = runner.invoke(cli, [*adapt, "--whiten-with", str(traffic), "--out", str(tmp_path / "y")])
    assert few.exit_code == 2 and "at least 50" in few.output


def test_thresholds_warn_when_given_the_prompts_an_axis_was_whitened_on(tmp_path):
    # Thresholds set on the whitening sample itself flag more than asked on new traffic (measured 2-7 % for
    # 1 %: bench/results/external/whitening_in_sample.md), so the CLI must say so; a disjoint sample is silent.
    loaded = build_tiny_model("llama", 64, num_layers=4, seed=5, save_to=tmp_path / "model")
    pack = pack_for(loaded)
    whitened = [f"please help me plan item {i}" for i in range(60)]
    benign = np.random.default_rng(4).normal(size=(60, loaded.hidden_size))
    anchors = {pack.layer: np.random.default_rng(5).normal(size=(40, loaded.hidden_size))}
    pack = whiten_pack(pack, ["refusal"], {pack.layer: benign}, anchors, prompts=whitened)
    assert whitened_on(pack, whitened[:10] + ["something else"]) == {"refusal": 10}
    pack_dir = pack.save(tmp_path / "pack")

    def thresholds(prompts: list[str]):
        path = tmp_path / "prompts.txt"
        path.write_text("\n".join(prompts) + "\n")
        return CliRunner().invoke(cli, ["thresholds", "--model", str(tmp_path / "model"), "--pack", str(pack_dir),
                                        "--prompts", str(path), "--fpr", "0.1", "--new-tokens", "1",
                                        "--out", str(tmp_path / "policy.yaml")])

    reused = thresholds(whitened[:20])
    assert reused.exit_code == 0, reused.output
    assert "20 of these 20 prompts were used to whiten refusal" in reused.output
    fresh = thresholds([f"what should I cook on day {i}" for i in range(20)])
    assert fresh.exit_code == 0, fresh.output
    assert "were used to whiten" not in fresh.output
