"""magsd-timm: MAG-SD (multiscale attention guided network with soft distance regularisation) for timm.

Importing the package registers every ``magsd_*`` model in timm's registry, and does little else: the
Hub, data and training code (``magsd_timm.hub``, ``.data``, ``.train``) load when first used.
"""
import importlib
from typing import Any

from .augment import AttentionAugmentConfig, AttentionViews, attention_crop, attention_views
from .losses import magsd_loss
from .models import CXR_LABEL_NAMES, MANet, bilinear_attention_pool, display_map
from .objective import MagSDObjective, ObjectiveOutput

__version__ = '0.1.0'
__all__ = [
    'AttentionAugmentConfig', 'AttentionViews', 'CXR_LABEL_NAMES', 'MANet', 'MagSDObjective', 'ObjectiveOutput',
    'attention_crop', 'attention_views', 'bilinear_attention_pool', 'display_map', 'load', 'magsd_loss', '__version__',
]
_LAZY_SUBMODULES = ('data', 'hub', 'train')


def __getattr__(name: str) -> Any:
    """The lazy submodules, and magsd_timm.load (from magsd_timm.hub)."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f'.{name}', __name__)
    if name == 'load':
        return importlib.import_module('.hub', __name__).load
    raise AttributeError(f"module 'magsd_timm' has no attribute '{name}'")
