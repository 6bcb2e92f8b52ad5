"""Attention-guided augmentations: exact boxes and pixels, properties, randomness and compilation."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from magsd_timm.method.augment import (
    NUM_UNIFORMS,
    AttentionAugmentConfig,
    attention_boxes,
    attention_crop,
    attention_regions_from_uniforms,
    attention_views,
    attention_views_from_uniforms,
    draw_uniforms,
    mean_attention_crop,
    sample_map_indices,
    zoom_boxes,
)

CFG = AttentionAugmentConfig()


def _images(b: int, h: int, w: int, c: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed)) + 0.1


def _block_attention(h: int = 20, w: int = 20) -> torch.Tensor:
    """One map at image resolution (bilinear resize is then the identity): ones on rows 5-9, cols 8-13."""
    attention = torch.zeros(1, 1, h, w)
    attention[..., 5:10, 8:14] = 1.
    return attention


def _uniforms(theta_frac: float = .5, offsets=(0., 0.)) -> torch.Tensor:
    return torch.tensor([[.5, .5, .5, theta_frac, theta_frac, theta_frac, *offsets]])


def test_box_is_the_padded_bounding_box_as_the_authors_compute_it():
    maps = _block_attention()[:, 0]
    # rows 5..9 and cols 8..13, padded by 0.1 * 20 = 2: rows [3, 11), cols [6, 15)
    assert attention_boxes(maps, torch.tensor([.5]), .1).tolist() == [[3, 11, 6, 15]]
    # padding clipped at the borders
    edge = torch.zeros(1, 20, 20)
    edge[0, 0:3, 17:20] = 1.
    assert attention_boxes(edge, torch.tensor([1.]), .1).tolist() == [[0, 4, 15, 20]]
    # no padding on a single pixel: still one pixel wide, never empty
    dot = torch.zeros(1, 20, 20)
    dot[0, 7, 4] = 1.
    assert attention_boxes(dot, torch.tensor([1.]), 0.).tolist() == [[7, 8, 4, 5]]


def test_mixup_is_0_6_image_plus_0_4_zoom_of_the_box():
    images = _images(1, 20, 20)
    views = attention_views_from_uniforms(images, _block_attention(), _uniforms())
    zoom = F.interpolate(images[..., 3:11, 6:15], size=(20, 20), mode='bilinear', align_corners=False)
    torch.testing.assert_close(views.mixup, .6 * images + .4 * zoom)


def test_dimming_scales_the_attended_region_by_0_001():
    images = _images(1, 20, 20)
    views = attention_views_from_uniforms(images, _block_attention(), _uniforms())
    attended = _block_attention().bool()
    torch.testing.assert_close(views.dimming[attended], images[attended] * .001)
    torch.testing.assert_close(views.dimming[~attended], images[~attended] * 1.001)


@pytest.mark.parametrize('offsets, top_left', [((0., 0.), (0, 0)), ((.9999, .9999), (12, 11)), ((.5, .5), (6, 6))])
def test_patching_pastes_the_box_at_native_size_at_the_drawn_position(offsets, top_left):
    images = _images(1, 20, 20)
    views = attention_views_from_uniforms(images, _block_attention(), _uniforms(offsets=offsets))
    ty, tx = top_left  # box is 8 x 9 pixels: positions 0..12 down and 0..11 across
    expected = images.clone()
    expected[..., ty:ty + 8, tx:tx + 9] = images[..., 3:11, 6:15]
    torch.testing.assert_close(views.patching, expected)


def test_cropping_zooms_the_box_to_the_full_image():
    images = _images(1, 20, 20)
    generator = torch.Generator().manual_seed(0)
    cropped = attention_crop(images, _block_attention(), generator)
    zoom = F.interpolate(images[..., 3:11, 6:15], size=(20, 20), mode='bilinear', align_corners=False)
    torch.testing.assert_close(cropped, zoom)


def test_zoom_matches_per_image_crop_and_interpolate():
    images = _images(3, 37, 29, c=3)
    boxes = torch.tensor([[0, 37, 0, 29], [5, 6, 3, 20], [10, 30, 28, 29]])
    zoomed = zoom_boxes(images, boxes)
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        expected = F.interpolate(images[i:i + 1, :, y0:y1, x0:x1], size=(37, 29), mode='bilinear', align_corners=False)
        torch.testing.assert_close(zoomed[i:i + 1], expected)


def test_maps_are_drawn_with_probability_proportional_to_sqrt_of_their_sum():
    attention = torch.zeros(1, 3, 2, 2)
    attention[0, 0] = 1.   # sum 4  -> sqrt 2
    attention[0, 1] = 4.   # sum 16 -> sqrt 4
    attention[0, 2] = 0.   # sum 0  -> sqrt 1e-6
    expected = torch.tensor([2., 4., 1e-6]) / (6. + 1e-6)
    u = torch.rand(1, 60000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample_map_indices(attention, u)[0], minlength=3).float() / u.numel()
    torch.testing.assert_close(counts, expected, atol=0.01, rtol=0)
    # CDF boundaries: u below 1/3 takes map 0, above takes map 1
    picks = sample_map_indices(attention, torch.tensor([[0.3333, 0.3334, 0.9999]]))
    assert picks.tolist() == [[0, 1, 1]]


def test_unattended_maps_leave_every_view_equal_to_the_image():
    images = _images(2, 24, 24)
    views = attention_views(images, torch.zeros(2, 4, 3, 3), torch.Generator().manual_seed(0))
    for view in views:
        assert torch.equal(view, images)
    assert torch.equal(attention_crop(images, torch.zeros(2, 4, 3, 3)), images)


def test_same_seed_gives_the_same_views_and_another_seed_other_views():
    images, attention = _images(4, 32, 32), torch.rand(4, 8, 4, 4, generator=torch.Generator().manual_seed(1))

    def views(seed):
        return attention_views(images, attention, torch.Generator().manual_seed(seed))

    for a, b in zip(views(7), views(7)):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(views(7), views(8)))


def test_uniforms_come_from_the_cpu_generator_whatever_the_device():
    u = draw_uniforms(5, torch.Generator().manual_seed(3), torch.device('cpu'))
    assert u.shape == (5, NUM_UNIFORMS)
    assert torch.equal(u, torch.rand(5, NUM_UNIFORMS, generator=torch.Generator().manual_seed(3)))


def test_views_compile_as_one_graph_and_match_eager():
    images, attention = _images(4, 32, 32), torch.rand(4, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    uniforms = draw_uniforms(4, torch.Generator().manual_seed(0))
    compiled = torch.compile(attention_views_from_uniforms, fullgraph=True, dynamic=False)
    eager = attention_views_from_uniforms(images, attention, uniforms)
    for got, expected in zip(compiled(images, attention, uniforms), eager):
        torch.testing.assert_close(got, expected)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match='mixup_theta'):
        AttentionAugmentConfig(mixup_theta=(0.6, 0.4))
    with pytest.raises(ValueError, match='mixup_image_weight'):
        AttentionAugmentConfig(mixup_image_weight=1.5)


def _reference_views(images, attention, uniforms, cfg=CFG):
    """Per-image Python reference of the three views, written from the method's description."""
    out = {'mixup': [], 'dimming': [], 'patching': []}
    height, width = images.shape[-2:]
    for i in range(images.shape[0]):
        image = images[i:i + 1]
        weights = [math.sqrt(float(a.sum()) + cfg.eps) for a in attention[i]]
        total, cdf, picks = sum(weights), 0., []
        bounds = []
        for w in weights:
            cdf += w / total
            bounds.append(cdf)
        for u in uniforms[i, :3].tolist():
            picks.append(min(sum(1 for b in bounds if b <= u), len(weights) - 1))
        for k, (name, theta_range) in enumerate(
                [('mixup', cfg.mixup_theta), ('dimming', cfg.dim_theta), ('patching', cfg.patch_theta)]):
            amap = F.interpolate(attention[i:i + 1, picks[k]:picks[k] + 1], size=(height, width),
                                 mode='bilinear', align_corners=False)[0, 0]
            peak = float(amap.max())
            if peak <= 0:
                out[name].append(image)
                continue
            lo, hi = theta_range
            theta = (lo + (hi - lo) * float(uniforms[i, 3 + k])) * peak
            rows, cols = (amap >= theta).nonzero(as_tuple=True)
            y0 = max(int(rows.min() - cfg.padding * height), 0)
            y1 = max(min(int(rows.max() + cfg.padding * height), height), y0 + 1)
            x0 = max(int(cols.min() - cfg.padding * width), 0)
            x1 = max(min(int(cols.max() + cfg.padding * width), width), x0 + 1)
            if name == 'mixup':
                zoom = F.interpolate(image[..., y0:y1, x0:x1], size=(height, width), mode='bilinear', align_corners=False)
                out[name].append(cfg.mixup_image_weight * image + (1 - cfg.mixup_image_weight) * zoom)
            elif name == 'dimming':
                out[name].append(image * ((amap < theta).float() + cfg.dim_factor))
            else:
                ty = min(int(float(uniforms[i, 6]) * (height - (y1 - y0) + 1)), height - (y1 - y0))
                tx = min(int(float(uniforms[i, 7]) * (width - (x1 - x0) + 1)), width - (x1 - x0))
                pasted = image.clone()
                pasted[..., ty:ty + y1 - y0, tx:tx + x1 - x0] = image[..., y0:y1, x0:x1]
                out[name].append(pasted)
    return {k: torch.cat(v) for k, v in out.items()}


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3), height=st.integers(32, 72), width=st.integers(32, 72),
    maps=st.integers(1, 6), grid=st.integers(1, 9), channels=st.sampled_from([1, 3]),
    sparsity=st.floats(0., 0.95), seed=st.integers(0, 2 ** 16),
)
def test_views_match_the_per_image_reference_on_random_maps(batch, height, width, maps, grid, channels, sparsity, seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, channels, height, width, generator=generator)
    attention = torch.rand(batch, maps, grid, grid, generator=generator)
    attention = attention * (torch.rand(batch, maps, grid, grid, generator=generator) > sparsity)
    uniforms = draw_uniforms(batch, generator)

    views = attention_views_from_uniforms(images, attention, uniforms)
    expected = _reference_views(images, attention, uniforms)
    for name in ('mixup', 'dimming', 'patching'):
        got = getattr(views, name)
        assert got.shape == images.shape and torch.isfinite(got).all()
        torch.testing.assert_close(got, expected[name], msg=name)
    # dimming changes pixels only by the two documented factors
    ratio = views.dimming / images
    dimmed = torch.isclose(ratio, torch.tensor(CFG.dim_factor))
    assert (dimmed | torch.isclose(ratio, torch.tensor(1 + CFG.dim_factor)) | torch.isclose(ratio, torch.tensor(1.))).all()


def test_half_precision_images_are_zoomed_at_float32_coordinates():
    images = _images(2, 224, 224)
    boxes = torch.tensor([[13, 201, 7, 190], [0, 224, 100, 224]])
    half = zoom_boxes(images.to(torch.bfloat16), boxes)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), zoom_boxes(images, boxes), atol=0.02, rtol=0)


def test_mean_attention_crop_zooms_the_attended_box_deterministically():
    images = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    attention = torch.zeros(2, 3, 8, 8)
    attention[0, :, 2:4, 4:6] = 1.  # image 0 attends to rows 8-16, columns 16-24 (of 32)
    cropped = mean_attention_crop(images, attention, theta=0.5, padding=0.)
    assert torch.equal(cropped, mean_attention_crop(images, attention, theta=0.5, padding=0.))
    assert torch.equal(cropped[1], images[1])  # no attention: the image itself
    region = images[0, 0, 6:18, 14:26]  # the box of the upsampled map, a little wider than the cells
    assert region.min() - 1 <= cropped[0].min() and cropped[0].max() <= region.max() + 1


def test_the_regions_are_where_the_views_act_and_empty_without_attention():
    attention = torch.zeros(2, 1, 8, 8)
    attention[0, 0, 2:4, 4:6] = 1.  # image 0 attends to one block; image 1 to nothing
    uniforms = torch.full((2, NUM_UNIFORMS), 0.5)
    config = AttentionAugmentConfig(padding=0.)
    regions = attention_regions_from_uniforms(attention, uniforms, (16, 16), config)
    assert regions.shape == (2, 3, 16, 16) and not regions[1].any()
    core, near = torch.zeros(16, 16, dtype=torch.bool), torch.zeros(16, 16, dtype=torch.bool)
    core[5:7, 9:11] = near[3:9, 7:13] = True  # the block's centre, and the block grown by a pixel at image size
    for region in regions[0]:
        assert region[core].all() and not region[~near].any()
    images = torch.rand(2, 1, 16, 16)
    mixup, dimming, patching = attention_views_from_uniforms(images, attention, uniforms, config)
    torch.testing.assert_close(dimming[0, 0][~regions[0, 1]], images[0, 0][~regions[0, 1]] * (1 + config.dim_factor))
    assert (dimming[0, 0][regions[0, 1]] < images[0, 0][regions[0, 1]] * 0.01).all()  # darkened where it says
