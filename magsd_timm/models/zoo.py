"""The model zoo as the registry holds it: each magsd_* name, its backbone, its size and the weights it loads."""
from typing import List

import timm

from ..utils.tables import markdown_table
from .complexity import count_parameters
from .magsd import HUB_WEIGHTS
from .offline_weights import LITE_PACKAGES

__all__ = ['zoo_markdown', 'zoo_rows']


def zoo_rows() -> List[List[str]]:
    """[name, backbone, params (M), what pretrained=True loads, its published chest X-ray tags] per registered
    architecture (built on 'meta')."""
    rows = []
    for name in timm.list_models('magsd_*'):
        tags = ', '.join(f'`{tag}`' for tag in sorted(HUB_WEIGHTS) if tag.split('.')[0] == name)
        if name == 'magsd_custom':
            rows.append([f'`{name}`', 'any timm backbone (`backbone=...`)', '', 'the backbone\'s ImageNet weights',
                         tags])
            continue
        model = timm.create_model(name, device='meta')
        weights = f'ImageNet backbone `{model.backbone_name}`'
        if model.backbone_name.split('.')[0] in LITE_PACKAGES:
            weights += ', offline with the `offline-weights` extra'
        rows.append([f'`{name}`', f'`{model.backbone_name.split(".")[0]}`',
                     f'{count_parameters(model) / 1e6:.2f}', weights, tags])
    return rows


def zoo_markdown() -> str:
    """The zoo table of the README (`magsd zoo`): 4 classes, 1 input channel, 32 attention maps."""
    return markdown_table(['model', 'backbone', 'params (M)', 'weights of `pretrained=True`',
                           'chest X-ray models (tags)'], zoo_rows())
