"""Does the model read the disease or the film's origin? Accuracy per class and source, and hidden lungs.

DeGrave, Janizek and Lee (Nature Machine Intelligence 2021) found public COVID-19 classifiers reading
where a film comes from (markers, text, borders, processing) instead of the lungs. Two measures show it:

* per class, the accuracy on each source's images: a class recognised in one collection and missed in
  another is recognised by its collection;
* hiding: every image is predicted again with the lungs hidden (its lung boxes; where it has none, the
  central region, where the lung fields of a frontal film lie) and with the border hidden (the outer
  eighth of each side, lungs excluded: where markers, text and collimation edges sit). Hidden pixels
  take the normalised image's zero (the mean grey). A model that reads the lungs changes its answers
  when they are hidden far more than when the border is; one that still answers COVID-19 with the
  lungs hidden uses evidence outside them.
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.dataset import CXRDataset
from ..utils.tables import markdown_table
from .inference import model_logits, probabilities
from .localization import Boxes, box_masks, boxes_in_view

__all__ = ['CENTRAL_REGION', 'FOCUS_CLASS', 'border_masks', 'central_masks', 'class_source_accuracy',
           'hiding_markdown', 'hiding_report']

CENTRAL_REGION = (0.2, 0.15, 0.8, 0.85)  # x0, y0, x1, y1 as shares of the image: where frontal lung fields lie
FOCUS_CLASS = 'COVID-19'
BORDER = 0.125  # share of each side the border frame covers
CONDITIONS = {'lungs': 'lungs hidden', 'border': 'border hidden'}


def class_source_accuracy(predictions: torch.Tensor, labels: torch.Tensor, sources: Sequence[Optional[str]],
                          class_names: Sequence[str]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Per class, per source holding images of it: their number and the share predicted as that class."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for k, name in enumerate(class_names):
        for source in sorted({s for s in sources if s is not None}):
            keep = torch.tensor([s == source for s in sources]) & (labels == k)
            if keep.any():
                out.setdefault(name, {})[source] = {
                    'num_images': int(keep.sum()), 'accuracy': float((predictions[keep] == k).float().mean())}
    return out


def central_masks(count: int, size: Sequence[int]) -> torch.Tensor:
    """CENTRAL_REGION as masks (count, 1, H, W)."""
    height, width = size
    x0, y0, x1, y1 = CENTRAL_REGION
    masks = torch.zeros(count, 1, height, width, dtype=torch.bool)
    masks[..., round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = True
    return masks


def border_masks(lungs: torch.Tensor) -> torch.Tensor:
    """The outer BORDER of each side of the image, minus the lung region, for each lung mask (B, 1, H, W)."""
    height, width = lungs.shape[-2:]
    dy, dx = round(BORDER * height), round(BORDER * width)
    frame = torch.ones_like(lungs)
    frame[..., dy:height - dy, dx:width - dx] = False
    return frame & ~lungs


@torch.no_grad()
def hiding_report(model: nn.Module, dataset: CXRDataset, class_names: Sequence[str], boxes: Optional[Boxes] = None,
                  temperature: float = 1.0, batch_size: int = 16) -> Dict[str, Any]:
    """How the answers change with the lungs hidden and with the border hidden, over the whole dataset."""
    seen = boxes_in_view(dataset, boxes) if boxes is not None else {}
    device = next(model.parameters()).device
    model.eval()
    probs: Dict[str, List[torch.Tensor]] = {'none': [], 'lungs': [], 'border': []}
    areas: Dict[str, List[torch.Tensor]] = {'lungs': [], 'border': []}
    start = with_boxes = 0
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        size = tuple(images.shape[-2:])
        lungs = central_masks(len(images), size)
        for j in range(len(images)):
            if start + j in seen:
                lungs[j] = box_masks([seen[start + j]], size)[0]
                with_boxes += 1
        for condition, mask in (('none', None), ('lungs', lungs), ('border', border_masks(lungs))):
            if mask is not None:
                areas[condition].append(mask.flatten(1).float().mean(dim=1))
            hidden = images if mask is None else images.masked_fill(mask, 0.)
            probs[condition].append(probabilities(model_logits(model, hidden.to(device))[0], temperature).cpu())
        start += len(images)
    seen = {k: torch.cat(v) for k, v in probs.items()}
    answer = seen['none'].argmax(dim=1)
    focus = class_names.index(FOCUS_CLASS) if FOCUS_CLASS in class_names else None
    report: Dict[str, Any] = {'num_images': len(answer), 'with_lung_boxes': with_boxes,
                              'central_region': list(CENTRAL_REGION), 'focus_class': FOCUS_CLASS if focus is not None
                              else None, 'focus_answers': int((answer == focus).sum()) if focus is not None else 0}
    for condition in CONDITIONS:
        after = seen[condition]
        report[condition] = {
            'hidden_share': float(torch.cat(areas[condition]).mean()),
            'answers_changed': float((after.argmax(dim=1) != answer).float().mean()),
            'answer_probability_drop': float((seen['none'] - after).gather(1, answer[:, None]).mean()),
            'focus_kept': (float((after.argmax(dim=1)[answer == focus] == focus).float().mean())
                           if report['focus_answers'] else None),
        }
    return report


def _share(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.3f}'


def hiding_markdown(report: Dict[str, Any]) -> str:
    """The hiding report as a table and what it says."""
    focus = report['focus_class']
    rows = [[CONDITIONS[c], *(_share(report[c][k]) for k in ('hidden_share', 'answers_changed',
                                                                'answer_probability_drop', 'focus_kept'))]
            for c in CONDITIONS]
    where = (f"{report['with_lung_boxes']} of the {report['num_images']} images have lung boxes; the others hide the "
             f"central region (x {CENTRAL_REGION[0]:.0%}-{CENTRAL_REGION[2]:.0%}, y {CENTRAL_REGION[1]:.0%}-"
             f"{CENTRAL_REGION[3]:.0%} of the image)")
    lines = [f'Hiding the lungs, and the border instead (the outer {BORDER:.1%} of each side, lungs excluded): '
             f'{where}. Hidden pixels take the mean grey.', '',
             markdown_table(['hidden', 'share of the image', 'answers changed', 'drop of the answer\'s probability',
                             f'{focus} answers kept' if focus else 'focus answers kept'], rows)]
    lungs, border = report['lungs'], report['border']
    if lungs['answers_changed'] <= border['answers_changed']:
        lines += ['', f"Hiding the lungs changes no more answers than hiding the border ({lungs['answers_changed']:.1%} "
                      f"against {border['answers_changed']:.1%}): the model does not read the lungs more than the "
                      "film's edges, so its answers do not rest on the lungs."]
    if focus and report['focus_answers'] and lungs['focus_kept'] >= 0.5:
        lines += ['', f"With the lungs hidden the model still answers {focus} for {lungs['focus_kept']:.0%} of the "
                      f"{report['focus_answers']} images it called {focus}: it uses evidence outside the lungs "
                      '(markers, text, borders, the film\'s processing), the wrong evidence for this diagnosis.']
    return '\n'.join(lines)
