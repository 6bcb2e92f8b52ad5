"""Running a trained model on radiographs: calibrated probabilities, attention test-time augmentation, files.

Probabilities are the softmax of the logits divided by the checkpoint's temperature (1 unless
``magsd evaluate --calibrate`` fitted one). With attention test-time augmentation (TTA, as WS-DAN and
MAG-SD test) they are the mean of the raw image's and of its attention crop's (the padded box of the
mean attention map, zoomed to the full image).
"""
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..data.reader import ImageReadError, read_image
from ..errors import BadInputError, display
from ..method.augment import mean_attention_crop
from .explain import DEFAULT_MAP, heat_maps, logits_and_attention, overlay_title, save_overlay

__all__ = ['IMAGE_SUFFIXES', 'NonFiniteOutputError', 'Prediction', 'collect_inputs', 'model_logits', 'predict_files',
           'probabilities', 'with_attention_crops']


class NonFiniteOutputError(BadInputError):
    """The model gave NaN or infinite probabilities: no class can be named from them."""

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.dcm', '.dicom')


def model_logits(model: nn.Module, images: torch.Tensor, tta: bool = False
                 ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """The logits of the raw images (and with tta of their attention crops), and the attention maps."""
    logits, attention = logits_and_attention(model, images)
    return with_attention_crops(model, images, logits, attention, tta), attention


def with_attention_crops(model: nn.Module, images: torch.Tensor, logits: torch.Tensor,
                         attention: Optional[torch.Tensor], tta: bool) -> List[torch.Tensor]:
    """The raw images' logits, and with tta the logits of their attention crops (from the same pass's maps)."""
    if not tta:
        return [logits]
    if attention is None:
        raise ValueError('Attention test-time augmentation needs an MA-Net (magsd_*) model.')
    return [logits, model(mean_attention_crop(images, attention))]


def probabilities(logits: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Mean of the softmax of each set of logits divided by the temperature; NonFiniteOutputError if any is not finite."""
    probs = torch.stack([(x.float() / temperature).softmax(dim=-1) for x in logits]).mean(dim=0)
    bad = ~torch.isfinite(probs).all(dim=-1)
    if bool(bad.any()):
        raise NonFiniteOutputError(
            f'the model gave NaN or infinite probabilities for {int(bad.sum())} of {len(probs)} image(s) (temperature '
            f'{temperature:g}): its weights, statistics or temperature are broken, so no prediction is made.')
    return probs


def collect_inputs(patterns: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Image files from paths, folders (searched recursively) and globs; and each input that gave none, with why."""
    files: Dict[Path, None] = {}  # ordered and without repeats, in time linear in the number of files
    problems: List[Tuple[str, str]] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append((pattern, f"folder has no image files ({', '.join(IMAGE_SUFFIXES)})"))
        elif path.is_file():
            found = [path]
        elif glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not found:
                problems.append((pattern, 'no file matches this pattern'))
        else:
            found = []
            problems.append((pattern, 'no such file or folder'))
        files.update(dict.fromkeys(found))
    return list(files), problems


@dataclass
class Prediction:
    """One image's class probabilities (by label name) and where its heat map went."""
    path: Path
    probabilities: Dict[str, float]
    heatmap: Optional[Path] = None
    heatmap_name: Optional[str] = None  # the map drawn (explain.MAPS)
    predicted: str = field(init=False)

    def __post_init__(self):
        self.predicted = max(self.probabilities, key=self.probabilities.get)


def _heatmap_path(folder: Path, path: Path, taken: set) -> Path:
    stem = display(path.stem)  # a name any file system and terminal takes, whatever bytes the input's holds
    name, n = f'{stem}.png', 1
    while name in taken:
        n += 1
        name = f'{stem}_{n}.png'
    taken.add(name)
    return folder / name


@torch.no_grad()
def predict_files(
        model: nn.Module, files: Sequence[Path], transform: Callable[[np.ndarray], torch.Tensor],
        label_names: Sequence[str], batch_size: int = 16, tta: bool = False, temperature: float = 1.0,
        heatmap_dir: Optional[Path] = None, data_config: Optional[Dict] = None, map_name: str = DEFAULT_MAP,
) -> Tuple[List[Prediction], List[Tuple[str, str]]]:
    """Class probabilities of each readable file (with the named heat map, explain.MAPS, drawn in heatmap_dir if
    given), and each unreadable file with the error."""
    model.eval()
    device = next(model.parameters()).device
    predictions: List[Prediction] = []
    failures: List[Tuple[str, str]] = []
    taken: set = set()
    if heatmap_dir is not None:
        heatmap_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(files), batch_size):
        batch, paths = [], []
        for path in files[start:start + batch_size]:
            try:
                batch.append(transform(read_image(path)))
                paths.append(path)
            except ImageReadError as e:
                failures.append((display(path), str(e)))
        if not batch:
            continue
        images = torch.stack(batch).to(device)
        if heatmap_dir is None:
            logits, attention = model_logits(model, images, tta)
        else:  # the map comes from the same pass as the probabilities
            heat = heat_maps(model, images, map_name)
            logits = with_attention_crops(model, images, heat.logits, heat.attention, tta)
        probs = probabilities(logits, temperature).cpu()
        for i, path in enumerate(paths):
            prediction = Prediction(path, {c: float(p) for c, p in zip(label_names, probs[i])})
            if heatmap_dir is not None:
                prediction.heatmap = _heatmap_path(heatmap_dir, path, taken)
                prediction.heatmap_name = heat.name
                mean, std = (data_config or {}).get('mean', (0.,)), (data_config or {}).get('std', (1.,))
                radiograph = images[i, 0].cpu() * std[0] + mean[0]  # the preprocessed image, before normalising
                save_overlay(prediction.heatmap, radiograph, heat.maps[i, 0].cpu(), overlay_title(
                    display(path.name), prediction.predicted, prediction.probabilities[prediction.predicted],
                    heat.description))
            predictions.append(prediction)
    return predictions, failures
