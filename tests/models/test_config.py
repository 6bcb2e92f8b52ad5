"""What a config may ask of MA-Net: bounded sizes, known arguments, usable weights, a valid temperature."""
import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf

import magsd_timm  # registers the models
from magsd_timm.models import ConfigError, WeightsMismatchError
from magsd_timm.models.config import (
    MAX_INPUT_SIDE,
    check_checkpoint_config,
    check_input_size,
    check_temperature,
    training_record,
)

TINY = dict(backbone='test_resnet', num_maps=4, num_classes=2)


@pytest.fixture
def checkpoint(tmp_path):
    """A saved tiny MA-Net: config.json and model.safetensors."""
    model = timm.create_model('magsd_custom', **TINY)
    save_for_hf(model, tmp_path / 'ckpt', safe_serialization=True, model_config={'label_names': ['a', 'b']})
    return tmp_path / 'ckpt'


def _edit(folder, change):
    config = json.loads((folder / 'config.json').read_text())
    change(config)
    (folder / 'config.json').write_text(json.dumps(config))


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_maps=3_000_000), 'num_maps 3000000 is invalid'),
    (dict(num_maps=0), 'num_maps 0 is invalid'),
    (dict(num_classes=10 ** 9), 'num_classes 1000000000 is invalid'),
    (dict(num_maps=1024, num_classes=10_000), 'over the 268,435,456 limit'),
    (dict(attn_levels=list(range(-20, 0))), 'attn_levels'),
    (dict(drop_rate=1.5), 'drop_rate 1.5 is invalid'),
    (dict(attn_drop_rate=1.0), 'attn_drop_rate 1.0 is invalid'),
])
def test_unbounded_sizes_are_refused_before_anything_is_allocated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        timm.create_model('magsd_custom', **dict(TINY, **kwargs))


def test_an_unknown_argument_is_a_type_error_that_names_it():
    with pytest.raises(TypeError, match='unknown model argument.*not_an_argument') as error:
        timm.create_model('magsd_custom', not_an_argument=1, **TINY)
    assert isinstance(error.value, ConfigError)


@pytest.mark.parametrize('size', [[1, 100_000, 100_000], [1, 8, 8], [1, 64, 100_000], [1, 64], 'big'])
def test_a_checkpoint_input_size_out_of_bounds_is_refused(checkpoint, size):
    _edit(checkpoint, lambda c: c['pretrained_cfg'].update(input_size=size))
    with pytest.raises(ConfigError, match='input_size'):
        timm.create_model(f'local-dir:{checkpoint}', pretrained=True)


def test_a_checkpoint_with_huge_num_maps_is_refused_by_name(checkpoint):
    _edit(checkpoint, lambda c: c['model_args'].update(num_maps=3_000_000))
    with pytest.raises(ConfigError, match='num_maps 3000000 is invalid: expected an integer from 1 to 1024'):
        timm.create_model(f'local-dir:{checkpoint}', pretrained=True)


@pytest.mark.parametrize('value, kind', [(float('nan'), 'NaN'), (float('inf'), 'infinite'), (None, 'int')])
def test_weights_that_are_not_finite_floats_are_refused(checkpoint, value, kind):
    weights = load_file(checkpoint / 'model.safetensors')
    if value is None:
        weights['fc.weight'] = (weights['fc.weight'] * 1000).to(torch.int32)
    else:
        weights['fc.weight'][0, 0] = value
    save_file(weights, checkpoint / 'model.safetensors')
    expected = 'fc.weight: torch.int32, not floating point' if kind == 'int' else 'fc.weight: holds NaN or infinite'
    with pytest.raises(WeightsMismatchError, match=expected):
        timm.create_model(f'local-dir:{checkpoint}', pretrained=True)


def test_integer_buffers_that_the_model_has_as_integers_are_fine(checkpoint):
    model = timm.create_model(f'local-dir:{checkpoint}', pretrained=True)
    assert any(not v.is_floating_point() for v in model.state_dict().values())  # BatchNorm's num_batches_tracked


def test_a_truncated_weights_file_is_named_as_such(checkpoint):
    data = (checkpoint / 'model.safetensors').read_bytes()
    (checkpoint / 'model.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsMismatchError, match='not a readable safetensors file.*truncated or corrupt'):
        timm.create_model(f'local-dir:{checkpoint}', pretrained=True)


@pytest.mark.parametrize('value', [-1, 0, float('nan'), float('inf'), '2', True, 1e-300, 1e-3, 1e3])
def test_a_temperature_must_be_a_number_in_the_calibration_range(value):
    with pytest.raises(ConfigError, match='temperature .* is invalid'):
        check_temperature(value)
    assert check_temperature(0.5) == 0.5


def test_a_checkpoint_config_is_checked_as_a_whole():
    good = {'architecture': 'magsd_custom', 'num_classes': 2, 'label_names': ['a', 'b'], 'model_args': {},
            'pretrained_cfg': {'input_size': [1, 64, 64]}, 'temperature': 1.5}
    assert check_checkpoint_config(dict(good)) == good
    for bad, message in ((dict(good, label_names=['a', 'a']), 'distinct'), (dict(good, label_names=['a']), '1 label'),
                         (dict(good, temperature=-1), 'temperature'), (dict(good, architecture=None), 'architecture'),
                         (dict(good, training='yes'), 'training'), ([], 'JSON object')):
        with pytest.raises(ConfigError, match=message):
            check_checkpoint_config(bad)
    assert check_input_size([1, MAX_INPUT_SIDE, 32]) == (1, MAX_INPUT_SIDE, 32)


def test_only_a_training_record_makes_a_classifier_trained():
    assert training_record({}) is None and training_record({'training': {}}) is None
    assert training_record({'training': {'epochs': 3}}) == {'epochs': 3}


@pytest.mark.parametrize('cfg, message', [
    ({'mean': [float('nan')]}, 'mean'), ({'std': [0.0]}, 'std'), ({'std': [1e-300]}, 'std'), ({'mean': [1e9]}, 'mean'),
    ({'std': 'abc'}, 'std'), ({'mean': [0.5] * 5}, 'mean'), ({'crop_pct': float('inf')}, 'crop_pct'),
    ({'interpolation': 'magic'}, 'interpolation'),
])
def test_every_number_a_data_config_feeds_into_inference_is_checked(cfg, message):
    from magsd_timm.data.transforms import resolve_cxr_data_config

    config = {'architecture': 'magsd_custom', 'pretrained_cfg': dict({'input_size': [1, 64, 64]}, **cfg)}
    with pytest.raises(ConfigError, match=f'{message} .* is invalid'):
        check_checkpoint_config(config)
    if all(isinstance(v, list) for v in cfg.values()):  # statistics a built model carries: checked where resolved
        model = timm.create_model('magsd_custom', **TINY)
        model.pretrained_cfg = dict(model.pretrained_cfg, **cfg)
        with pytest.raises(ConfigError, match=f'{message} .* is invalid'):
            resolve_cxr_data_config(model)


@pytest.mark.parametrize('backbone_kwargs, message', [
    ({'pretrained': True}, 'pretrained is not allowed'),
    ({'pretrained_cfg_overlay': {'file': '/etc/passwd'}, 'cache_dir': '/tmp'}, 'cache_dir, pretrained_cfg_overlay are'),
    ({'out_indices': list(range(100))}, 'out_indices'), ({'img_size': 10 ** 6}, 'img_size'),
    ({'output_stride': 3}, 'output_stride'), ({'dynamic_img_size': 'yes'}, 'dynamic_img_size'),
])
def test_only_known_safe_backbone_arguments_within_bounds_reach_timm(backbone_kwargs, message):
    with pytest.raises(ConfigError, match=message):
        timm.create_model('magsd_custom', backbone_kwargs=backbone_kwargs, **TINY)
    model = timm.create_model('magsd_custom', backbone_kwargs={'out_indices': [2, 3], 'drop_rate': 0.1}, **TINY)
    assert model.backbone_kwargs == {'out_indices': [2, 3], 'drop_rate': 0.1}


@pytest.mark.parametrize('source', [dict(hf_hub_filename='../../../../etc/weights.pth'), dict(file='/tmp/x.pth'),
                                    dict(url='http://127.0.0.1:9/w.pth'), dict(custom_load=True)])
def test_a_checkpoint_config_may_not_say_where_its_weights_come_from(checkpoint, source):
    _edit(checkpoint, lambda config: config['pretrained_cfg'].update(source))
    with pytest.raises(ConfigError, match=f'names where weights come from \\({next(iter(source))}\\)'):
        check_checkpoint_config(json.loads((checkpoint / 'config.json').read_text()))


def test_a_hub_weights_file_that_is_not_safetensors_is_refused_before_any_download():
    from magsd_timm.models import UnsafeWeightsError
    from magsd_timm.models.weights import require_safe_weights

    with pytest.raises(UnsafeWeightsError, match=r"Hub repo 'org/model' has no model.safetensors, only pickle .*w\.pth"):
        require_safe_weights({'source': 'hf-hub', 'hf_hub_id': 'org/model', 'hf_hub_filename': 'w.pth'})
    require_safe_weights({'source': 'hf-hub', 'hf_hub_id': 'org/model', 'hf_hub_filename': 'other.safetensors'})


@pytest.mark.parametrize('config, message', [
    (dict(architecture='vit_small_patch16_224', model_args=dict(embed_dim=60_000, num_heads=6)),
     r'518,527,501,000 parameters, over the 1,000,000,000'),
    (dict(architecture='magsd_custom', model_args=dict(backbone='vit_giant_patch14_224')), 'parameters, over the'),
    (dict(architecture='vit_small_patch16_224', model_args=dict(depth=10 ** 7)), 'model_args.depth 10000000 is over'),
    (dict(architecture='resnet18', model_args=dict(pretrained_cfg_overlay=dict(file='/etc/passwd'))),
     'model_args pretrained_cfg_overlay: a config may not say where weights come from'),
    (dict(architecture='resnet18', model_args=dict(device='cuda')), 'model_args device: a config may not say'),
    (dict(architecture='magsd_custom', pretrained_cfg=dict(input_size=[1, 224, 224]),  # a ViT built for 33 x 64 px
          model_args=dict(backbone='vit_small_patch16_224', backbone_kwargs=dict(img_size=[33, 64]))),
     r"cannot take the input size \[1, 224, 224\] of its own pretrained_cfg \(Input height \(224\) doesn't match"),
])
def test_a_downloaded_config_that_would_allocate_without_bound_or_cannot_run_is_refused_before_anything_is_built(
        tmp_path, config, message):
    folder = tmp_path / 'checkpoint'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps(dict(dict(num_classes=2, pretrained_cfg={}), **config)))
    (folder / 'model.safetensors').write_bytes(b'')
    with pytest.raises(ConfigError, match=message):
        magsd_timm.load(str(folder))  # the empty weights are never reached
