"""Attention-guided augmentations of MAG-SD: mixup, dimming, patching (and WS-DAN's cropping).

Each image draws 3 of its M attention maps with replacement, map k with probability proportional
to sqrt(sum_hw A_k + eps); map #1 drives mixup, #2 dimming, #3 patching. A drawn map is upsampled
bilinearly (align_corners=False) to the image size and thresholded at theta = U(lo, hi) * max(map).

* box: bounding box of (map >= theta), rows [y0, y1) and columns [x0, x1) with
  y0 = max(trunc(ymin - p * H), 0) and y1 = min(trunc(ymax + p * H), H) (p = padding; the same for
  columns with W), as the authors' code computes it; a box is never empty (y1 >= y0 + 1).
* mixup: w * image + (1 - w) * the box zoomed to the full size (bilinear, align_corners=False), w = 0.6.
* dimming: image * ((map < theta) + 0.001): the attended region is scaled by 0.001 (the rest by
  1.001, as the authors' formula gives).
* patching: a copy of the box content, at its native size, pasted at a uniformly random position
  (fully inside) of a copy of the same image.
* cropping (WS-DAN, unused by MAG-SD): the box zoomed to the full size.

A map with no attention at all (all zero, so theta = 0) leaves its view equal to the image: its box
would be the whole image and dimming would darken everything, which teaches nothing.

Everything is batched tensor code without host synchronisation or data-dependent shapes, so it runs
at full speed on a GPU and compiles with ``torch.compile(fullgraph=True)``. All randomness comes
from uniform numbers drawn with a ``torch.Generator`` on the CPU, so a seed gives the same views on
any device.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ..models.magsd import display_map

__all__ = [
    'AttentionAugmentConfig', 'AttentionViews', 'NUM_UNIFORMS', 'attention_boxes', 'attention_crop',
    'attention_regions_from_uniforms',
    'attention_views', 'attention_views_from_uniforms', 'draw_uniforms', 'mean_attention_crop', 'sample_map_indices',
    'zoom_boxes',
]

# uniforms per image: 3 map draws, 3 threshold fractions (mixup, dimming, patching), 2 patch offsets
NUM_UNIFORMS = 8


@dataclass(frozen=True)
class AttentionAugmentConfig:
    """Thresholds, padding and weights of the attention-guided augmentations (defaults: the authors')."""
    mixup_theta: Tuple[float, float] = (0.4, 0.6)
    mixup_image_weight: float = 0.6
    dim_theta: Tuple[float, float] = (0.2, 0.5)
    dim_factor: float = 0.001
    patch_theta: Tuple[float, float] = (0.4, 0.6)
    crop_theta: Tuple[float, float] = (0.4, 0.6)
    padding: float = 0.1
    eps: float = 1e-12

    def __post_init__(self):
        for name in ('mixup_theta', 'dim_theta', 'patch_theta', 'crop_theta'):
            lo, hi = getattr(self, name)
            if not 0. <= lo <= hi <= 1.:
                raise ValueError(f'{name} must satisfy 0 <= lo <= hi <= 1, got {(lo, hi)}.')
        if not 0. <= self.mixup_image_weight <= 1.:
            raise ValueError(f'mixup_image_weight must lie in [0, 1], got {self.mixup_image_weight}.')
        if self.padding < 0. or self.dim_factor < 0.:
            raise ValueError('padding and dim_factor must be >= 0.')


class AttentionViews(NamedTuple):
    """The three harder views of a batch, each shaped like the images."""
    mixup: torch.Tensor
    dimming: torch.Tensor
    patching: torch.Tensor


def draw_uniforms(
        batch_size: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Uniform numbers (B, NUM_UNIFORMS) for the views, drawn on the CPU so every device sees the same."""
    u = torch.rand(batch_size, NUM_UNIFORMS, generator=generator)
    device = torch.device(device) if device is not None else u.device
    if device.type == 'cuda':
        return u.pin_memory().to(device, non_blocking=True)  # no wait on the device's queue
    return u.to(device)


def sample_map_indices(attention: torch.Tensor, u: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Map indices (B, n) drawn with replacement, p(k) ~ sqrt(sum A_k + eps), by inverting the CDF at u (B, n)."""
    weights = torch.sqrt(attention.float().flatten(2).sum(-1) + eps)
    cdf = weights.cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    return torch.searchsorted(cdf, u.float().contiguous(), right=True).clamp_(max=attention.shape[1] - 1)


def _select_upsampled(attention: torch.Tensor, indices: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    h, w = attention.shape[-2:]
    maps = attention.float().gather(1, indices[:, :, None, None].expand(-1, -1, h, w))
    return F.interpolate(maps, size=size, mode='bilinear', align_corners=False)


def _thresholds(maps: torch.Tensor, frac: torch.Tensor, theta: Tuple[float, float]) -> torch.Tensor:
    lo, hi = theta
    return (lo + (hi - lo) * frac) * maps.amax(dim=(-2, -1))


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.uint8).argmax(dim=-1)  # argmax returns the first maximal index


def attention_boxes(maps: torch.Tensor, theta: torch.Tensor, padding: float) -> torch.Tensor:
    """Padded bounding boxes (B, 4) = (y0, y1, x0, x1), end exclusive, of maps (B, H, W) >= theta (B,)."""
    height, width = maps.shape[-2:]
    mask = maps >= theta[:, None, None]
    rows, cols = mask.any(dim=-1), mask.any(dim=-2)
    ymin, ymax = _first_true(rows), height - 1 - _first_true(rows.flip(-1))
    xmin, xmax = _first_true(cols), width - 1 - _first_true(cols.flip(-1))
    pad_y, pad_x = padding * height, padding * width
    y0 = (ymin - pad_y).trunc().long().clamp(min=0)
    x0 = (xmin - pad_x).trunc().long().clamp(min=0)
    y1 = torch.maximum((ymax + pad_y).trunc().long().clamp(max=height), y0 + 1)
    x1 = torch.maximum((xmax + pad_x).trunc().long().clamp(max=width), x0 + 1)
    return torch.stack([y0, y1, x0, x1], dim=-1)


def _source_coords(start: torch.Tensor, end: torch.Tensor, size: int) -> torch.Tensor:
    """Where each of `size` output pixels samples a [start, end) span, as F.interpolate does it."""
    start, end = start.float()[:, None], end.float()[:, None]
    out = torch.arange(size, device=start.device, dtype=torch.float32)[None]
    src = start + (out + 0.5) * (end - start) / size - 0.5
    return torch.minimum(torch.maximum(src, start), end - 1)


def zoom_boxes(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's box (B, 4) resized bilinearly (align_corners=False) to the full image size."""
    b, _, height, width = images.shape
    ys = _source_coords(boxes[:, 0], boxes[:, 1], height)
    xs = _source_coords(boxes[:, 2], boxes[:, 3], width)
    grid = torch.stack([
        (2 * xs / max(width - 1, 1) - 1)[:, None, :].expand(b, height, width),
        (2 * ys / max(height - 1, 1) - 1)[:, :, None].expand(b, height, width),
    ], dim=-1)
    # sampled in float32: half-precision grid coordinates would be off by up to a pixel at 224 px
    zoomed = F.grid_sample(images.float(), grid, mode='bilinear', padding_mode='border', align_corners=True)
    return zoomed.to(images.dtype)


def _box_masks(boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Masks (B, H, W) of boxes (B, 4) = (y0, y1, x0, x1), end exclusive."""
    yy = torch.arange(size[0], device=boxes.device)[None, :, None]
    xx = torch.arange(size[1], device=boxes.device)[None, None, :]
    y0, y1, x0, x1 = (v[:, None, None] for v in boxes.unbind(-1))
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _paste_boxes(images: torch.Tensor, boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Copy each box's content, at native size, to a position chosen by offsets (B, 2) in [0, 1)."""
    b, c, height, width = images.shape
    y0, y1, x0, x1 = boxes.unbind(-1)
    bh, bw = y1 - y0, x1 - x0
    ty = (offsets[:, 0] * (height - bh + 1).float()).long().clamp(max=height - bh)
    tx = (offsets[:, 1] * (width - bw + 1).float()).long().clamp(max=width - bw)
    yy = torch.arange(height, device=images.device)[None]
    xx = torch.arange(width, device=images.device)[None]
    inside = _box_masks(torch.stack([ty, ty + bh, tx, tx + bw], dim=-1), (height, width))
    pixel = yy[:, :, None] * width + xx[:, None, :]
    source = (yy - ty[:, None] + y0[:, None])[:, :, None] * width + (xx - tx[:, None] + x0[:, None])[:, None, :]
    index = torch.where(inside, source, pixel).flatten(1)
    return images.flatten(2).gather(2, index[:, None].expand(b, c, -1)).view_as(images)


def _keep_if_unattended(view: torch.Tensor, images: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    return torch.where(attended[:, None, None, None], view, images)


class _Guides(NamedTuple):
    """What guides one batch's views: whether each drawn map attends at all (B, 3), the mixup and patching boxes
    (B, 4) and the dimmed region (B, H, W)."""
    attended: torch.Tensor
    mix_box: torch.Tensor
    dim_region: torch.Tensor
    patch_box: torch.Tensor


def _guides(attention: torch.Tensor, uniforms: torch.Tensor, size: Tuple[int, int],
            config: AttentionAugmentConfig) -> _Guides:
    attention = attention.detach()
    indices = sample_map_indices(attention, uniforms[:, :3], config.eps)
    maps = _select_upsampled(attention, indices, size)  # (B, 3, H, W)
    mix_map, dim_map, patch_map = maps.unbind(1)
    mix_box = attention_boxes(mix_map, _thresholds(mix_map, uniforms[:, 3], config.mixup_theta), config.padding)
    dim_region = dim_map >= _thresholds(dim_map, uniforms[:, 4], config.dim_theta)[:, None, None]
    patch_box = attention_boxes(patch_map, _thresholds(patch_map, uniforms[:, 5], config.patch_theta), config.padding)
    return _Guides(maps.amax(dim=(-2, -1)) > 0, mix_box, dim_region, patch_box)


def attention_regions_from_uniforms(
        attention: torch.Tensor,
        uniforms: torch.Tensor,
        size: Tuple[int, int],
        config: AttentionAugmentConfig = AttentionAugmentConfig(),
) -> torch.Tensor:
    """Where the views of attention_views_from_uniforms act, at image size (B, 3, H, W): the box mixup zooms, the
    region dimming darkens and the box patching copies; empty where a view is the image itself (no attention)."""
    guides = _guides(attention, uniforms, size, config)
    regions = torch.stack([_box_masks(guides.mix_box, size), guides.dim_region, _box_masks(guides.patch_box, size)], 1)
    return regions & guides.attended[:, :, None, None]


def attention_views_from_uniforms(
        images: torch.Tensor,
        attention: torch.Tensor,
        uniforms: torch.Tensor,
        config: AttentionAugmentConfig = AttentionAugmentConfig(),
) -> AttentionViews:
    """Mixup, dimming and patching views of images (B, C, H, W) guided by attention (B, M, h, w)."""
    guides = _guides(attention, uniforms, tuple(images.shape[-2:]), config)
    zoom = zoom_boxes(images, guides.mix_box)
    mixup = config.mixup_image_weight * images + (1 - config.mixup_image_weight) * zoom
    keep = (~guides.dim_region).to(images.dtype) + config.dim_factor
    dimming = images * keep[:, None]
    patching = _paste_boxes(images, guides.patch_box, uniforms[:, 6:8])
    return AttentionViews(*(
        _keep_if_unattended(view, images, guides.attended[:, i]) for i, view in enumerate((mixup, dimming, patching))))


def attention_views(
        images: torch.Tensor,
        attention: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        config: AttentionAugmentConfig = AttentionAugmentConfig(),
) -> AttentionViews:
    """Mixup, dimming and patching views, their randomness drawn from generator."""
    uniforms = draw_uniforms(images.shape[0], generator, images.device)
    return attention_views_from_uniforms(images, attention, uniforms, config)


def attention_crop(
        images: torch.Tensor,
        attention: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        config: AttentionAugmentConfig = AttentionAugmentConfig(),
) -> torch.Tensor:
    """WS-DAN's attention cropping: the padded box of one drawn map, zoomed to the full image."""
    uniforms = draw_uniforms(images.shape[0], generator, images.device)
    attention = attention.detach()
    indices = sample_map_indices(attention, uniforms[:, :1], config.eps)
    crop_map = _select_upsampled(attention, indices, images.shape[-2:])[:, 0]
    theta = _thresholds(crop_map, uniforms[:, 1], config.crop_theta)
    cropped = zoom_boxes(images, attention_boxes(crop_map, theta, config.padding))
    return _keep_if_unattended(cropped, images, crop_map.amax(dim=(-2, -1)) > 0)


def mean_attention_crop(images: torch.Tensor, attention: torch.Tensor, theta: float = 0.1,
                        padding: float = 0.1) -> torch.Tensor:
    """WS-DAN's test-time crop, deterministic: the padded box of the mean map >= theta x its maximum, zoomed."""
    mean_map = display_map(attention.detach(), images.shape[-2:])[:, 0]
    peak = mean_map.amax(dim=(-2, -1))
    cropped = zoom_boxes(images, attention_boxes(mean_map, theta * peak, padding))
    return _keep_if_unattended(cropped, images, peak > 0)
