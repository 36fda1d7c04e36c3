"""Steering maths: each op's defining property, per-row strengths and the z-space clamp."""

from __future__ import annotations

import pytest
import torch

from guard import steering
from guard.scoring import z_scores
from tests.pack_factory import random_pack

torch.manual_seed(0)
HIDDEN = torch.randn(6, 16, dtype=torch.float64) * 3 + 1
MEAN = torch.randn(16, dtype=torch.float64)
U = steering.unit(torch.randn(16, dtype=torch.float64))


def test_add_with_zero_strength_is_exactly_identity():
    for relative in (False, True):
        delta = steering.add(HIDDEN, U, 0.0, relative=relative)
        assert torch.equal(HIDDEN + delta, HIDDEN)


def test_add_moves_the_projection_by_alpha_or_alpha_times_norm():
    delta = steering.add(HIDDEN, U, 2.5)
    assert torch.allclose(steering.projection(HIDDEN + delta, U) - steering.projection(HIDDEN, U),
                          torch.full((6,), 2.5, dtype=torch.float64))
    relative = steering.add(HIDDEN, U, 0.1, relative=True)
    assert torch.allclose(relative.norm(dim=1), 0.1 * HIDDEN.norm(dim=1))


def test_ablate_leaves_a_zero_projection():
    after = HIDDEN + steering.ablate(HIDDEN, U, MEAN)
    assert torch.allclose(steering.projection(after, U, MEAN), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    raw = HIDDEN + steering.ablate(HIDDEN, U)
    assert torch.allclose(raw @ U, torch.zeros(6, dtype=torch.float64), atol=1e-12)
    # only the axis component changes
    ortho = torch.eye(16, dtype=torch.float64) - torch.outer(U, U)
    assert torch.allclose(after @ ortho, HIDDEN @ ortho)


def test_clamp_hits_its_target_cosine_and_keeps_the_orthogonal_part():
    for target in (-0.4, 0.0, 0.3, 0.9):
        after = HIDDEN + steering.clamp(HIDDEN, U, target, MEAN, side="both")
        assert torch.allclose(steering.cosine(after, U, MEAN), torch.full((6,), target, dtype=torch.float64))
        ortho = torch.eye(16, dtype=torch.float64) - torch.outer(U, U)
        assert torch.allclose((after - MEAN) @ ortho, (HIDDEN - MEAN) @ ortho)


def test_one_sided_clamp_only_corrects_rows_on_the_wrong_side():
    cos = steering.cosine(HIDDEN, U, MEAN)
    target = float(cos.median())
    above = steering.clamp(HIDDEN, U, target, MEAN, side="above")
    moved = above.norm(dim=1) > 0
    assert torch.equal(moved, cos > target)
    after = steering.cosine(HIDDEN + above, U, MEAN)
    assert torch.all(after <= target + 1e-9)
    below = steering.clamp(HIDDEN, U, target, MEAN, side="below")
    assert torch.equal(below.norm(dim=1) > 0, cos < target)


def test_clamp_projection_hits_its_target():
    after = HIDDEN + steering.clamp_projection(HIDDEN, U, 1.25, MEAN)
    assert torch.allclose(steering.projection(after, U, MEAN), torch.full((6,), 1.25, dtype=torch.float64))


def test_clamp_to_a_z_score_lands_on_that_z_score():
    pack = random_pack(hidden_size=16)
    k = 1
    vectors, mean = torch.tensor(pack.vectors), torch.tensor(pack.anchor_mean)
    offset, scale = torch.tensor(pack.score_offset), torch.tensor(pack.score_scale)
    hidden = torch.randn(5, 16) * 2 + mean
    target_z = float(pack.neg_mean_z[k])
    cos_target = steering.z_to_cosine(target_z, float(offset[k]), float(scale[k]))
    op = steering.SteerOp("clamp", vectors[k], mean=mean, target_cos=cos_target, side="both")
    z_after = z_scores(hidden + op.delta(hidden), mean, vectors, offset, scale)[:, k]
    assert torch.allclose(z_after, torch.full((5,), target_z), atol=1e-3)


def test_per_row_strength_leaves_zero_rows_untouched():
    strength = torch.tensor([0.0, 1.0, 0.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    for delta in (steering.add(HIDDEN, U, strength), steering.ablate(HIDDEN, U, MEAN, strength),
                  steering.clamp(HIDDEN, U, 0.2, MEAN, "both", strength)):
        assert torch.all(delta[strength == 0] == 0)
        assert torch.all(delta[strength != 0].norm(dim=1) > 0)
    half = steering.ablate(HIDDEN, U, MEAN, 0.5)
    full = steering.ablate(HIDDEN, U, MEAN, 1.0)
    assert torch.allclose(2 * half, full)


@pytest.mark.parametrize("method", ["add", "ablate", "clamp"])
def test_steer_op_dispatches_and_casts_to_the_input_dtype(method):
    op = steering.SteerOp(method, U.float(), strength=0.7, mean=MEAN.float(), target_cos=0.1, side="both")
    hidden = HIDDEN.to(torch.bfloat16)
    delta = op.delta(hidden)
    assert delta.dtype == torch.bfloat16 and delta.shape == hidden.shape
    reference = {"add": lambda h: steering.add(h, U.float(), 0.7),
                 "ablate": lambda h: steering.ablate(h, U.float(), MEAN.float(), 0.7),
                 "clamp": lambda h: steering.clamp(h, U.float(), 0.1, MEAN.float(), "both", 0.7)}[method]
    assert torch.allclose(op.delta(HIDDEN.float()), reference(HIDDEN.float()))
