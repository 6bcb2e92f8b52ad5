"""Augmentations that change how a film was taken, not what it shows: what differs between hospitals.

Hospitals differ in their machines, exposure, processing, resolution and compression, and in the
markers and text they burn into the border. A classifier that learns those has learned the
hospital. Each step here draws one such difference at random (with its own probability) and leaves
the anatomy where it is: no flips (the heart's side is anatomy), no large rotations.

Steps (names for ``--augment``, joined to a block with '+', e.g. ``mild+hospital``):

* ``intensity``: gamma (0.67-1.5), a window (the darkest 0-10% and brightest 0-10% clipped) and a
  contrast change (0.75-1.33) about the film's mean;
* ``blur``: Gaussian blur (sigma 0.3-1.2 px) or unsharp masking (amount 0.3-1.5), each p = 0.25;
* ``noise``: Gaussian noise, standard deviation 0.005-0.04 of the grey range;
* ``jpeg``: JPEG re-encoding at quality 20-90;
* ``resample``: down to 30-80% of the side and back up: the detail of a smaller or more compressed original;
* ``geometry``: scale 0.9-1.1, shift up to 5% of the side, rotation up to 5 degrees;
* ``border``: one or two grey rectangles on the film's edge, where markers and text sit (up to 15% deep);
* ``hospital``: all of the above.

Inputs and outputs are (1, H, W) float tensors in [0, 1] (after CLAHE, before normalisation); every
random number comes from torch's global generator, which the dataset seeds per film and epoch.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = ['ACQUISITION_STEPS', 'acquisition_steps']


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _chance(p: float) -> bool:
    return float(torch.rand(())) < p


class RandomIntensity(nn.Module):
    """Gamma, window and contrast: the exposure and the look-up table of another machine."""

    def __init__(self, p: float = 0.8):
        super().__init__()
        self.p = p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not _chance(self.p):
            return image
        image = image.clamp(0, 1) ** (2 ** _uniform(-0.585, 0.585))  # gamma 0.67 to 1.5
        low, high = _uniform(0, 0.1), _uniform(0.9, 1.)
        image = ((image - low) / (high - low)).clamp(0, 1)
        mean = image.mean()
        return ((image - mean) * 2 ** _uniform(-0.415, 0.415) + mean).clamp(0, 1)  # contrast 0.75 to 1.33


class RandomBlurSharpen(nn.Module):
    """A softer or a sharper film: another detector's resolution, another processing's edge enhancement."""

    def __init__(self, p: float = 0.25):
        super().__init__()
        self.p = p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        draw = float(torch.rand(()))
        if draw >= 2 * self.p:
            return image
        blurred = TF.gaussian_blur(image, kernel_size=[5, 5], sigma=[_uniform(0.3, 1.2)] * 2)
        if draw < self.p:
            return blurred
        return (image + _uniform(0.3, 1.5) * (image - blurred)).clamp(0, 1)


class RandomNoise(nn.Module):
    """Quantum and electronic noise of another exposure and detector."""

    def __init__(self, p: float = 0.3):
        super().__init__()
        self.p = p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not _chance(self.p):
            return image
        return (image + torch.randn_like(image) * _uniform(0.005, 0.04)).clamp(0, 1)


class RandomJpeg(nn.Module):
    """JPEG re-encoding (OpenCV's codec, as CLAHE's): the compression of another archive or export."""

    def __init__(self, p: float = 0.3, quality: Tuple[int, int] = (20, 90)):
        super().__init__()
        self.p, self.quality = p, quality

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        import cv2  # here, like Clahe's: a data config needs no OpenCV

        if not _chance(self.p):
            return image
        quality = int(torch.randint(self.quality[0], self.quality[1] + 1, ()))
        pixels = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        ok, encoded = cv2.imencode('.jpg', pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # OpenCV encodes any 8-bit grey image; a failure would be its own
            raise RuntimeError('OpenCV could not JPEG-encode an augmented film')
        return torch.from_numpy(cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)).float().div_(255).unsqueeze(0)


class RandomResample(nn.Module):
    """Down-and-up sampling: a film that was smaller, or saved smaller, before it was resized to the input."""

    def __init__(self, p: float = 0.3, scale: Tuple[float, float] = (0.3, 0.8)):
        super().__init__()
        self.p, self.scale = p, scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not _chance(self.p):
            return image
        size = list(image.shape[-2:])
        factor = _uniform(*self.scale)
        small = F.interpolate(image[None], size=[max(8, round(s * factor)) for s in size], mode='bilinear',
                              antialias=True, align_corners=False)
        return F.interpolate(small, size=size, mode='bilinear', align_corners=False)[0].clamp(0, 1)


class RandomBorderErase(nn.Module):
    """One or two grey rectangles on the film's edge: markers, text and collimation where a hospital puts them."""

    def __init__(self, p: float = 0.5, depth: float = 0.15):
        super().__init__()
        self.p, self.depth = p, depth

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not _chance(self.p):
            return image
        image = image.clone()
        height, width = image.shape[-2:]
        for _ in range(1 + int(_chance(0.5))):
            side = int(torch.randint(4, ()))  # top, bottom, left, right
            across, along = (height, width) if side < 2 else (width, height)
            deep = max(1, round(across * _uniform(0.03, self.depth)))
            long = max(1, round(along * _uniform(0.15, 0.5)))
            start = int(torch.randint(max(1, along - long + 1), ()))
            rows = slice(0, deep) if side == 0 else slice(height - deep, height) if side == 1 else slice(start, start + long)
            cols = slice(start, start + long) if side < 2 else slice(0, deep) if side == 2 else slice(width - deep, width)
            image[..., rows, cols] = _uniform(0, 1)
        return image


def _geometry() -> nn.Module:
    return v2.RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.9, 1.1))


ACQUISITION_STEPS: Dict[str, type] = {
    'intensity': RandomIntensity, 'blur': RandomBlurSharpen, 'noise': RandomNoise, 'jpeg': RandomJpeg,
    'resample': RandomResample, 'geometry': _geometry, 'border': RandomBorderErase,
}
# the order they run in: the geometry of the exposure first, then what the machine and the archive did to it
_ORDER = ('geometry', 'intensity', 'blur', 'resample', 'noise', 'jpeg', 'border')


def acquisition_steps(names: List[str]) -> List[nn.Module]:
    """The steps of these names ('hospital': all), in their fixed order."""
    wanted = set(_ORDER) if 'hospital' in names else set(names)
    return [ACQUISITION_STEPS[name]() for name in _ORDER if name in wanted]
