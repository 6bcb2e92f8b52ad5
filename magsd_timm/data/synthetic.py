"""Synthetic radiograph-like images whose class is a small lesion pattern at a random place.

The class is only visible inside the lesion's box, so a model that classifies them well must look
there: the boxes are the ground truth for measuring where attention maps point (pointing game).
Everything is a function of the seed.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ['LESION_PATTERNS', 'lesion_images']

LESION_PATTERNS = ('disk', 'ring', 'cross', 'bars')


def _pattern(name: str, size: int) -> torch.Tensor:
    """A (size, size) mask of one lesion pattern."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    y, x = torch.meshgrid(coords, coords, indexing='ij')
    radius = (x ** 2 + y ** 2).sqrt() / (size / 2)
    width = max(size // 6, 1)
    if name == 'disk':
        return (radius <= 0.9).float()
    if name == 'ring':
        return ((radius <= 0.95) & (radius >= 0.55)).float()
    if name == 'cross':
        return ((x.abs() < width) | (y.abs() < width)).float()
    if name == 'bars':
        return ((torch.remainder(torch.arange(size), 2 * width) < width).float()[None, :]).expand(size, size).clone()
    raise ValueError(f"Unknown lesion pattern '{name}': choose from {', '.join(LESION_PATTERNS)}.")


def lesion_images(
        n: int, size: int = 96, num_classes: int = 3, lesion: int = 14, contrast: float = 0.35, seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n grey images (n, 1, size, size) in [0, 1], their labels (n,) and lesion boxes (n, 4) as x0, y0, x1, y1."""
    if not 1 <= num_classes <= len(LESION_PATTERNS):
        raise ValueError(f'num_classes must be 1 to {len(LESION_PATTERNS)}, got {num_classes}.')
    if not 4 <= lesion < size:
        raise ValueError(f'lesion size {lesion} must be at least 4 and smaller than the image ({size}).')
    generator = torch.Generator().manual_seed(seed)
    # smooth anatomy-like background: coarse noise upsampled, a vertical gradient, fine grain
    coarse = torch.rand(n, 1, size // 12 + 2, size // 12 + 2, generator=generator)
    images = F.interpolate(coarse, size=(size, size), mode='bicubic', align_corners=False) * 0.3 + 0.25
    images = images + torch.linspace(0, 0.15, size).view(1, 1, size, 1)
    images = images + 0.04 * torch.randn(n, 1, size, size, generator=generator)
    labels = torch.randint(num_classes, (n,), generator=generator)
    corners = torch.randint(size - lesion + 1, (n, 2), generator=generator)
    masks = torch.stack([_pattern(name, lesion) for name in LESION_PATTERNS[:num_classes]])
    for i in range(n):
        x0, y0 = corners[i].tolist()
        images[i, 0, y0:y0 + lesion, x0:x0 + lesion] += contrast * masks[labels[i]]
    boxes = torch.cat([corners, corners + lesion], dim=1)
    return images.clamp(0, 1), labels, boxes
