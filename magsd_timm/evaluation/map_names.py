"""The heat maps a model's decision can be shown by, by name: light enough for a command's --help (no torch)."""
from typing import Dict

__all__ = ['DEFAULT_MAP', 'MAPS']

MAPS: Dict[str, str] = {
    'evidence': "MA-Net's attention maps weighted by what each adds to the predicted class's logit",
    'mean': "the mean of MA-Net's attention maps",
    'top': "the MA-Net attention map that adds most to the predicted class's logit",
    'grad-cam': 'Grad-CAM of the predicted class at the last feature level',
}
DEFAULT_MAP = 'evidence'
