"""Chest X-ray preprocessing and augmentation as composable steps.

The published pipeline: grey image -> resize to the input size (aspect not kept) -> CLAHE (clip
limit 4.0, 4x4 tiles, on 8 bits) -> training augmentation -> a z-score per image column. Here the
same steps compose with torchvision's; evaluation never augments. Inputs are what
``read_image`` returns (float32 (H, W) in [0, 1]); outputs are tensors (1, H, W).

A model trained on films cropped to their lungs (``--crop-lungs``) gets the same crop first, by the
lung detector it carries (magsd_timm/models/lung_detector.py), before the resize.

The first step, ``Preprocess`` ([lung crop,] tensor, resize, CLAHE), is deterministic: a dataset may compute it
once per image and keep it (``CXRDataset.readable(keep=True)``) instead of decoding every film in
every epoch; the random steps after it run on every draw as before.

Augmentation blocks:
* ``'published'``: with probability 0.5, as one block: ColorJitter(brightness 0.5, contrast 0.7),
  RandomRotation(120), RandomResizedCrop(size, scale 0.6-1, ratio 3/4-4/3), horizontal and vertical
  flips (each p = 0.5).
* ``'mild'`` (the default): brightness/contrast 0.2, rotation up to 10 degrees, RandomResizedCrop
  with scale 0.85-1 and ratio 0.9-1.1, no flips (a flipped chest puts the heart on the wrong side).
* ``'none'``.

A block may be followed by '+' and steps that change how the film was taken rather than what it
shows (``magsd_timm/data/acquisition.py``): ``mild+hospital`` is the mild block and every such step,
``mild+intensity+jpeg`` two of them. The whole spelling is what a run records (``augment`` in args.yaml).

Normalisation: ``'dataset'`` subtracts a mean and divides by a std (the model's data config, or a
dataset's own); ``'column'`` is the published z-score of each image column.

``create_transform(model)`` is the evaluation transform for timm's pipeline: it takes what timm's
datasets give (a PIL image of any mode: RGB, RGBA, 16-bit) and is the trainer's evaluation transform,
CLAHE included, which timm's own ``create_transform`` cannot express.
"""
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torchvision.transforms import v2

if TYPE_CHECKING:
    from ..models.lung_detector import LungDetector

__all__ = [
    'AUGMENTATIONS', 'Clahe', 'ColumnZScore', 'Preprocess', 'ToGrey', 'ToTensor', 'augment_spec', 'augmentation',
    'build_transforms', 'create_transform', 'resolve_cxr_data_config',
]

AUGMENTATIONS = ('published', 'mild', 'none')  # the blocks; acquisition steps may follow them ('mild+hospital')
NORMALIZATIONS = ('dataset', 'column')


class ToGrey(nn.Module):
    """A PIL image of any mode as read_image gives a file: float32 (H, W) in [0, 1], colour made grey (luma); an array
    or tensor passes as it is."""

    def forward(self, image: Any) -> Any:
        from PIL import Image

        from .reader import image_to_array

        return image_to_array(image) if isinstance(image, Image.Image) else image


class ToTensor(nn.Module):
    """Float (H, W) array in [0, 1] to a float32 tensor (1, H, W)."""

    def forward(self, image: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        image = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
        return image.float().reshape(1, *image.shape[-2:])


class Clahe(nn.Module):
    """Contrast-limited adaptive histogram equalisation (OpenCV) on 8 bits, as published."""

    def __init__(self, clip_limit: float = 4.0, tile_grid: Tuple[int, int] = (4, 4)):
        super().__init__()
        self.clip_limit, self.tile_grid = clip_limit, tuple(tile_grid)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """CLAHE of a (1, H, W) image in [0, 1]."""
        import cv2  # here, not at import: a data config (magsd info, a model card) needs no OpenCV

        pixels = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        equalised = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=self.tile_grid).apply(pixels)
        return torch.from_numpy(equalised).float().div_(255).unsqueeze(0)

    def extra_repr(self) -> str:
        return f'clip_limit={self.clip_limit}, tile_grid={self.tile_grid}'


class Preprocess(nn.Module):
    """The deterministic steps every image gets first: [cut to its lungs,] to a tensor, resized to the input size,
    CLAHE."""

    def __init__(self, size: Tuple[int, int], interpolation: v2.InterpolationMode, clahe: bool = True,
                 crop: Optional['LungDetector'] = None):
        super().__init__()
        self.clahe, self.crop = clahe, crop
        self.steps = v2.Compose([ToTensor(), v2.Resize(size, interpolation=interpolation, antialias=True),
                                 *([Clahe()] if clahe else [])])

    def forward(self, image: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        if self.crop is not None:
            image = self.crop.crop(np.asarray(image))
        return self.steps(image)

    def window(self, image: np.ndarray) -> Tuple[float, float, float, float]:
        """The part of the film the crop keeps, as shares of its width and height (left, top, right, bottom)."""
        height, width = np.asarray(image).shape[:2]
        x0, y0, x1, y1 = self.crop.window(np.asarray(image))
        return x0 / width, y0 / height, x1 / width, y1 / height

    def pack(self, image: torch.Tensor) -> torch.Tensor:
        """The preprocessed image in its smallest exact form: CLAHE's output has 256 levels, so 8 bits hold it."""
        return (image * 255).round_().to(torch.uint8) if self.clahe else image

    @staticmethod
    def unpack(packed: torch.Tensor) -> torch.Tensor:
        """The preprocessed image again, bit for bit as forward returned it."""
        return packed.float().div_(255) if packed.dtype == torch.uint8 else packed.clone()


class ColumnZScore(nn.Module):
    """The published normalisation: each image column to zero mean and unit standard deviation."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = image.mean(dim=-2, keepdim=True)
        std = image.std(dim=-2, keepdim=True)
        return (image - mean) / (std + self.eps)


def augment_spec(spec: str) -> str:
    """An --augment spelling checked: a block ('published', 'mild', 'none'), optionally '+' acquisition steps."""
    from .acquisition import ACQUISITION_STEPS

    block, *steps = spec.split('+')
    known = [*ACQUISITION_STEPS, 'hospital']
    if block not in AUGMENTATIONS:
        raise ValueError(f"'{block}' is not an augmentation block: start with one of {', '.join(AUGMENTATIONS)}")
    unknown = [s for s in steps if s not in known]
    if unknown:
        raise ValueError(f"'{unknown[0]}' is not an acquisition step: choose from {', '.join(known)}")
    if len(set(steps)) < len(steps):
        raise ValueError('a step is named twice')
    return spec


def augmentation(kind: str, size: Tuple[int, int]) -> nn.Module:
    """The training augmentation by its spelling: a block ('published', 'mild' or 'none'), then any '+'-joined
    acquisition steps (magsd_timm/data/acquisition.py)."""
    from .acquisition import acquisition_steps

    block, *steps = augment_spec(kind).split('+')
    if not steps:
        return _block(block, size)
    return v2.Compose([_block(block, size), *acquisition_steps(steps)])


def _block(kind: str, size: Tuple[int, int]) -> nn.Module:
    if kind == 'published':
        return v2.RandomApply([
            v2.ColorJitter(brightness=0.5, contrast=0.7),
            v2.RandomRotation(120),
            v2.RandomResizedCrop(size, scale=(0.6, 1.), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
        ], p=0.5)
    if kind == 'mild':
        return v2.Compose([
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.RandomRotation(10),
            v2.RandomResizedCrop(size, scale=(0.85, 1.), ratio=(0.9, 1.1), antialias=True),
        ])
    return nn.Identity()


def resolve_cxr_data_config(model: Optional[nn.Module] = None, **overrides: Any) -> Dict[str, Any]:
    """Data config from the model's pretrained_cfg (as timm's resolve_data_config), plus the CXR steps."""
    from timm.data import resolve_data_config

    from ..models.config import check_data_config, check_input_size
    from ..models.magsd import default_cfgs

    timm_args = {k: overrides[k] for k in ('input_size', 'img_size', 'mean', 'std', 'interpolation') if k in overrides}
    timm_args['in_chans'] = overrides.get('in_chans', getattr(model, 'in_chans', 1))  # radiographs are grey
    fallback = None if model is not None else default_cfgs['magsd_custom'].default.to_dict()
    config = resolve_data_config(timm_args, pretrained_cfg=fallback, model=model)
    check_input_size(list(config['input_size']), 'data config')  # every consumer sizes its tensors from it
    check_data_config(config, 'data config')  # and normalises with its statistics
    channels = config['input_size'][0]
    for key in ('mean', 'std'):  # a stem adapted to fewer channels takes the channels' average statistics
        if len(config[key]) != channels:
            config[key] = (round(sum(config[key]) / len(config[key]), 4),) * channels
    # the CXR transforms resize the whole film to the input size (no crop): what timm's pipeline does with these
    config.update(crop_pct=1.0, crop_mode='squash', clahe=True, normalization='dataset')
    config.update({k: v for k, v in overrides.items() if k in ('clahe', 'normalization')})
    if config['normalization'] not in NORMALIZATIONS:
        raise ValueError(f"Unknown normalization '{config['normalization']}': choose 'dataset' or 'column'.")
    return config


def build_transforms(
        data_config: Dict[str, Any],
        train: bool = False,
        augment: str = 'mild',
        crop: Optional['LungDetector'] = None,
) -> Callable[[np.ndarray], torch.Tensor]:
    """Preprocessing (and for training, augmentation) from a data config: float (H, W) -> tensor (1, H, W).

    The first step is a ``Preprocess``: what a dataset may compute once and keep. crop: the lung detector
    that cuts each film to its lungs first (the model's, when it was trained so).
    """
    size = tuple(data_config['input_size'][-2:])
    interpolation = v2.InterpolationMode(data_config.get('interpolation', 'bilinear'))
    steps = [Preprocess(size, interpolation, data_config.get('clahe', True), crop)]
    if train:
        steps.append(augmentation(augment, size))
    if data_config.get('normalization', 'dataset') == 'column':
        steps.append(ColumnZScore())
    else:
        steps.append(v2.Normalize(mean=list(data_config['mean']), std=list(data_config['std'])))
    return v2.Compose(steps)


def create_transform(model: nn.Module, crop: Optional['LungDetector'] = None) -> Callable[[Any], torch.Tensor]:
    """The trainer's evaluation transform for a model, CLAHE included, taking a PIL image of any mode (timm's datasets
    give RGB) or a float (H, W) array: (1, H, W). crop: the model's lung detector, when it was trained on cut films."""
    return v2.Compose([ToGrey(), *build_transforms(resolve_cxr_data_config(model), crop=crop).transforms])
