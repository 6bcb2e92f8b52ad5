"""magsd-timm: MAG-SD (multiscale attention guided network with soft distance regularisation) for timm.

Importing the package registers every ``magsd_*`` model in timm's registry.
"""
from .augment import AttentionAugmentConfig, AttentionViews, attention_crop, attention_views
from .losses import magsd_loss
from .models import CXR_LABEL_NAMES, MANet, bilinear_attention_pool, display_map
from .objective import MagSDObjective, ObjectiveOutput
from .hub import load

__version__ = '0.1.0'
__all__ = [
    'AttentionAugmentConfig', 'AttentionViews', 'CXR_LABEL_NAMES', 'MANet', 'MagSDObjective', 'ObjectiveOutput',
    'attention_crop', 'attention_views', 'bilinear_attention_pool', 'display_map', 'load', 'magsd_loss', '__version__',
]
