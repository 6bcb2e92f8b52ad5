"""Each of MA-Net's attention maps measured on its own: flat or peaked, dead or live, where it lies, how the maps
relate, and what the classifier makes of each."""
import math

import pytest
import timm
import torch

import magsd_timm  # noqa: F401  (registers the models)
from magsd_timm.evaluation.attention_maps import classifier_shares, map_statistics

MASK = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
MASK[..., :, :4] = True  # the left half of the image


def test_a_flat_map_is_flat_by_every_figure_and_puts_the_box_share_inside():
    figures = map_statistics(torch.ones(1, 1, 4, 4), MASK)
    assert figures['peak_to_mean'].item() == pytest.approx(1.)
    assert figures['entropy'].item() == pytest.approx(1.)
    assert figures['mass_in_boxes'].item() == pytest.approx(0.5)
    assert figures['dead'].item() == 0. and figures['share_of_attention'].item() == pytest.approx(1.)


def test_a_map_that_is_zero_everywhere_is_dead_and_has_no_other_figure():
    figures = map_statistics(torch.stack([torch.zeros(4, 4), torch.ones(4, 4)])[None], MASK)
    assert figures['dead'].tolist() == [[1., 0.]]
    assert all(math.isnan(figures[k][0, 0].item()) for k in ('peak_to_mean', 'entropy', 'mass_in_boxes'))
    assert figures['share_of_attention'][0].tolist() == pytest.approx([0., 1.])


def test_two_peaked_maps_on_opposite_sides_cancel_into_a_flat_mean():
    left, right = torch.zeros(4, 4), torch.zeros(4, 4)
    left[:, 0], right[:, 3] = 1., 1.
    figures = map_statistics(torch.stack([left, right])[None], MASK)
    assert (figures['peak_to_mean'] > 2).all() and figures['mean_correlation'].item() < -0.3
    assert figures['mass_in_boxes'][0].tolist() == pytest.approx([1., 0.], abs=0.05)
    mean_map = map_statistics(torch.stack([left, right]).mean(dim=0)[None, None], MASK)
    assert mean_map['peak_to_mean'].item() < figures['peak_to_mean'].min().item()  # the mean is flatter than each


def test_the_classifier_share_of_each_map_is_its_part_of_the_bap_weights():
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4, num_classes=3)
    with torch.no_grad():
        model.get_classifier().weight.zero_()
        model.get_classifier().weight.view(3, 4, -1)[:, 2] = 1.  # only map 2's part of the BAP vector is used
    assert classifier_shares(model).tolist() == pytest.approx([0., 0., 1., 0.])
