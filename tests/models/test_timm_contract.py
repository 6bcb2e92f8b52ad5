"""What timm's own per-model tests do not check of every registered magsd_* model.

timm's tests/test_models.py itself (forward, backward, config shapes and head resets, features_only,
TorchScript and FX runs) runs in CI from the installed timm's sdist (.ci/timm_models); this file
keeps the rest of timm's API: unknown arguments, device and dtype, parameter groups, weight decay,
bf16, gradient checkpointing, intermediates, and TorchScript and FX outputs equal to eager ones.
"""
import fnmatch

import pytest
import timm
import torch
from timm.layers import create_feature_extractor, get_graph_node_names
from timm.models import group_parameters

import magsd_timm  # noqa: F401  (registers the models)

MODEL_NAMES = timm.list_models('magsd_*')
SMALL = (1, 64, 64)

# Known limits of timm itself, not of MA-Net: its getter feature extractor (ViT) cannot be compiled
# by TorchScript, and a ViT with dynamic_img_size (which lets MA-Net run at 224 and 448) cannot be
# traced by FX. The *_exclusions_really_fail tests prove each exclusion is still needed (.ci/timm_models
# excludes the same from timm's suite).
NOT_SCRIPTABLE = ['magsd_vit_*']
NOT_FX_TRACEABLE = ['magsd_vit_*']


def _small_input(batch_size: int = 2) -> torch.Tensor:
    return torch.randn(batch_size, *SMALL, generator=torch.Generator().manual_seed(0))


def _split(excluded: list) -> tuple:
    matches = [n for n in MODEL_NAMES if any(fnmatch.fnmatch(n, f) for f in excluded)]
    return [n for n in MODEL_NAMES if n not in matches], matches


SCRIPTABLE, UNSCRIPTABLE = _split(NOT_SCRIPTABLE)
FX_TRACEABLE, FX_UNTRACEABLE = _split(NOT_FX_TRACEABLE)


def test_zoo_spans_families_and_a_generic_entry():
    families = ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'densenet', 'efficientnet_', 'efficientnetv2',
                'convnext', 'regnet', 'mobilenetv3', 'vit', 'custom']
    for family in families:
        assert any(family in name for name in MODEL_NAMES), family


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_unknown_kwarg_raises_type_error(name):
    with pytest.raises(TypeError):
        timm.create_model(name, device='meta', not_an_argument=1)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_device_and_dtype_kwargs_are_honoured(name):
    model = timm.create_model(name, device='meta', dtype=torch.bfloat16)
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_group_matcher_gives_ordered_groups_covering_every_parameter(name):
    model = timm.create_model(name, device='meta')
    names = [n for n, _ in model.named_parameters()]
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert len(groups) > 2
        assert sorted(n for g in groups.values() for n in g) == sorted(names)
        last = groups[max(groups)]
        assert 'fc.weight' in last and not any(n.startswith('backbone.') for n in last)
        assert any(n.startswith('backbone.') for n in groups[min(groups)])


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_no_weight_decay_names_real_parameters(name):
    model = timm.create_model(name, device='meta')
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names
    if 'vit' in name:
        assert {'backbone.model.pos_embed', 'backbone.model.cls_token'} <= model.no_weight_decay()


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_bf16_model_gives_bf16_output(name):
    model = timm.create_model(name).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(_small_input().to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_grad_checkpointing_gives_equal_outputs_and_gradients(name):
    model = timm.create_model(name).eval()
    x = _small_input()
    out = model(x)
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.sum().backward()
    torch.testing.assert_close(out_ckpt, out)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


@pytest.mark.parametrize('name', SCRIPTABLE)
def test_torchscript_matches_eager(name):
    with timm.set_scriptable(True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _small_input(1)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('name', UNSCRIPTABLE)
def test_torchscript_exclusions_really_fail(name):
    with timm.set_scriptable(True):
        model = timm.create_model(name).eval()
    with pytest.raises(RuntimeError):
        torch.jit.script(model)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_forward_intermediates_match_feature_info_and_forward_features(name):
    model = timm.create_model(name).eval()
    x = _small_input()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape[1] for t in intermediates] == [f['num_chs'] for f in model.feature_info]
    assert [SMALL[-1] // t.shape[-1] for t in intermediates] == [f['reduction'] for f in model.feature_info]
    for a, b in zip(last_two, intermediates[-2:]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', FX_TRACEABLE)
def test_fx_trace_matches_eager(name):
    model = timm.create_model(name).eval()
    _, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x = _small_input(1)
    with torch.no_grad():
        fx_out = tuple(fx_model(x).values())[0]
        torch.testing.assert_close(fx_out, model(x))


@pytest.mark.parametrize('name', FX_UNTRACEABLE)
def test_fx_exclusions_really_fail(name):
    with pytest.raises(torch.fx.proxy.TraceError):
        get_graph_node_names(timm.create_model(name).eval())
