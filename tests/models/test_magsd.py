"""MA-Net as the method describes it: attention maps, bilinear attention pooling, head, zoo and errors."""
import json
import math

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import save_for_hf

import magsd_timm
from magsd_timm import CXR_LABEL_NAMES, MANet, bilinear_attention_pool, display_map


def _tiny(**kwargs) -> MANet:
    return timm.create_model('magsd_custom', backbone='test_resnet', **kwargs)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def test_bilinear_attention_pool_matches_a_hand_computed_case():
    # features: 2 channels over a 1x2 grid; attention: 2 maps over the same grid
    features = torch.tensor([[[[1., 3.]], [[2., -4.]]]])
    attention = torch.tensor([[[[1., 0.]], [[.5, .5]]]])
    # P[m, c] = mean_hw A_m F_c = [[0.5, 1], [1, -0.5]], flattened m-major, signed sqrt, L2 norm sqrt(3)
    s = 1 / math.sqrt(3)
    expected = torch.tensor([[math.sqrt(.5) * s, s, s, -math.sqrt(.5) * s]])
    torch.testing.assert_close(bilinear_attention_pool(features, attention), expected)


def test_head_scales_the_normalised_embedding_by_100_into_a_bias_free_linear():
    model = _tiny().eval()
    stacked = model.forward_features(_randn(2, 1, 64, 64))
    features, attention = stacked[:, :model.top_chs], stacked[:, model.top_chs:]
    embedding = model.forward_head(stacked, pre_logits=True)
    torch.testing.assert_close(embedding, 100 * bilinear_attention_pool(features, attention))
    torch.testing.assert_close(embedding.norm(dim=-1), torch.full((2,), 100.))
    assert model.fc.bias is None and model.fc.in_features == model.num_maps * model.top_chs
    torch.testing.assert_close(model.forward_head(stacked), embedding @ model.fc.weight.T)


def test_attention_maps_are_summed_conv_bn_relu_maps_of_each_level_pooled_to_the_top():
    model = _tiny(attn_levels=(-3, -2, -1), num_maps=8).eval()
    x = _randn(2, 1, 64, 64)
    levels = model.backbone(x)
    top = levels[-1]
    expected = sum(
        nn.functional.adaptive_avg_pool2d(attend(level), top.shape[-2:])
        for attend, level in zip(model.attention, levels[-3:]))
    features, attention = model.forward_features_and_attention(x)
    torch.testing.assert_close(features, top)
    torch.testing.assert_close(attention, expected)
    for attend in model.attention:
        conv, bn, act = attend
        assert conv.kernel_size == (1, 1) and conv.bias is None and conv.out_channels == 8
        assert bn.eps == 1e-3 and isinstance(act, nn.ReLU)


@pytest.mark.parametrize('size, grid', [(224, 7), (448, 14)])
def test_attention_maps_are_non_negative_with_the_documented_shapes(size, grid):
    model = _tiny().train()  # train-mode BatchNorm centres the maps: ReLU must still keep them >= 0
    with torch.no_grad():
        logits, attention = model.forward_with_attention(_randn(2, 1, size, size))
    assert logits.shape == (2, 4)
    assert attention.shape == (2, 32, grid, grid)
    assert (attention >= 0).all() and (attention > 0).any()


@pytest.mark.parametrize('size, layer3, layer4', [(224, 14, 7), (448, 28, 14)])
def test_magsd_resnet50_uses_layer3_and_layer4_as_published(size, layer3, layer4):
    model = timm.create_model('magsd_resnet50', device='meta')
    x = torch.empty(2, 1, size, size, device='meta')
    levels = model.forward_intermediates(x, indices=[-2, -1], intermediates_only=True)
    assert [tuple(t.shape) for t in levels] == [(2, 1024, layer3, layer3), (2, 2048, layer4, layer4)]
    _, attention = model.forward_with_attention(x)
    assert attention.shape == (2, 32, layer4, layer4)


def test_magsd_resnet50_has_the_authors_parameter_count():
    model = timm.create_model('magsd_resnet50', device='meta')
    assert (model.in_chans, model.num_classes, model.num_maps) == (1, 4, 32)
    assert sum(p.numel() for p in model.parameters()) == 23_862_336  # 23.86 M
    assert model.head_hidden_size == 65_536


def test_default_config_names_the_four_cxr_classes_and_where_the_model_comes_from():
    model = timm.create_model('magsd_resnet50', device='meta')
    assert tuple(model.pretrained_cfg['label_names']) == CXR_LABEL_NAMES
    assert model.pretrained_cfg['input_size'] == (1, 224, 224)
    cfg = model.pretrained_cfg  # the fields timm's own cfgs carry
    assert (cfg['license'], cfg['paper_ids'], cfg['origin_url']) == (
        'apache-2.0', 'arXiv:2012.02278', 'https://arxiv.org/abs/2012.02278')


def test_forward_with_attention_is_one_pass_giving_forward_s_logits():
    model = _tiny().eval()
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    x = _randn(2, 1, 64, 64)
    with torch.no_grad():
        logits, attention = model.forward_with_attention(x)
        assert len(calls) == 1
        torch.testing.assert_close(logits, model(x))
        torch.testing.assert_close(attention, model.forward_features(x)[:, model.top_chs:])


def test_a_grey_model_takes_timms_usual_rgb_or_rgba_input_as_its_grey_luma():
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4).eval()
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 64, 64)
    luma = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])[:, None]
    with torch.no_grad():
        assert torch.allclose(model(rgb), model(luma), atol=1e-5)
        assert torch.allclose(model(torch.cat([rgb, torch.ones(2, 1, 64, 64)], 1)), model(luma), atol=1e-5)  # RGBA
        grey = torch.rand(2, 1, 64, 64)
        assert torch.allclose(model(grey.expand(-1, 3, -1, -1)), model(grey), atol=1e-5)
        # timm's own pipeline: an RGB PIL image through timm's transform for this model, straight in
        image = Image.fromarray((grey[0, 0].numpy() * 255).astype('uint8')).convert('RGB')
        batch = create_transform(**resolve_data_config(model=model))(image)[None]
        assert batch.shape[1] == 3 and model(batch).shape == (1, model.num_classes)
    with pytest.raises(RuntimeError):  # two channels are no image timm gives: refused by the stem, not guessed
        model(torch.rand(1, 2, 64, 64))


def test_display_map_is_the_mean_map_upsampled_to_the_input():
    attention = torch.zeros(1, 2, 2, 2)
    attention[0, 0, 1, 1] = 4.  # one hot cell in map 0, nothing in map 1: mean is 2 at (1, 1)
    shown = display_map(attention, 64)
    assert shown.shape == (1, 1, 64, 64)
    assert (shown >= 0).all()
    row, col = divmod(int(shown.flatten().argmax()), 64)
    assert row >= 32 and col >= 32
    torch.testing.assert_close(shown.max(), torch.tensor(2.))
    torch.testing.assert_close(display_map(torch.ones(3, 32, 7, 7), (20, 30)), torch.ones(3, 1, 20, 30))


def test_reset_classifier_keeps_device_dtype_and_mode():
    model = _tiny().eval().to(torch.bfloat16)
    model.reset_classifier(7)
    assert model.fc.weight.dtype == torch.bfloat16 and not model.fc.training
    assert model(_randn(1, 1, 64, 64).to(torch.bfloat16)).shape == (1, 7)



def test_a_classifier_asked_for_without_pooling_brings_back_bap_as_timms_heads_do():
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4, num_classes=0, global_pool='')
    assert model(_randn(1, 1, 64, 64)).ndim == 4  # the unpooled features and maps
    model.reset_classifier(2)
    assert model.global_pool == 'bap' and model(_randn(1, 1, 64, 64)).shape == (1, 2)
    model.reset_classifier(0, '')
    with pytest.raises(ValueError, match="global_pool='' returns unpooled features and maps: it needs num_classes=0"):
        model.reset_classifier(2, '')  # asked for explicitly: refused, never a classifier on unpooled maps

# MA-Net's options, one row each, in the manner of MONAI's network tests: the arguments, then what the
# built model must be on a (2, in_chans, 64, 64) batch: its output shape, its attention maps' shape,
# the backbone's top channels, the attended levels, and the stem its config names.
CASES = [
    # id, arguments, output, attention maps, top channels, levels, first conv
    ('defaults', {}, (2, 4), (2, 32, 2, 2), 96, [3, 4], 'backbone.conv1.0'),
    ('8 maps', dict(num_maps=8), (2, 4), (2, 8, 2, 2), 96, [3, 4], 'backbone.conv1.0'),
    ('top level only', dict(attn_levels=(-1,)), (2, 4), (2, 32, 2, 2), 96, [4], 'backbone.conv1.0'),
    ('three levels', dict(attn_levels=(-3, -2, -1)), (2, 4), (2, 32, 2, 2), 96, [2, 3, 4], 'backbone.conv1.0'),
    ('3 channels', dict(in_chans=3), (2, 4), (2, 32, 2, 2), 96, [3, 4], 'backbone.conv1.0'),
    ('3 classes, dropout', dict(num_classes=3, drop_rate=.25), (2, 3), (2, 32, 2, 2), 96, [3, 4], 'backbone.conv1.0'),
    ('BAP embedding', dict(num_classes=0), (2, 32 * 96), (2, 32, 2, 2), 96, [3, 4], 'backbone.conv1.0'),
    ('no pooling', dict(num_classes=0, global_pool=''), (2, 96 + 32, 2, 2), (2, 32, 2, 2), 96, [3, 4],
     'backbone.conv1.0'),
    ('EfficientNet', dict(backbone='test_efficientnet'), (2, 4), (2, 32, 2, 2), 64, [3, 4], 'backbone.conv_stem'),
    ('ConvNeXt', dict(backbone='test_convnext'), (2, 4), (2, 32, 2, 2), 64, [2, 3], 'backbone.stem_0'),
    ('ViT', dict(backbone='test_vit', backbone_kwargs=dict(dynamic_img_size=True)), (2, 4), (2, 32, 4, 4), 64, [1, 2],
     'backbone.model.patch_embed.proj'),
    ('ByobNet', dict(backbone='test_byobnet'), (2, 4), (2, 32, 2, 2), 256, [3, 4], 'backbone.stem.conv'),
]


@pytest.mark.parametrize('kwargs, output, maps, top_chs, levels, first_conv',
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_options_build_the_architecture_they_name(kwargs, output, maps, top_chs, levels, first_conv, tmp_path):
    model = timm.create_model('magsd_custom', **dict(dict(backbone='test_resnet'), **kwargs)).train()
    x = _randn(2, model.in_chans, 64, 64)
    out = model(x)
    features, attention = model.forward_features_and_attention(x)
    assert tuple(out.shape) == output and tuple(attention.shape) == maps and (attention >= 0).all()
    assert (model.top_chs, model.attn_levels, len(model.attention)) == (top_chs, levels, len(levels))
    assert model.num_features == top_chs + maps[1] and features.shape[1] == top_chs
    if model.num_classes:
        assert model.fc.in_features == maps[1] * top_chs and model.fc.out_features == output[1]
    assert model.head_drop.p == kwargs.get('drop_rate', 0.)
    # the stem the config names is this backbone's own, taking in_chans channels, in the saved config too
    assert model.pretrained_cfg['first_conv'] == first_conv
    assert model.get_submodule(first_conv).in_channels == model.in_chans
    save_for_hf(model, tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / 'config.json').read_text())['pretrained_cfg']['first_conv'] == first_conv
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_generic_entry_reads_channels_last_backbones():
    model = timm.create_model('magsd_custom', backbone='swin_tiny_patch4_window7_224', device='meta')
    assert model.feature_nhwc
    logits, attention = model.forward_with_attention(torch.empty(2, 1, 224, 224, device='meta'))
    assert logits.shape == (2, 4) and attention.shape == (2, 32, 7, 7)


def test_saved_config_replays_the_same_model(tmp_path):
    model = timm.create_model(
        'magsd_custom', backbone='test_efficientnet', num_maps=8, attn_levels=(-3, -1), num_classes=4).eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['architecture'] == 'magsd_custom'
    assert config['model_args']['backbone'] == 'test_efficientnet'
    assert config['pretrained_cfg']['label_names'] == list(CXR_LABEL_NAMES)
    assert not (tmp_path / 'pytorch_model.bin').exists()

    replayed = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert (replayed.backbone_name, replayed.num_maps, replayed.attn_levels) == ('test_efficientnet', 8, [2, 4])
    assert tuple(replayed.pretrained_cfg['label_names']) == CXR_LABEL_NAMES
    x = _randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(replayed(x), model(x))


def test_unknown_backbone_is_named_with_close_matches():
    with pytest.raises(ValueError, match=r"Unknown timm backbone 'resnet_50'.*resnet50"):
        timm.create_model('magsd_custom', backbone='resnet_50')


def test_backbone_with_too_few_feature_levels_is_refused():
    with pytest.raises(ValueError, match=r"attn_levels \(-2, -1\).*has 1 \(0 to 0\)"):
        timm.create_model('magsd_custom', backbone='test_resnet', backbone_kwargs=dict(out_indices=(4,)))


def test_top_attention_level_must_end_the_backbone():
    with pytest.raises(ValueError, match='must be the last feature level'):
        _tiny(attn_levels=(2, 3))


def test_backbone_timm_cannot_extract_features_from_is_refused(monkeypatch):
    def no_features(*args, **kwargs):
        raise RuntimeError('features_only not implemented for this model')
    monkeypatch.setattr(timm, 'create_model', no_features)
    with pytest.raises(ValueError, match=r"'test_resnet' cannot serve MA-Net.*features_only not implemented"):
        MANet(backbone='test_resnet')


@pytest.mark.parametrize('kwargs, message', [
    (dict(global_pool='avg'), "pools with 'bap'"),
    (dict(global_pool=''), 'needs num_classes=0'),
])
def test_unsupported_pooling_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**kwargs)


def test_pretrained_backbone_without_weights_is_refused():
    with pytest.raises(ValueError, match="'test_maxvit' has no pretrained weights"):
        timm.create_model('magsd_custom', backbone='test_maxvit', pretrained=True)


def test_import_registers_every_entry():
    assert set(timm.list_models('magsd_*')) >= {'magsd_resnet50', 'magsd_custom'}
    assert magsd_timm.__version__


def test_attention_dropout_leaves_whole_maps_out_of_the_pooled_vector_in_training_only():
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=8, num_classes=0, attn_drop_rate=0.5)
    x = _randn(4, 1, 64, 64)
    model.train()
    torch.manual_seed(0)
    parts = model(x).view(4, 8, -1)  # the BAP vector, map by map
    dropped = (parts == 0).all(dim=2)
    assert dropped.any() and not dropped.all()  # whole maps, some of them, per image
    assert ((parts != 0).any(dim=2) | dropped).all()
    plain = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=8, num_classes=0)
    plain.load_state_dict(model.state_dict())  # the dropout has no weights: checkpoints load either way
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))  # and in evaluation it does nothing
