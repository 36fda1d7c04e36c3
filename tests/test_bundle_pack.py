import json

import numpy as np
import pytest

from guard.axes import AxisSpec
from guard.bundle import CanonicalBundle
from guard.errors import AxisguardError, IntegrityError, MismatchError
from guard.model_info import ModelInfo
from guard.pack import AxisPack
from guard.tensor_folder import MANIFEST, TENSORS


def make_bundle() -> CanonicalBundle:
    rng = np.random.default_rng(0)
    return CanonicalBundle(
        axes=[AxisSpec("refusal", "harmful", "benign"), AxisSpec("toxicity", "toxic", "civil")],
        acs_axes=rng.normal(size=(2, 30)).astype(np.float32),
        anchors_sha256="ab" * 32,
        anchor_count=30,
        sources=[ModelInfo("a", "LlamaForCausalLM", 64, 4, 2), ModelInfo("b", "Qwen2ForCausalLM", 96, 6, 3)],
        probe_coef=rng.normal(size=(2, 30)).astype(np.float32),
        probe_intercept=np.zeros(2, np.float32),
        pos_mean_z=np.ones(2, np.float32),
        neg_mean_z=-np.ones(2, np.float32),
        diagnostics={"source_agreement": {"refusal": 0.9, "toxicity": 0.8}},
    )


def make_pack(hidden: int = 64) -> AxisPack:
    rng = np.random.default_rng(1)
    return AxisPack(
        model=ModelInfo("tiny", "LlamaForCausalLM", hidden, 4, 2),
        axes=[AxisSpec("refusal", "harmful", "benign")],
        vectors=rng.normal(size=(1, hidden)).astype(np.float32),
        anchor_mean=np.zeros(hidden, np.float32),
        score_offset=np.zeros(1, np.float32),
        score_scale=np.ones(1, np.float32),
        pos_mean_z=np.ones(1, np.float32),
        neg_mean_z=-np.ones(1, np.float32),
        method="ridge",
        anchors_sha256="ab" * 32,
    )


def test_bundle_round_trip(tmp_path):
    bundle = make_bundle()
    bundle.save(tmp_path / "b")
    again = CanonicalBundle.load(tmp_path / "b")
    np.testing.assert_array_equal(again.acs_axes, bundle.acs_axes)
    np.testing.assert_array_equal(again.probe_coef, bundle.probe_coef)
    assert again.axes == bundle.axes and again.sources == bundle.sources
    assert again.multiclass_coef is None
    assert again.diagnostics == bundle.diagnostics
    assert not list(tmp_path.glob(".b.*")), "temporary folder left behind"


def test_pack_round_trip_and_model_check(tmp_path):
    pack = make_pack()
    pack.save(tmp_path / "p")
    again = AxisPack.load(tmp_path / "p")
    np.testing.assert_array_equal(again.vectors, pack.vectors)
    assert again.model == pack.model and again.layer == 2
    again.check_model(64, 4, "LlamaForCausalLM")
    with pytest.raises(MismatchError, match="hidden size 96"):
        again.check_model(96, 4)
    with pytest.raises(MismatchError, match="6 layers"):
        again.check_model(64, 6)
    with pytest.raises(MismatchError, match="Qwen2"):
        again.check_model(64, 4, "Qwen2ForCausalLM")


def test_tampered_tensors_are_refused(tmp_path):
    make_bundle().save(tmp_path / "b")
    data = bytearray((tmp_path / "b" / TENSORS).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "b" / TENSORS).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match the hash"):
        CanonicalBundle.load(tmp_path / "b")


def test_edited_manifest_is_refused(tmp_path):
    make_pack().save(tmp_path / "p")
    manifest = json.loads((tmp_path / "p" / MANIFEST).read_text())
    manifest["model"]["layer"] = 3
    (tmp_path / "p" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="modified after it was written"):
        AxisPack.load(tmp_path / "p")


def test_wrong_kind_and_missing_folder(tmp_path):
    make_pack().save(tmp_path / "p")
    with pytest.raises(AxisguardError, match="holds a 'axis_pack'"):
        CanonicalBundle.load(tmp_path / "p")
    with pytest.raises(AxisguardError, match="manifest.json is missing"):
        AxisPack.load(tmp_path / "nothing")


def test_no_pickle_anywhere_in_artifacts(tmp_path):
    make_bundle().save(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [MANIFEST, TENSORS]
