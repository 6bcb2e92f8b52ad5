"""Soft distance regularisation and the MAG-SD loss against hand-computed numbers."""
import math

import pytest
import torch
import torch.nn.functional as F

from magsd_timm.method.losses import magsd_loss, map_overlap, refined_target, soft_distance

# Two images, three classes. Image 0: raw logits (2, 0, 0), label 0: right and confident (0.787 >= 0.7),
# so its target is the raw probabilities. Image 1: uniform logits, label 1: unsure, so refined.
RAW = torch.tensor([[2., 0., 0.], [0., 0., 0.]])
LABELS = torch.tensor([0, 1])
E2 = math.exp(2)
P0 = [E2 / (E2 + 2), 1 / (E2 + 2), 1 / (E2 + 2)]


def test_refined_target_keeps_confident_right_rows_and_smooths_the_rest():
    expected = torch.tensor([P0, [0.01, 0.98, 0.01]])
    torch.testing.assert_close(refined_target(RAW, LABELS), expected)


def test_authors_target_switch_reproduces_their_0_99_sum():
    target = refined_target(RAW, LABELS, authors_target=True)
    torch.testing.assert_close(target[1], torch.tensor([0.01, 0.97, 0.01]))
    torch.testing.assert_close(target[1].sum(), torch.tensor(0.99))


def test_wrong_but_confident_rows_are_refined_too():
    target = refined_target(torch.tensor([[5., 0., 0.]]), torch.tensor([2]))
    torch.testing.assert_close(target, torch.tensor([[0.01, 0.01, 0.98]]))


def test_loss_matches_a_hand_computed_example():
    views = [torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[0., 0., 10.], [0., 10., 0.]])]
    loss, parts = magsd_loss(RAW, views, LABELS, view_weights=(1., 0.5, 2.))

    third = 1 / 3
    d_uniform = (abs(P0[0] - third) + 2 * abs(P0[1] - third) + 2 * abs(0.01 - third) + abs(0.98 - third)) / 6
    q_hi, q_lo = 1 / (1 + 2 * math.exp(-10)), math.exp(-10) / (1 + 2 * math.exp(-10))
    d_peaked = (abs(P0[0] - q_lo) + abs(P0[1] - q_lo) + abs(P0[2] - q_hi)
                + abs(0.01 - q_lo) + abs(0.98 - q_hi) + abs(0.01 - q_lo)) / 6
    ce_raw = (-math.log(P0[0]) - math.log(third)) / 2
    expected = ce_raw + 1. * d_uniform + 0.5 * d_uniform + 2. * d_peaked

    assert math.isclose(parts['ce_raw'].item(), ce_raw, rel_tol=1e-5)
    assert math.isclose(parts['distance_mixup'].item(), d_uniform, rel_tol=1e-5)
    assert math.isclose(parts['distance_patching'].item(), d_peaked, rel_tol=1e-5)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert math.isclose(parts['ce_dimming'].item(), math.log(3), rel_tol=1e-5)
    assert parts['accuracy'].item() == 0.5  # image 1's argmax over equal logits is class 0


def test_gradients_reach_the_views_but_not_the_raw_target():
    raw = RAW.clone().requires_grad_()
    views = [torch.randn(2, 3, generator=torch.Generator().manual_seed(i)).requires_grad_() for i in range(3)]
    loss, _ = magsd_loss(raw, views, LABELS)
    loss.backward()
    for view in views:
        assert view.grad is not None and view.grad.abs().sum() > 0
    # the raw logits get exactly the cross-entropy gradient: the distances see a detached target
    ce_grad = (RAW.softmax(-1) - F.one_hot(LABELS, 3)) / 2
    torch.testing.assert_close(raw.grad, ce_grad)


def test_a_view_weighted_zero_does_not_move_the_loss():
    base = [torch.zeros(2, 3)] * 3
    moved = base[:2] + [torch.randn(2, 3)]
    weights = (1., 1., 0.)
    assert magsd_loss(RAW, base, LABELS, view_weights=weights)[0] == magsd_loss(RAW, moved, LABELS, view_weights=weights)[0]


def test_soft_distance_is_zero_for_identical_predictions():
    logits = torch.randn(4, 5)
    assert soft_distance(logits.softmax(-1), logits).item() == pytest.approx(0, abs=1e-7)


def test_mismatched_view_counts_are_refused():
    with pytest.raises(ValueError, match='must be as many'):
        magsd_loss(RAW, [torch.zeros(2, 3)] * 2, LABELS)


def test_class_weights_weight_the_raw_cross_entropy_only():
    views = [torch.zeros(2, 3)] * 3
    plain, _ = magsd_loss(RAW, views, LABELS)
    weighted, parts = magsd_loss(RAW, views, LABELS, class_weights=(3., 1., 1.))
    ce = (3 * -math.log(P0[0]) + 1 * -math.log(1 / 3)) / (3 + 1)  # PyTorch's weighted mean
    assert math.isclose(parts['ce_raw'].item(), ce, rel_tol=1e-5)
    distances = sum(parts[f'distance_{v}'] for v in ('mixup', 'dimming', 'patching'))
    assert math.isclose(weighted.item(), ce + distances.item(), rel_tol=1e-5)
    assert weighted.item() != plain.item()


def test_map_overlap_is_0_for_maps_on_separate_places_and_1_for_one_map_repeated():
    apart = torch.zeros(2, 3, 4, 4)
    apart[:, 0, 0, 0] = apart[:, 1, 2, 2] = apart[:, 2, 3, 1] = 1.
    assert float(map_overlap(apart)) == 0.
    same = torch.rand(2, 1, 4, 4).expand(2, 3, 4, 4)
    assert float(map_overlap(same)) == pytest.approx(1.)
    dead = apart.clone()
    dead[:, 2] = 0  # a map of zeros shares no place with any other
    assert float(map_overlap(dead)) == 0. and torch.isfinite(map_overlap(torch.zeros(1, 2, 3, 3)))
