"""Suite `attention`: where the display map points. Synthetic images whose class is a small lesion
pattern at a random place (magsd_timm.data.synthetic); a tiny MAG-SD model and the plain backbone
(global pooling + linear, cross-entropy) are trained the same way on CPU, and the pointing game (the
map's maximum inside the lesion box) is scored on held-out images: MA-Net's display map against
Grad-CAM of the plain backbone at the same feature level.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from .common import meets_or_misses

POINTING_TARGET = 0.9  # hit rate of MA-Net's display map, and at least Grad-CAM's on the plain backbone
ATTENTION_BACKBONE, ATTENTION_LEVELS = 'test_resnet', (1, 2)  # top feature level at stride 8


class _PlainBackbone(torch.nn.Module):
    """The same truncated backbone with global average pooling and a linear classifier."""

    def __init__(self, num_classes: int):
        super().__init__()
        import timm

        self.backbone = timm.create_model(ATTENTION_BACKBONE, features_only=True, in_chans=1,
                                          out_indices=ATTENTION_LEVELS)
        self.top = torch.nn.Identity()  # Grad-CAM hooks here: the top feature level
        self.fc = torch.nn.Linear(self.backbone.feature_info.channels()[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.top(self.backbone(x)[-1]).mean(dim=(2, 3)))


def _fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, magsd: bool) -> None:
    from magsd_timm.method.objective import MagSDObjective

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    objective, order = MagSDObjective(), torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=order).split(32):
            optimizer.zero_grad(set_to_none=True)
            if magsd:
                objective.backward(model, images[batch], labels[batch], order)
            else:
                F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()


def run(args: argparse.Namespace) -> str:
    """Pointing-game hit rates of MA-Net's display map and of Grad-CAM on the plain backbone, same training."""
    import timm

    from magsd_timm.data.synthetic import lesion_images
    from magsd_timm.evaluation.explain import attention_heatmap, grad_cam, pointing_game

    num_classes, size = 3, 96
    train_x, train_y, _ = lesion_images(args.attention_images, size, num_classes, seed=0)
    test_x, test_y, test_boxes = lesion_images(300, size, num_classes, seed=1)
    normalise = lambda x: (x - 0.45) / 0.2  # noqa: E731 - the synthetic images' mean and std
    train_x, test_x = normalise(train_x), normalise(test_x)
    rows = {}
    started = time.perf_counter()
    magsd = timm.create_model('magsd_custom', backbone=ATTENTION_BACKBONE, num_classes=num_classes, num_maps=8,
                              backbone_kwargs={'out_indices': ATTENTION_LEVELS})
    _fit(magsd, train_x, train_y, args.attention_epochs, magsd=True)
    logits, heat = attention_heatmap(magsd, test_x)
    rows['MA-Net display map (MAG-SD)'] = (logits, heat, time.perf_counter() - started)
    started = time.perf_counter()
    plain = _PlainBackbone(num_classes)
    _fit(plain, train_x, train_y, args.attention_epochs, magsd=False)
    logits, cam = grad_cam(plain, plain.top, test_x)
    rows['Grad-CAM, plain backbone (cross-entropy)'] = (logits, cam, time.perf_counter() - started)
    hits = {name: pointing_game(maps, test_boxes).float().mean().item() for name, (_, maps, _) in rows.items()}
    magsd_hits, cam_hits = hits.values()
    lines = [f'{args.attention_images} training images x {args.attention_epochs} epochs, 300 test images, '
             f'{size} px, {num_classes} lesion classes, `{ATTENTION_BACKBONE}` to stride 8.', '',
             '| map | test accuracy | pointing-game hit rate | target | training s |', '|---|---|---|---|---|']
    for name, (logits, _, seconds) in rows.items():
        accuracy = (logits.argmax(dim=-1) == test_y).float().mean().item()
        met = magsd_hits >= POINTING_TARGET and magsd_hits >= cam_hits
        target = (f'>= {POINTING_TARGET} and >= Grad-CAM ({meets_or_misses(met)})'
                  if 'MA-Net' in name else '')
        lines.append(f'| {name} | {accuracy:.3f} | {hits[name]:.3f} | {target} | {seconds:.0f} |')
    return '\n'.join(lines)
