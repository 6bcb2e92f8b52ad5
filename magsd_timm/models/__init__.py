"""MA-Net models, registered in timm's model registry on import."""
from .config import ConfigError
from .magsd import (
    CXR_LABEL_NAMES,
    HUB_WEIGHTS,
    MANet,
    UntrainedClassifierWarning,
    bilinear_attention_pool,
    close_matches,
    display_map,
)
from .weights import UnsafeWeightsError, WeightsMismatchError, allow_pickle_weights

__all__ = ['CXR_LABEL_NAMES', 'ConfigError', 'HUB_WEIGHTS', 'MANet', 'UnsafeWeightsError', 'UntrainedClassifierWarning',
           'WeightsMismatchError', 'allow_pickle_weights', 'bilinear_attention_pool', 'close_matches', 'display_map']
