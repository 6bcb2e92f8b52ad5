"""Where models look: the heat maps by name, Grad-CAM, the pointing game, overlays."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import magsd_timm  # noqa: F401  (registers the models)
from magsd_timm.errors import BadInputError
from magsd_timm.evaluation.explain import MAPS, check_map, grad_cam, heat_maps, overlay_title, pointing_game, save_overlay
from magsd_timm.models import display_map


def _ma_net(num_maps: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model('magsd_custom', backbone='test_resnet', num_maps=num_maps, num_classes=3).eval()


def test_the_pointing_game_counts_peaks_inside_grown_boxes():
    maps = torch.zeros(3, 1, 20, 20)
    maps[0, 0, 5, 5] = maps[1, 0, 12, 3] = maps[2, 0, 9, 9] = 1  # (y, x)
    boxes = torch.tensor([[4, 4, 8, 8], [4, 4, 8, 8], [4, 4, 8, 8]])  # x0, y0, x1 (excl.), y1 (excl.)
    assert pointing_game(maps, boxes).tolist() == [True, False, False]
    assert pointing_game(maps, boxes, tolerance=2).tolist() == [True, False, True]


def test_grad_cam_peaks_where_the_class_evidence_is():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[-1].weight.copy_(torch.tensor([[1.], [-1.]]))
        model[-1].bias.zero_()
    images = torch.zeros(1, 1, 16, 16)
    images[0, 0, 10, 3] = 5.
    logits, cam = grad_cam(model, conv, images)
    assert logits.argmax().item() == 0 and cam.shape == (1, 1, 16, 16)
    assert divmod(cam.flatten().argmax().item(), 16) == (10, 3)
    assert all(p.grad is None for p in model.parameters())  # the model is left as it was


def test_display_map_and_overlay(tmp_path):
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4, num_classes=2).eval()
    images = torch.randn(2, 1, 64, 64)
    shown = heat_maps(model, images, 'mean')
    logits, heat = shown.logits, shown.maps
    assert logits.shape == (2, 2) and heat.shape == (2, 1, 64, 64) and (heat >= 0).all()
    save_overlay(tmp_path / 'o.png', images[0, 0], heat[0, 0], overlay_title('a.png', 'normal', 0.93, 'mean map: x'),
                 boxes=[(3, 4, 20, 30)])
    assert (tmp_path / 'o.png').read_bytes()[:4] == b'\x89PNG'
    save_overlay(tmp_path / 'zero.png', images[0, 0], torch.zeros(64, 64), 'an empty map draws')
    assert (tmp_path / 'zero.png').read_bytes()[:4] == b'\x89PNG'


def test_the_mean_map_is_the_display_map():
    model, images = _ma_net(), torch.randn(2, 1, 64, 64)
    heat = heat_maps(model, images, 'mean')
    with torch.no_grad():
        _, attention = model.forward_with_attention(images)
    torch.testing.assert_close(heat.maps, display_map(attention, (64, 64)))
    torch.testing.assert_close(heat.logits, model(images))
    assert heat.name == 'mean' and heat.attention.shape == (2, 4, 2, 2)


def test_the_evidence_and_top_maps_show_only_the_maps_the_predicted_class_is_scored_by():
    model, images = _ma_net(), torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # the classifier reads map 2's part of the BAP vector only
        weight = model.get_classifier().weight.view(3, 4, -1)
        weight[:, [0, 1, 3]] = 0
        weight[0, 2] = weight[0, 2].abs() + 1  # class 0 is the prediction: its part is positive
        _, attention = model.forward_with_attention(images)
    only = F.interpolate(attention[:, 2:3], size=(64, 64), mode='bilinear', align_corners=False)
    for name in ('evidence', 'top'):
        heat = heat_maps(model, images, name)
        assert heat.logits.argmax(dim=-1).tolist() == [0, 0]
        torch.testing.assert_close(heat.maps, only)  # weighted by its share of the logit: itself
    assert not torch.allclose(heat_maps(model, images, 'mean').maps, only)


def test_the_evidence_weights_sum_to_the_predicted_logit():
    from magsd_timm.evaluation.explain import _map_parts  # the decomposition the evidence map is weighted by

    model, images = _ma_net(), torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        features, attention = model.forward_features_and_attention(images)
        logits, parts = _map_parts(model, features, attention)
    assert parts.shape == (3, 4)
    torch.testing.assert_close(parts.sum(dim=1), logits.max(dim=1).values)


def test_grad_cam_by_name_on_ma_net_keeps_its_attention_for_test_time_augmentation():
    model, images = _ma_net(), torch.randn(2, 1, 64, 64)
    heat = heat_maps(model, images, 'grad-cam')
    assert heat.name == 'grad-cam' and heat.maps.shape == (2, 1, 64, 64) and heat.attention.shape == (2, 4, 2, 2)
    torch.testing.assert_close(heat.logits, model(images))


@pytest.mark.parametrize('name', ['evidence', 'mean', 'top', 'grad-cam'])
def test_a_model_without_attention_maps_gets_grad_cam_and_says_so(name):
    torch.manual_seed(0)
    model, images = timm.create_model('test_resnet', in_chans=1, num_classes=3).eval(), torch.randn(2, 1, 64, 64)
    heat = heat_maps(model, images, name)
    torch.testing.assert_close(heat.maps, grad_cam(model, model.get_submodule(model.feature_info[-1]['module']),
                                                   images)[1])
    assert heat.attention is None and heat.name == 'grad-cam' and heat.asked == name
    assert heat.description.startswith('grad-cam map: Grad-CAM of the predicted class')
    assert heat.description.endswith(f'(asked for {name}, but this model has no attention maps)') == (name != 'grad-cam')


def test_an_unknown_map_is_refused_with_the_choices():
    with pytest.raises(BadInputError, match=r"unknown map 'evidense'; the choices are evidence, mean, top, grad-cam\. "
                                            r'Close matches: evidence'):
        check_map('evidense')
    assert [check_map(name) for name in MAPS] == list(MAPS)


def test_an_overlay_names_the_film_the_class_its_probability_and_the_map():
    title = overlay_title('a.png', 'COVID-19', 0.914, 'evidence map: what it is', '62% in the boxes')
    assert title.split('\n') == ['a.png: COVID-19 (0.91)', 'evidence map: what it is', '62% in the boxes']
