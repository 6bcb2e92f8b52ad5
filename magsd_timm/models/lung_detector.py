"""A lung-field detector: the box around both lungs of a frontal chest film, to crop the film to them.

What tells public collections apart sits mostly outside the lungs (text, markers, borders, collimation,
the patient's size on the film): a classifier shown only the lung fields has less of it to learn. The
detector is a timm network regressing one box, the union of the right and left lung boxes, as shares
of the film's width and height (x0, y0, x1, y1; x0 < x1 and y0 < y1 by construction). It predicts how
the box differs from the training films' mean box (its centre moved, its sides scaled), from a head
that starts at zero: it starts as the mean box, which is what it must beat, and a fresh head's large
outputs cannot saturate it (an absolute box through a sigmoid stayed stuck near the mean). It is trained by
recipes/train_lung_detector.py on COCO lung boxes, and lives in a folder: lung_detector.safetensors
and lung_detector.json (architecture, input size, margin, mean box, and what it scored on held-out
films). The config is read as untrusted: only known architectures, sizes, margins and boxes in range,
safetensors only.

A classifier trained on cropped films carries its detector: the two files beside its weights, and in
its config.json a ``lung_crop`` record (the detector's settings and the SHA-256 of its weights), so
that predict and evaluate crop alike, and refuse when the detector is missing or is another one.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..errors import BadInputError, display
from ..utils.digest import bytes_sha256
from .config import check_detector_config
from .weights import said, tensor_problems

__all__ = ['DETECTOR_CONFIG', 'DETECTOR_FILES', 'DETECTOR_WEIGHTS', 'LungDetector', 'box_iou', 'load_detector',
           'save_detector']

DETECTOR_WEIGHTS = 'lung_detector.safetensors'
DETECTOR_CONFIG = 'lung_detector.json'
DETECTOR_FILES = (DETECTOR_CONFIG, DETECTOR_WEIGHTS)
MIN_CROP_SHARE = 0.25  # a crop keeps at least this share of each side, centred on the box
MAX_SHIFT, MAX_SCALE = 0.25, 0.5  # the box's centre moves at most this share, its sides scale by exp(+-MAX_SCALE)


class LungDetector(nn.Module):
    """One box around both lungs (shares of width and height) per grey film."""

    def __init__(self, architecture: str = 'tf_efficientnet_lite0', img_size: int = 128, margin: float = 0.05,
                 mean_box: Sequence[float] = (0.1, 0.1, 0.9, 0.9), pretrained: bool = False):
        super().__init__()
        import timm

        from .offline_weights import create_pretrained

        check_detector_config(dict(architecture=architecture, img_size=img_size, margin=margin, mean_box=list(mean_box)),
                      'the detector settings')
        self.architecture, self.img_size, self.margin = architecture, int(img_size), float(margin)
        self.mean_box = [float(v) for v in mean_box]
        self.digest: Optional[str] = None  # the SHA-256 of the weights it was loaded from
        self.source: Optional[Path] = None  # the folder it was loaded from
        build = create_pretrained if pretrained else timm.create_model
        self.net = build(architecture, in_chans=1, num_classes=4)
        head = self.net.get_classifier()
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Boxes (B, 4): x0, y0, x1, y1 in [0, 1], each start before its end."""
        shift, scale = self.net(x).float().tanh().split(2, dim=1)
        x0, y0, x1, y1 = self.mean_box
        centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2], device=x.device) + MAX_SHIFT * shift
        half = torch.tensor([(x1 - x0) / 2, (y1 - y0) / 2], device=x.device) * (MAX_SCALE * scale).exp()
        return torch.cat([centre - half, centre + half], dim=1).clamp(0, 1)

    def inputs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Grey films (H, W) in [0, 1], each squeezed to the input size and normalised: (B, 1, S, S)."""
        import cv2

        size = (self.img_size, self.img_size)
        batch = np.stack([cv2.resize(np.asarray(i, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
                          for i in images])
        return torch.from_numpy((batch - 0.5) / 0.5)[:, None]

    @torch.no_grad()
    def boxes(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The predicted box of each film."""
        self.eval()
        return self(self.inputs(images).to(next(self.parameters()).device)).cpu()

    def crop_box(self, box: Sequence[float]) -> List[float]:
        """The part of the film a crop keeps for a predicted box: widened by the margin on every side, at least
        MIN_CROP_SHARE of each side, inside the film (shares: x0, y0, x1, y1)."""
        x0, y0, x1, y1 = box
        out = []
        for start, end in ((x0, x1), (y0, y1)):
            half, centre = max((end - start) / 2 + self.margin, MIN_CROP_SHARE / 2), (start + end) / 2
            out.append((max(centre - half, 0.), min(centre + half, 1.)))
        (left, right), (top, bottom) = out
        return [left, top, right, bottom]

    def window(self, image: np.ndarray) -> Tuple[int, int, int, int]:
        """The pixels the crop keeps of this film: left, top, right, bottom (right and bottom exclusive)."""
        height, width = image.shape[:2]
        left, top, right, bottom = self.crop_box(self.boxes([image])[0].tolist())
        x0, y0 = int(left * width), int(top * height)
        return x0, y0, max(int(np.ceil(right * width)), x0 + 1), max(int(np.ceil(bottom * height)), y0 + 1)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The film cut to its predicted lung box (crop_box)."""
        x0, y0, x1, y1 = self.window(image)
        return image[y0:y1, x0:x1]

    def record(self) -> Dict[str, Any]:
        """What a classifier's config.json says of the crop it was trained with: settings and weights' digest."""
        return dict(detector=self.config(), sha256=self.digest)

    def extra_repr(self) -> str:
        return f'{self.architecture}, img_size={self.img_size}, margin={self.margin}'

    def config(self) -> Dict[str, Any]:
        """What load_detector needs to build it again."""
        return dict(architecture=self.architecture, img_size=self.img_size, margin=self.margin, mean_box=self.mean_box)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of paired boxes (N, 4) given as x0, y0, x1, y1."""
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = width * height
    area = lambda box: (box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-12)


def save_detector(detector: LungDetector, folder: Union[str, Path], scores: Dict[str, Any]) -> None:
    """Write the detector's weights and config (with what it scored) into folder, each file atomically."""
    from safetensors.torch import save_file

    from ..utils.outputs import atomic_path, strict_json, write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / DETECTOR_WEIGHTS, 'lung detector weights') as staged:
        save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, str(staged))
    write_text_atomic(folder / DETECTOR_CONFIG, strict_json(dict(detector.config(), **scores)), 'lung detector config')


def load_detector(folder: Union[str, Path], record: Optional[Dict[str, Any]] = None) -> LungDetector:
    """The detector saved in folder; BadInputError naming what is missing, malformed or does not fit, or, given a
    classifier's lung_crop record, what differs from the detector it was trained with."""
    import safetensors.torch
    from safetensors import SafetensorError

    folder = Path(folder)
    config_path, weights_path = folder / DETECTOR_CONFIG, folder / DETECTOR_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise BadInputError(f'{display(folder)}: no lung detector ({DETECTOR_CONFIG} and {DETECTOR_WEIGHTS}); train one '
                            'with recipes/train_lung_detector.py.')
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadInputError(f'{display(config_path)}: not a readable detector config ({e}).') from e
    check_detector_config(config, display(config_path))
    try:  # read once: the bytes whose digest is checked are the bytes loaded
        data = weights_path.read_bytes()
        state = safetensors.torch.load(data)
    except (OSError, SafetensorError) as e:
        raise BadInputError(f'{display(weights_path)}: not readable safetensors ({e}).') from e
    digest = bytes_sha256(data)
    if record is not None:
        changed = [k for k, v in record['detector'].items() if config.get(k) != v] + (
            ['weights'] if digest != record['sha256'] else [])
        if changed:
            raise BadInputError(f"{display(folder)}: the lung detector there is not the one the classifier was trained "
                                f"with ({', '.join(changed)} differ from its config.json lung_crop).")
    detector = LungDetector(config['architecture'], config['img_size'], config['margin'], config['mean_box'])
    problems = said(tensor_problems(state, detector.state_dict()))
    if problems:
        raise BadInputError(f'{display(weights_path)}: the weights do not fit a {config["architecture"]} detector '
                            f'({problems}).')
    detector.load_state_dict(state)
    detector.digest, detector.source = digest, folder
    return detector.eval()
