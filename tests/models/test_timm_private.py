"""The private timm names MA-Net relies on still exist and behave as MA-Net uses them.

When a timm release moves or changes them, this is the test that says which one, before any model
test fails in a less telling way.
"""
import importlib

import timm
import torch

import magsd_timm  # noqa: F401


def test_the_private_names_are_where_timm_keeps_them():
    private = importlib.import_module('timm.models._features')
    for name in ('FeatureGetterNet', 'feature_take_indices'):
        assert hasattr(private, name), f'timm {timm.__version__} moved timm.models._features.{name}'


def test_feature_take_indices_selects_levels_as_ma_net_expects():
    from magsd_timm.models.timm_private import feature_take_indices

    assert feature_take_indices(5, None) == ([0, 1, 2, 3, 4], 4)
    assert feature_take_indices(5, 2) == ([3, 4], 4)  # an int takes the last n
    assert feature_take_indices(5, [0, -1]) == ([0, 4], 4)


def test_features_only_wraps_ma_net_in_timms_getter():
    from magsd_timm.models.timm_private import FeatureGetterNet

    model = timm.create_model('magsd_custom', backbone='test_resnet', features_only=True, in_chans=1)
    assert isinstance(model, FeatureGetterNet)
    levels = model(torch.randn(1, 1, 64, 64))
    assert [level.shape[1] for level in levels] == model.feature_info.channels()
