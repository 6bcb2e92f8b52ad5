"""Where a model looks: heat maps of its decision, the pointing game, overlays.

The maps (``MAPS``; ``magsd predict --map``, ``magsd evaluate --map``), each at the input size:

* ``evidence``: MA-Net's M attention maps, each weighted by what its part of the BAP vector adds to
  the predicted class's logit (the logit is exactly the sum of those M parts; negative parts are
  left out, as Grad-CAM's ReLU leaves out negative evidence);
* ``mean``: the mean of the M attention maps (``magsd_timm.display_map``), whatever the class;
* ``top``: the one attention map whose part adds most to the predicted class's logit;
* ``grad-cam``: Grad-CAM of the predicted class at the model's last feature level, for any timm model.

A model without attention maps (not an MA-Net) asked for one of the first three gets Grad-CAM, and
the map's name says so.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import BadInputError
from ..models import close_matches
from .map_names import DEFAULT_MAP, MAPS

__all__ = ['DEFAULT_MAP', 'MAPS', 'HeatMaps', 'check_map', 'grad_cam', 'heat_maps', 'last_feature_layer',
           'logits_and_attention', 'overlay_title', 'pointing_game', 'save_overlay']


@dataclass
class HeatMaps:
    """One pass's logits (B, K), heat maps at input size (B, 1, H, W), the map's name (MAPS), the name asked for
    (another where the model has no attention maps), and MA-Net's attention maps of the same pass (B, M, h, w; None
    for other models)."""
    logits: torch.Tensor
    maps: torch.Tensor
    name: str
    asked: str
    attention: Optional[torch.Tensor] = None

    @property
    def substitute(self) -> str:
        """Why the map is not the one asked for, or an empty string."""
        return f'asked for {self.asked}, but this model has no attention maps' if self.asked != self.name else ''

    @property
    def description(self) -> str:
        """The map's name and what it shows (and why it is not the one asked for), for reports and overlay titles."""
        return f'{self.name} map: {MAPS[self.name]}' + (f' ({self.substitute})' if self.substitute else '')


def check_map(name: str) -> str:
    """The map name itself, or BadInputError naming the choices."""
    if name not in MAPS:
        raise BadInputError(f"unknown map '{name}'; the choices are {', '.join(MAPS)}.{close_matches(name, list(MAPS))}")
    return name


def last_feature_layer(model: nn.Module) -> nn.Module:
    """The module of a timm model's last feature level, where Grad-CAM looks."""
    info = getattr(model, 'feature_info', None)
    if not info:
        raise BadInputError(f'{type(model).__name__} names no feature levels (timm feature_info): no Grad-CAM layer.')
    return model.get_submodule(info[-1]['module'])


def logits_and_attention(model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One pass: the logits (B, K) and, for an MA-Net, its attention maps (B, M, h, w); None for other models."""
    if hasattr(model, 'forward_with_attention'):
        return model.forward_with_attention(images)
    return model(images), None


def _grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    saved = {}

    def keep(module, inputs, output):
        output.retain_grad()
        saved['features'] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits, attention = logits_and_attention(model, images)
            chosen = logits.argmax(dim=-1) if classes is None else classes
            logits.gather(1, chosen[:, None]).sum().backward()
    finally:
        handle.remove()
    features = saved['features']
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=images.shape[-2:], mode='bilinear', align_corners=False)
    model.zero_grad(set_to_none=True)
    return logits.detach(), cam, None if attention is None else attention.detach()


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor,
             classes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM at layer's output for classes (default: predicted): logits (B, K) and maps (B, 1, H, W)."""
    return _grad_cam(model, layer, images, classes)[:2]


def _map_parts(model: nn.Module, features: torch.Tensor, attention: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K) and each attention map's part (B, M) of the predicted class's logit, which they sum to."""
    pooled = model.forward_head(torch.cat([features, attention], dim=1), pre_logits=True)  # the BAP vector
    classifier = model.get_classifier()
    logits = classifier(pooled)
    weight = classifier.weight.view(model.num_classes, model.num_maps, -1)  # map-major, as BAP flattens it
    parts = (pooled.view(len(pooled), model.num_maps, -1) * weight[logits.argmax(dim=-1)]).sum(dim=-1)
    return logits, parts


@torch.no_grad()
def _attention_map(model: nn.Module, images: torch.Tensor, name: str) -> HeatMaps:
    features, attention = model.forward_features_and_attention(images)
    logits, parts = _map_parts(model, features, attention)
    if name == 'mean':
        weights = torch.ones_like(parts)
    elif name == 'top':
        weights = nn.functional.one_hot(parts.argmax(dim=1), model.num_maps).to(attention.dtype)
    else:
        weights = parts.clamp(min=0)
    combined = (weights[..., None, None] * attention).sum(dim=1, keepdim=True) / weights.sum(dim=1).clamp(
        min=1e-12)[:, None, None, None]
    maps = nn.functional.interpolate(combined.float(), size=images.shape[-2:], mode='bilinear', align_corners=False)
    return HeatMaps(logits, maps, name, name, attention)


def heat_maps(model: nn.Module, images: torch.Tensor, name: str = DEFAULT_MAP) -> HeatMaps:
    """The named map (MAPS) of each image for its predicted class, from one pass (and its backward for Grad-CAM)."""
    check_map(name)
    if name != 'grad-cam' and hasattr(model, 'forward_with_attention'):
        return _attention_map(model, images, name)
    logits, cam, attention = _grad_cam(model, last_feature_layer(model), images)
    return HeatMaps(logits, cam, 'grad-cam', name, attention)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum (B, 1, H, W) falls inside its box (x0, y0, x1, y1), grown by tolerance px."""
    width = maps.shape[-1]
    peak = maps.flatten(1).argmax(dim=1)
    y, x = peak // width, peak % width
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    return (x >= x0 - tolerance) & (x < x1 + tolerance) & (y >= y0 - tolerance) & (y < y1 + tolerance)


def overlay_title(film: str, predicted: str, probability: float, map_description: str, detail: str = '') -> str:
    """An overlay's title: the film, the predicted class with its probability, the map, and any detail."""
    return '\n'.join([f'{film}: {predicted} ({probability:.2f})', map_description, *([detail] if detail else [])])


def save_overlay(path: Union[str, Path], image: torch.Tensor, heat: torch.Tensor, title: str,
                 boxes: Sequence[Sequence[float]] = ()) -> None:
    """A PNG of the heat map (H, W), scaled to its maximum, over the grey image (H, W), with a colour bar, the title
    (wrapped to the figure) and boxes (x0, y0, x1, y1) in white."""
    import textwrap

    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    heat = heat.float().cpu().clamp(min=0)
    peak = float(heat.max())
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    ax.imshow(image.float().cpu().numpy(), cmap='gray')
    shown = ax.imshow((heat / peak if peak > 0 else heat).numpy(), cmap='jet', alpha=0.4, vmin=0, vmax=1)
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor='white', lw=1.5))
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the map's maximum")
    wrapped = '\n'.join(textwrap.fill(line, 60) for line in title.split('\n'))
    ax.set_title(wrapped, fontsize=8, loc='left')
    ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
