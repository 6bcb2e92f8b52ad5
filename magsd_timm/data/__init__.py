"""Chest X-ray data: reading, preprocessing, sources, patient-level splits and datasets."""
from .dataset import CXRDataset, open_dataset
from .reader import ImageReadError, read_image
from .sample import sample_records
from .transforms import build_transforms, resolve_cxr_data_config

__all__ = ['CXRDataset', 'ImageReadError', 'build_transforms', 'open_dataset', 'read_image',
           'resolve_cxr_data_config', 'sample_records']
