"""What each of MA-Net's M attention maps does, on films with lung boxes: is the mean map flat because every map is
flat, because the maps cancel, or because a few dead or constant maps dominate?

Per map, averaged over the films (each map upsampled to the input size, as the display map is):

* ``peak_to_mean``: its maximum over its mean (1 for a flat map);
* ``entropy``: of the map as a distribution over its cells, over the log of the cell count (1 for a flat map);
* ``mass_in_boxes``: the share of its mass inside the lung boxes (a uniform map: ``box_area_share``);
* ``dead``: the share of films on which it is zero everywhere (nothing passes the attention's ReLU);
* ``share_of_attention``: its share of the summed mass of all maps (what it weighs in the mean map);
* ``classifier_share``: the share of the classifier's squared weights on its part of the BAP vector.

And over the maps: the mean pairwise correlation of the maps of one film (live maps only), and the mean map's
own figures, for comparison.
"""
import math
import statistics
from typing import Any, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.dataset import CXRDataset
from ..errors import BadInputError
from ..utils.tables import markdown_table
from .localization import Boxes, boxed_batches, boxes_in_view, mass_in_boxes

__all__ = ['attention_map_report', 'attention_maps_markdown', 'classifier_shares', 'map_statistics']


def map_statistics(attention: torch.Tensor, masks: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per film and map (B, M): peak-to-mean, normalised entropy, mass in the masks (B, 1, H, W), dead, share of the
    summed attention; and per film (B,) the mean pairwise correlation of its live maps. NaN where undefined."""
    attention = attention.float().clamp(min=0)
    batch, maps = attention.shape[:2]
    up = F.interpolate(attention, size=tuple(masks.shape[-2:]), mode='bilinear', align_corners=False).clamp(min=0)
    flat = up.flatten(2)  # (B, M, H*W)
    total = flat.sum(dim=2)
    dead = attention.flatten(2).amax(dim=2) <= 0
    nan = torch.full_like(total, float('nan'))
    peak = torch.where(dead, nan, flat.amax(dim=2) / (total / flat.shape[2]).clamp(min=1e-12))
    p = flat / total[..., None].clamp(min=1e-12)
    entropy = -(p * p.clamp(min=1e-12).log()).sum(dim=2) / math.log(flat.shape[2])
    entropy = torch.where(dead, nan, entropy)
    mass = mass_in_boxes(up.reshape(batch * maps, 1, *up.shape[-2:]),
                         masks.repeat_interleave(maps, dim=0)).view(batch, maps)
    share = total / total.sum(dim=1, keepdim=True).clamp(min=1e-12)
    centred = flat - flat.mean(dim=2, keepdim=True)
    norms = centred.norm(dim=2)
    live = ~dead & (norms > 1e-12)  # a constant map has no correlation with anything
    unit = centred / norms[..., None].clamp(min=1e-12)
    correlation = unit @ unit.transpose(1, 2)  # (B, M, M)
    pairs = live[:, :, None] & live[:, None, :] & ~torch.eye(maps, dtype=torch.bool)[None]
    mean_correlation = torch.where(pairs.any(dim=(1, 2)), (correlation * pairs).sum(dim=(1, 2))
                                   / pairs.sum(dim=(1, 2)).clamp(min=1), torch.full((batch,), float('nan')))
    return dict(peak_to_mean=peak, entropy=entropy, mass_in_boxes=mass, dead=dead.float(),
                share_of_attention=share, mean_correlation=mean_correlation)


def classifier_shares(model: nn.Module) -> torch.Tensor:
    """The share (M,) of the classifier's squared weights on each map's part of the BAP vector (maps x features)."""
    weight = model.get_classifier().weight.detach().float()  # (K, M * C), BAP parts in map order
    per_map = weight.view(weight.shape[0], model.num_maps, -1).pow(2).sum(dim=(0, 2))
    return per_map / per_map.sum().clamp(min=1e-12)


def attention_map_report(model: nn.Module, dataset: CXRDataset, boxes: Boxes, batch_size: int = 16) -> Dict[str, Any]:
    """Each attention map's figures (see the module's docstring) and the mean map's, over the images with boxes."""
    if not hasattr(model, 'forward_with_attention'):
        raise BadInputError(f'{type(model).__name__} has no attention maps (not an MA-Net).')
    device = next(model.parameters()).device
    model.eval()
    parts: Dict[str, List[torch.Tensor]] = {}
    for _, images, masks in boxed_batches(dataset, boxes_in_view(dataset, boxes), batch_size):
        with torch.no_grad():
            attention = model.forward_with_attention(images.to(device))[1].cpu()
        figures = map_statistics(attention, masks)
        figures.update({f'mean_map_{k}': v[:, 0] for k, v in map_statistics(attention.mean(dim=1, keepdim=True),
                                                                               masks).items() if v.ndim == 2})
        figures['box_area_share'] = masks.flatten(1).float().mean(dim=1)
        for key, value in figures.items():
            parts.setdefault(key, []).append(value)
    stats = {key: torch.cat(values) for key, values in parts.items()}
    weights = classifier_shares(model)
    per_map = [dict(map=m, **{key: float(stats[key][:, m].nanmean()) for key in
                              ('peak_to_mean', 'entropy', 'mass_in_boxes', 'dead', 'share_of_attention')},
                    classifier_share=float(weights[m])) for m in range(model.num_maps)]
    return {
        'num_images': len(stats['box_area_share']), 'maps': per_map, 'side': int(attention.shape[-1]),
        'box_area_share': float(stats['box_area_share'].mean()),
        'mean_correlation': float(stats['mean_correlation'].nanmean()),
        'mean_map': {key: float(stats[f'mean_map_{key}'].nanmean())
                     for key in ('peak_to_mean', 'entropy', 'mass_in_boxes')},
    }


def attention_maps_markdown(report: Dict[str, Any]) -> str:
    """The report's section on the maps one by one: each figure's least, median and greatest over the maps, and the
    mean map's (evaluation.json lists every map)."""
    keys = (('peak_to_mean', 'peak over mean (1: flat)'), ('entropy', 'entropy over its maximum (1: flat)'),
            ('mass_in_boxes', 'share inside the boxes'), ('dead', 'share of films where it is zero everywhere'),
            ('share_of_attention', 'share of the summed attention'),
            ('classifier_share', "share of the classifier's squared weights"))

    def spread(key: str) -> List[str]:
        values = [m[key] for m in report['maps'] if not math.isnan(m[key])]
        return [f'{min(values):.3f}', f'{statistics.median(values):.3f}', f'{max(values):.3f}'] if values else ['-'] * 3
    mean_map = report['mean_map']
    rows = [[name, *spread(key), f'{mean_map[key]:.3f}' if key in mean_map else '-'] for key, name in keys]
    return '\n'.join([
        f"The {len(report['maps'])} attention maps one by one ({report['side']} x {report['side']} each, upsampled to "
        f"the input; {report['num_images']} images with boxes, which cover {report['box_area_share']:.3f} of the "
        f"image): the mean pairwise correlation of one film's maps is {report['mean_correlation']:.3f}.", '',
        markdown_table(['per map', 'least', 'median', 'greatest', 'mean map'], rows)])
