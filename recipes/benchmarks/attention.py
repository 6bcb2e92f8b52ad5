"""Suite `attention`: where the heat maps point. Synthetic images whose class is a small lesion
pattern at a random place (magsd_timm.data.synthetic); a tiny MAG-SD model and the plain backbone
(global pooling + linear, cross-entropy) are trained the same way on CPU, once per --attention-seeds
seed (initialisation and batch order), and the pointing game (the map's maximum inside the lesion
box) is scored on held-out images: every map of `magsd predict --map` on MA-Net against Grad-CAM of
the plain backbone at the same feature level.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from .common import mean_std, meets_or_misses

POINTING_TARGET = 0.9  # hit rate of MA-Net's default map, and at least Grad-CAM's on MA-Net and on the plain backbone
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


def _fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, magsd: bool,
         seed: int) -> None:
    from magsd_timm.method.objective import MagSDObjective

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    objective, order = MagSDObjective(), torch.Generator().manual_seed(seed)
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
    """Pointing-game hit rates of every MA-Net map and of Grad-CAM on the plain backbone, same training, per seed."""
    import timm

    from magsd_timm.data.synthetic import lesion_images
    from magsd_timm.evaluation.explain import grad_cam, heat_maps, pointing_game
    from magsd_timm.evaluation.map_names import DEFAULT_MAP, MAPS

    num_classes, size = 3, 96
    train_x, train_y, _ = lesion_images(args.attention_images, size, num_classes, seed=0)
    test_x, test_y, test_boxes = lesion_images(args.attention_test_images, size, num_classes, seed=1)
    normalise = lambda x: (x - 0.45) / 0.2  # noqa: E731 - the synthetic images' mean and std
    train_x, test_x = normalise(train_x), normalise(test_x)
    plain_name = 'Grad-CAM, plain backbone (cross-entropy)'
    rows = {**{f'MA-Net (MAG-SD), `{m}`': [] for m in MAPS}, plain_name: []}  # (accuracy, hit rate, seconds) per seed
    for seed in args.attention_seeds:
        torch.manual_seed(seed)
        started = time.perf_counter()
        magsd = timm.create_model('magsd_custom', backbone=ATTENTION_BACKBONE, num_classes=num_classes, num_maps=8,
                                  backbone_kwargs={'out_indices': ATTENTION_LEVELS})
        _fit(magsd, train_x, train_y, args.attention_epochs, magsd=True, seed=seed)
        seconds = time.perf_counter() - started
        for m in MAPS:
            heat = heat_maps(magsd.eval(), test_x, m)
            rows[f'MA-Net (MAG-SD), `{m}`'].append((heat.logits, heat.maps, seconds))
        torch.manual_seed(seed)
        started = time.perf_counter()
        plain = _PlainBackbone(num_classes)
        _fit(plain, train_x, train_y, args.attention_epochs, magsd=False, seed=seed)
        logits, cam = grad_cam(plain, plain.top, test_x)
        rows[plain_name].append((logits, cam, time.perf_counter() - started))
    hits = {name: [pointing_game(maps, test_boxes).float().mean().item() for _, maps, _ in runs]
            for name, runs in rows.items()}
    accuracy = {name: [(logits.argmax(dim=-1) == test_y).float().mean().item() for logits, _, _ in runs]
                for name, runs in rows.items()}
    mean = {name: statistics.mean(values) for name, values in hits.items()}
    default = mean[f'MA-Net (MAG-SD), `{DEFAULT_MAP}`']
    met = default >= POINTING_TARGET and default >= mean[plain_name] and default >= mean['MA-Net (MAG-SD), `grad-cam`']
    lines = [f'{args.attention_images} training images x {args.attention_epochs} epochs, '
             f'{args.attention_test_images} test images, {size} px, {num_classes} lesion classes, '
             f"`{ATTENTION_BACKBONE}` to stride 8; seeds {', '.join(map(str, args.attention_seeds))} (mean ± sd).", '',
             '| map | test accuracy | pointing-game hit rate | target | training s per seed |', '|---|---|---|---|---|']
    for name, runs in rows.items():
        target = (f'>= {POINTING_TARGET} and >= either Grad-CAM ({meets_or_misses(met)})'
                  if name.endswith(f'`{DEFAULT_MAP}`') else '')
        lines.append(f'| {name} | {mean_std(accuracy[name])} | {mean_std(hits[name])} | {target} | '
                     f'{statistics.mean(s for _, _, s in runs):.0f} |')
    return '\n'.join(lines)
