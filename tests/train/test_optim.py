"""Which parameters train: frozen backbone stages (timm's freeze) by the model's own group_matcher."""
import pytest
import timm
import torch
from timm.layers import FrozenBatchNormAct2d
from timm.models import group_parameters

import magsd_timm  # noqa: F401
from magsd_timm.run_records import FINAL
from magsd_timm.train.optim import create_optimizer, freeze_stages
from magsd_timm.train.run_folder import RunFolder


def _frozen(model):
    """Names of what no longer trains: parameters without gradients, and BatchNorm affines turned into buffers."""
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n for n in model.state_dict() if n not in trained and n.rsplit('.', 1)[-1] in ('weight', 'bias')}


def test_the_first_stages_of_the_group_matcher_are_frozen_with_their_batchnorm_statistics():
    torch.manual_seed(0)
    model = timm.create_model('magsd_efficientnet_lite0', num_classes=2).train()
    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert not _frozen(model)
    freeze_stages(model, 2)
    first_two = {n for k in sorted(groups)[:2] for n in groups[k]}
    assert _frozen(model) == first_two and any(n.startswith('backbone.blocks.1.') for n in first_two)
    assert isinstance(model.backbone.bn1, FrozenBatchNormAct2d)
    stats = model.backbone.bn1.running_mean.clone()
    model(torch.randn(2, 1, 64, 64)).sum().backward()  # a training pass moves no frozen statistic
    assert torch.equal(model.backbone.bn1.running_mean, stats) and model.backbone.conv_stem.weight.grad is None
    for opt in ('paper', 'adamw'):  # the optimizer holds the trained parameters only
        optimizer = create_optimizer(model, opt, 1e-3, 0.9, 1e-4)
        held = {id(p) for g in optimizer.param_groups for p in g['params']}
        assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_a_plain_baseline_freezes_the_same_parameters_as_its_manet():
    manet = timm.create_model('magsd_efficientnet_lite0', device='meta')
    plain = timm.create_model('tf_efficientnet_lite0', num_classes=2, in_chans=1)
    freeze_stages(plain, 3, grouped_by=manet, prefix='backbone.')
    reference = timm.create_model('magsd_efficientnet_lite0', num_classes=2)
    freeze_stages(reference, 3)
    assert _frozen(plain) == {n[len('backbone.'):] for n in _frozen(reference)}


def test_freezing_every_stage_is_refused():
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_classes=2)
    stages = len(group_parameters(model, model.group_matcher(coarse=True)))
    with pytest.raises(ValueError, match='leave nothing but the head to train'):
        freeze_stages(model, stages - 1)
    freeze_stages(model, stages - 2)  # the whole backbone: attention and classifier train
    assert all(p.requires_grad for p in [*model.attention.parameters(), *model.fc.parameters()])
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_classes=2)
    assert freeze_stages(model, 0) == [] and not _frozen(model)


def test_a_model_with_frozen_stages_is_saved_as_its_architecture_and_reloads(tmp_path):
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_classes=2)
    freeze_stages(model, 2)
    RunFolder(tmp_path / 'run').save_model(FINAL, model, ['a', 'b'], dict(
        input_size=(1, 64, 64), interpolation='bilinear', mean=(0.5,), std=(0.5,), crop_pct=1.0, crop_mode='squash'),
        {'epoch': 0})
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'run' / FINAL}", pretrained=True).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model.eval()(x))
    assert isinstance(model.backbone.bn1, torch.nn.Module) and not _frozen(reloaded)
