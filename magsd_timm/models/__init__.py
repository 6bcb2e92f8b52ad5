"""MA-Net models, registered in timm's model registry on import."""
from .magsd import CXR_LABEL_NAMES, MANet, bilinear_attention_pool, display_map

__all__ = ['CXR_LABEL_NAMES', 'MANet', 'bilinear_attention_pool', 'display_map']
