"""Where models look: display maps, Grad-CAM, the pointing game, overlays."""
import timm
import torch
import torch.nn as nn

import magsd_timm  # noqa: F401  (registers the models)
from magsd_timm.evaluation.explain import attention_heatmap, grad_cam, pointing_game, save_overlay


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
    logits, heat = attention_heatmap(model, images)
    assert logits.shape == (2, 2) and heat.shape == (2, 1, 64, 64) and (heat >= 0).all()
    save_overlay(tmp_path / 'o.png', images[0, 0], heat[0, 0], 'normal (0.93)', boxes=[(3, 4, 20, 30)])
    assert (tmp_path / 'o.png').read_bytes()[:4] == b'\x89PNG'
