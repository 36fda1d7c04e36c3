import numpy as np
import pytest

from guard.anchor_space import AnchorSpace, linear_cka, unit_rows
from guard.canonical import canonical_axes
from guard.reconstruction import reconstruct
from guard.scoring import anchor_score_stats, z_scores


def _rotated_target(source: np.ndarray, out_dim: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embed a source space in out_dim dims (zero padding), rotate and rescale: returns (map, target)."""
    rng = np.random.default_rng(seed)
    d = source.shape[1]
    q, _ = np.linalg.qr(rng.normal(size=(out_dim, out_dim)))
    embed = np.zeros((d, out_dim))
    embed[:, :d] = np.eye(d)
    m = scale * embed @ q.T
    return m, source @ m


@pytest.mark.parametrize("out_dim", [48, 96])
def test_ridge_recovers_axes_of_a_rotated_rescaled_target(out_dim):
    rng = np.random.default_rng(1)
    anchors = rng.normal(size=(200, 48)) @ rng.normal(size=(48, 48))
    native = unit_rows(rng.normal(size=(5, 48)))
    canon = canonical_axes([AnchorSpace().fit(anchors).project_direction(native)]).axes
    m, target_anchors = _rotated_target(anchors, out_dim, 3.7, seed=2)
    truth = unit_rows(native @ m)
    rec = reconstruct(AnchorSpace().fit(target_anchors), canon, "ridge")
    assert np.all(np.sum(rec.vectors * truth, axis=1) >= 0.99)
    assert np.all(rec.fidelity >= 0.99)
    adjoint = reconstruct(AnchorSpace().fit(target_anchors), canon, "adjoint")
    # the adjoint is the paper's cheap approximation: it points the right way but is not exact
    assert np.all(np.sum(adjoint.vectors * truth, axis=1) > 0.3)


def test_acs_coordinates_are_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(3)
    anchors = rng.normal(size=(50, 16))
    points = rng.normal(size=(7, 16))
    m, target_anchors = _rotated_target(anchors, 24, 0.2, seed=4)
    a = AnchorSpace().fit(anchors).transform(points)
    b = AnchorSpace().fit(target_anchors).transform(points @ m)
    np.testing.assert_allclose(a, b, atol=1e-8)


def test_canonical_axis_is_the_normalised_mean_and_agreement_is_reported():
    x = unit_rows(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    y = unit_rows(np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    canon = canonical_axes([x, y])
    np.testing.assert_allclose(canon.axes[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(canon.agreement, [1.0, -1.0])


def test_linear_cka_is_one_for_same_geometry_and_lower_for_noise():
    rng = np.random.default_rng(5)
    acts = rng.normal(size=(60, 20))
    m, rotated = _rotated_target(acts, 30, 2.0, seed=6)
    gram = AnchorSpace().fit(acts).gram()
    assert linear_cka(gram, AnchorSpace().fit(rotated).gram()) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(gram, AnchorSpace().fit(rng.normal(size=(60, 20))).gram()) < 0.5


def test_z_scores_are_standard_on_the_anchors_and_match_between_numpy_and_torch():
    import torch

    rng = np.random.default_rng(7)
    anchors = rng.normal(size=(100, 12)) + 3.0
    vectors = unit_rows(rng.normal(size=(3, 12)))
    offset, scale = anchor_score_stats(anchors, vectors)
    z = z_scores(anchors, anchors.mean(0), vectors, offset, scale)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-9)
    zt = z_scores(torch.tensor(anchors), torch.tensor(anchors.mean(0)), torch.tensor(vectors), torch.tensor(offset),
                  torch.tensor(scale))
    np.testing.assert_allclose(zt.numpy(), z, atol=1e-9)


def test_unfitted_space_and_wrong_anchor_count_fail_clearly():
    with pytest.raises(RuntimeError, match="not fitted"):
        AnchorSpace().transform(np.zeros((1, 3)))
    space = AnchorSpace().fit(np.random.default_rng(0).normal(size=(10, 4)))
    with pytest.raises(ValueError, match="anchor coordinates"):
        reconstruct(space, np.ones((2, 11)))
