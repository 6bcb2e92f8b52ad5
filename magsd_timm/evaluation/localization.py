"""Does the model look where it should? Its heat maps scored against boxes (e.g. the lungs) on real images.

Boxes come as COCO JSON (``images[].file_name``, ``width``, ``height``; ``annotations[].bbox`` as
x, y, width, height in that original size), any number per image, matched to a dataset's images by
file name. A box without area, off its image or not made of numbers, and an image without a valid
size, is left out and counted (never scored as a miss); a file over MAX_BOX_FILE_BYTES is refused.
The model sees each image resized to its input size (aspect not kept), so a box scales by
the input size over the original size; a model that crops films to their lungs sees the crop, so
its boxes are moved onto the crop first (``boxes_in_view``). For each image with boxes:

* mass in boxes: the share of the heat map's total inside the union of its boxes;
* pointing game: whether the map's maximum falls inside that union.

A map that is zero everywhere points nowhere: it is counted (``empty_maps``) and left out of both.

The heat map is one of ``explain.MAPS`` (default ``explain.DEFAULT_MAP``); a model without attention
maps gets Grad-CAM of its predicted class at its last feature level. Both measures are averaged over images with a
95% percentile bootstrap interval that resamples patients, as every interval of the package does.
"""
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.dataset import CXRDataset
from ..errors import BadInputError, display
from ..models.config import is_finite_number
from .explain import DEFAULT_MAP, heat_maps, overlay_title, save_overlay
from .inference import probabilities
from .metrics import group_resamples, percentile_interval

__all__ = ['MAX_BOX_FILE_BYTES', 'BoxEntry', 'Boxes', 'box_masks', 'boxed_batches', 'boxes_in_view', 'load_boxes',
           'localization_report', 'mass_in_boxes', 'pointing_hits']

MAX_BOX_FILE_BYTES = 64 * 2 ** 20  # the 579-image lung box file of ieee8023 is 0.8 MB
MAX_IMAGE_SIDE = 65_536
BoxEntry = Tuple[Tuple[float, float], Sequence[Sequence[float]]]  # (width, height), [(x, y, width, height), ...]


class Boxes(dict):
    """COCO boxes by file name: ((original width, height), [(x, y, width, height), ...]); and in ``invalid`` each
    box or image left out, with why (zero or negative size, off the image, not numbers, unknown image)."""

    def __init__(self):
        super().__init__()
        self.invalid: List[str] = []


def _image_size(image: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """An image entry's (width, height) when both are whole numbers from 1 to MAX_IMAGE_SIDE, else None."""
    size = image.get('width'), image.get('height')
    if all(is_finite_number(v) and v == int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in size):
        return int(size[0]), int(size[1])
    return None


def _box_problem(bbox: Any, size: Tuple[int, int]) -> Optional[str]:
    """Why a COCO bbox (x, y, width, height) cannot be scored on an image of this size, or None."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(is_finite_number, bbox)):
        return f'bbox {bbox!r} is not four finite numbers'
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f'bbox {bbox!r} has no area (width and height must be > 0)'
    if x >= size[0] or y >= size[1] or x + w <= 0 or y + h <= 0:
        return f'bbox {bbox!r} lies off the {size[0]}x{size[1]} image'
    return None


def load_boxes(path: Union[str, Path]) -> Boxes:
    """The boxes of a COCO file by file name; invalid boxes and images are left out and listed (Boxes.invalid)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BOX_FILE_BYTES:
            raise BadInputError(f'{display(path)}: {path.stat().st_size / 2 ** 20:.0f} MiB is over the '
                                f'{MAX_BOX_FILE_BYTES // 2 ** 20} MiB limit of a box file.')
        coco = json.loads(path.read_bytes())
        images, annotations = coco['images'], coco['annotations']
        if not isinstance(images, list) or not isinstance(annotations, list):
            raise TypeError('images and annotations must be lists')
        boxes, sizes = Boxes(), {}
        for image in images:
            size = _image_size(image)
            if size is None:
                boxes.invalid.append(f"image {image.get('file_name')!r}: width {image.get('width')!r} and height "
                                     f"{image.get('height')!r} are not sizes in pixels")
            sizes[image['id']] = (str(image['file_name']), size)
        for annotation in annotations:
            name, size = sizes.get(annotation.get('image_id'), (None, None))
            problem = ('no image with this image_id' if name is None else 'its image has no valid size'
                       if size is None else _box_problem(annotation.get('bbox'), size))
            if problem:
                image = name or annotation.get('image_id')
                boxes.invalid.append(f"annotation {annotation.get('id')!r} ({image!r}): {problem}")
            else:
                boxes.setdefault(name, (size, []))[1].append(tuple(float(v) for v in annotation['bbox']))
    except BadInputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise BadInputError(f'{display(path)} is not a COCO box file (images with id, file_name, width, height; '
                            f'annotations with image_id and bbox): {type(e).__name__}: {e}.') from e
    return boxes


def _input_rects(entry: BoxEntry, size: Tuple[int, int]) -> List[Tuple[int, int, int, int]]:
    """An image's boxes as (x0, y0, x1, y1) pixels of the model's input (H, W), from its original size."""
    (orig_w, orig_h), rects = entry
    height, width = size
    return [(max(round(x / orig_w * width), 0), max(round(y / orig_h * height), 0),
             min(round((x + w) / orig_w * width), width), min(round((y + h) / orig_h * height), height))
            for x, y, w, h in rects]


def boxes_in_view(dataset: CXRDataset, boxes: Mapping[str, BoxEntry]) -> Dict[int, BoxEntry]:
    """The boxes of each of the dataset's images that has some (by index), on the part of the film the model sees:
    all of it, or, for a model that crops films to their lungs, the crop (boxes cut at its edges)."""
    seen = {}
    for index, name in enumerate(dataset.file_names()):
        if name in boxes:
            window = dataset.window(index)
            seen[index] = boxes[name] if window is None else _cropped(boxes[name], window)
    return seen


def _cropped(entry: BoxEntry, window: Sequence[float]) -> BoxEntry:
    """An image's boxes on a part of it (shares: left, top, right, bottom): moved, cut at its edges, empty ones gone."""
    (width, height), rects = entry
    left, top, right, bottom = window[0] * width, window[1] * height, window[2] * width, window[3] * height
    kept = []
    for x, y, w, h in rects:
        x0, y0 = max(x, left) - left, max(y, top) - top
        x1, y1 = min(x + w, right) - left, min(y + h, bottom) - top
        if x1 > x0 and y1 > y0:
            kept.append((x0, y0, x1 - x0, y1 - y0))
    return (right - left, bottom - top), kept


def box_masks(boxes: Sequence[BoxEntry], size: Tuple[int, int]) -> torch.Tensor:
    """Union masks (B, 1, H, W) at the model's input size of each image's boxes, scaled from its original size."""
    masks = torch.zeros(len(boxes), 1, *size, dtype=torch.bool)
    for i, entry in enumerate(boxes):
        for x0, y0, x1, y1 in _input_rects(entry, size):
            masks[i, 0, y0:y1, x0:x1] = True
    return masks


def mass_in_boxes(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's total (B, 1, H, W) inside its mask; NaN for a map that is zero everywhere."""
    maps = maps.float().clamp(min=0)
    total = maps.flatten(1).sum(dim=1)
    inside = (maps * masks).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.full_like(total, float('nan')))


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1. where each map's maximum falls inside its mask, 0. where not, NaN for a map that is zero everywhere."""
    flat = maps.float().clamp(min=0).flatten(1)
    hits = masks.flatten(1).gather(1, flat.argmax(dim=1)[:, None])[:, 0].float()
    return torch.where(flat.sum(dim=1) > 0, hits, torch.full_like(hits, float('nan')))


def boxed_batches(dataset: CXRDataset, seen: Mapping[int, BoxEntry], batch_size: int = 16
                  ) -> Iterator[Tuple[List[int], torch.Tensor, torch.Tensor]]:
    """The dataset's images with boxes (seen: boxes_in_view) in batches: their indices, the images, and their box
    masks (B, 1, H, W) at input size; BadInputError when no image has boxes."""
    chosen = sorted(seen)
    if not chosen:  # refused at the call, before its caller writes anything
        raise BadInputError(f'none of the {len(dataset)} images has boxes in the box file (matched by file name).')
    loader = DataLoader(torch.utils.data.Subset(dataset, chosen), batch_size=batch_size, shuffle=False)
    return ((chosen[start:start + len(images)], images,
             box_masks([seen[i] for i in chosen[start:start + len(images)]], tuple(images.shape[-2:])))
            for start, (images, _) in zip(range(0, len(chosen), batch_size), loader))


def _interval(values: torch.Tensor, resamples: Sequence[torch.Tensor]) -> List[float]:
    return percentile_interval(torch.stack([values[picked].nanmean() for picked in resamples]))


def localization_report(model: nn.Module, dataset: CXRDataset, boxes: Boxes, batch_size: int = 16,
                        replicates: int = 1000, seed: int = 0, overlays: Union[str, Path, None] = None,
                        num_overlays: int = 4, map_name: str = DEFAULT_MAP, class_names: Sequence[str] = (),
                        temperature: float = 1.0) -> Dict[str, Any]:
    """Mass in boxes and pointing-game hit rate (means and 95% intervals) of the named map (explain.MAPS) over the
    dataset's images with boxes; with overlays, the first num_overlays of them drawn there (the map, its name, the
    boxes, the predicted class of class_names with its probability at temperature, mass and hit)."""
    names = dataset.file_names()
    seen = boxes_in_view(dataset, boxes)
    device = next(model.parameters()).device
    model.eval()
    masses, hits, areas, chosen, method, shown = [], [], [], [], '', ''
    batches = boxed_batches(dataset, seen, batch_size)
    if overlays is not None:
        Path(overlays).mkdir(parents=True, exist_ok=True)
    for indices, images, masks in batches:
        heat = heat_maps(model, images.to(device), map_name)
        maps, method, shown = heat.maps.cpu(), heat.description, heat.name
        masses.append(mass_in_boxes(maps, masks))
        hits.append(pointing_hits(maps, masks))
        areas.append(masks.flatten(1).float().mean(dim=1))
        probs = probabilities([heat.logits], temperature).cpu()
        for j, index in enumerate(indices if overlays is not None else ()):
            if len(chosen) + j < num_overlays:
                name, k = names[index], int(probs[j].argmax())
                predicted = class_names[k] if k < len(class_names) else f'class {k}'
                save_overlay(Path(overlays) / f'{Path(name).stem}.png', images[j, 0], maps[j, 0],
                             overlay_title(display(name), predicted, float(probs[j, k]), method,
                                           f"{masses[-1][j]:.0%} of the map in the boxes, peak "
                                           f"{'inside' if hits[-1][j] else 'outside'}"),
                             _input_rects(seen[index], tuple(images.shape[-2:])))
        chosen += indices
    mass, hit, area = torch.cat(masses), torch.cat(hits), torch.cat(areas)
    patients = dataset.patient_groups()[0]
    groups = [patients[i] for i in chosen]
    resamples = list(group_resamples(groups, replicates, seed))
    return {
        'map': shown, 'asked': map_name, 'method': method, 'num_images': len(chosen),
        'images_without_boxes': len(dataset) - len(chosen),  # counted, left out of both measures, never misses
        'mass_in_boxes': float(mass.nanmean()), 'mass_in_boxes_interval': _interval(mass, resamples),
        'pointing_hit_rate': float(hit.nanmean()), 'pointing_hit_rate_interval': _interval(hit, resamples),
        'empty_maps': int(mass.isnan().sum()),  # zero everywhere (Grad-CAM's ReLU can leave nothing): not scored
        'invalid_boxes': len(getattr(boxes, 'invalid', ())),  # left out of the box file, each said when loaded
        'box_area_share': float(area.mean()),  # what a uniform map would put inside the boxes
    }
