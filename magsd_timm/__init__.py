"""magsd-timm: MAG-SD (multiscale attention guided network with soft distance regularisation) for timm.

Importing the package registers every ``magsd_*`` model in timm's registry.
"""
from .models import CXR_LABEL_NAMES, MANet, bilinear_attention_pool, display_map

__version__ = '0.1.0'
__all__ = ['CXR_LABEL_NAMES', 'MANet', 'bilinear_attention_pool', 'display_map', '__version__']
