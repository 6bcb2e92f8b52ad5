"""Where a model looks: MA-Net display maps, Grad-CAM for other models, the pointing game, overlays."""
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..models import display_map

__all__ = ['attention_heatmap', 'grad_cam', 'pointing_game', 'save_overlay']


@torch.no_grad()
def attention_heatmap(model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One MA-Net pass: logits (B, K) and the display map at input size (B, 1, H, W)."""
    logits, attention = model.forward_with_attention(images)
    return logits, display_map(attention, images.shape[-2:])


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor,
             classes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM at layer's output for classes (default: predicted): logits (B, K) and maps (B, 1, H, W)."""
    saved = {}

    def keep(module, inputs, output):
        output.retain_grad()
        saved['features'] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(images)
            chosen = logits.argmax(dim=-1) if classes is None else classes
            logits.gather(1, chosen[:, None]).sum().backward()
    finally:
        handle.remove()
    features = saved['features']
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=images.shape[-2:], mode='bilinear', align_corners=False)
    model.zero_grad(set_to_none=True)
    return logits.detach(), cam


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum (B, 1, H, W) falls inside its box (x0, y0, x1, y1), grown by tolerance px."""
    width = maps.shape[-1]
    peak = maps.flatten(1).argmax(dim=1)
    y, x = peak // width, peak % width
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    return (x >= x0 - tolerance) & (x < x1 + tolerance) & (y >= y0 - tolerance) & (y < y1 + tolerance)


def save_overlay(path: Union[str, Path], image: torch.Tensor, heat: torch.Tensor, title: str,
                 boxes: Sequence[Sequence[float]] = ()) -> None:
    """A PNG of the heat map (H, W) over the grey image (H, W) with a colour bar, a title and boxes (x0, y0, x1, y1)."""
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(image.float().cpu().numpy(), cmap='gray')
    shown = ax.imshow(heat.float().cpu().numpy(), cmap='jet', alpha=0.45)
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor='white'))
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label='attention')
    ax.set_title(title, fontsize=9)
    ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
