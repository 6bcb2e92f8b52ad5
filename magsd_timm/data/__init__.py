"""Chest X-ray data: reading, preprocessing, sources, patient-level splits and datasets.

The names below load on first use, so that reading a data config or a dataset card does not load
OpenCV or the datasets library.
"""
import importlib
from typing import Any

_WHERE = {
    'CXRDataset': '.dataset', 'open_dataset': '.dataset', 'ImageReadError': '.reader', 'read_image': '.reader',
    'sample_records': '.sample', 'build_transforms': '.transforms', 'resolve_cxr_data_config': '.transforms',
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
