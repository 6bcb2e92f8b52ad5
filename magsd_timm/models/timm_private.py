"""The parts of timm that MA-Net needs and timm does not export, imported here alone.

MA-Net serves timm's ``features_only=True`` through timm's own getter wrapper and selects
intermediate levels the way timm's models do. Both live in a private timm module (timm 1.0.x,
``timm.models._features``); a timm release that moves them fails here, at import, and
``tests/models/test_timm_private.py`` names what moved.
"""
from timm.models._features import FeatureGetterNet, feature_take_indices

__all__ = ['FeatureGetterNet', 'feature_take_indices']
