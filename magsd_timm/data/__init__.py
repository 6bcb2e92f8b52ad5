"""Chest X-ray data: reading, preprocessing, sources, patient-level splits and datasets.

The names below load on first use, so that reading a data config or a dataset card does not load
OpenCV or the datasets library.
"""
from ..utils.lazy import lazy_attributes

_WHERE = {
    'CXRDataset': '.dataset', 'open_dataset': '.dataset', 'ImageReadError': '.reader', 'read_image': '.reader',
    'sample_records': '.sample', 'build_transforms': '.transforms', 'create_transform': '.transforms',
    'resolve_cxr_data_config': '.transforms',
}
__all__ = sorted(_WHERE)


__getattr__ = lazy_attributes(__name__, _WHERE)
