"""The MAG-SD objective: one raw pass, three views, one loss, for any magsd_* model and wrapper."""
import copy

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import magsd_timm  # noqa: F401  (registers the models)
from magsd_timm.method.objective import VIEW_NAMES, MagSDObjective


def _tiny():
    torch.manual_seed(0)
    return timm.create_model('magsd_custom', backbone='test_resnet')


def _batch(b: int = 4, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, size, size, generator=g), torch.randint(0, 4, (b,), generator=g)


def _count_backbone_calls(model):
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize('fused, passes', [(False, 4), (True, 2)])
def test_one_raw_pass_and_the_views_give_one_loss_with_all_parts(fused, passes):
    model = _tiny().train()
    calls = _count_backbone_calls(model)
    images, labels = _batch()
    out = MagSDObjective(fused_views=fused)(model, images, labels, torch.Generator().manual_seed(0))
    assert len(calls) == passes
    expected = {'ce_raw', 'accuracy', 'loss'} | {f'{p}_{v}' for v in VIEW_NAMES for p in ('distance', 'ce')}
    assert set(out.parts) == expected
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (4, 4)
    torch.testing.assert_close(
        out.loss.detach(), out.parts['ce_raw'] + sum(out.parts[f'distance_{v}'] for v in VIEW_NAMES))


def test_same_seed_gives_the_same_loss():
    images, labels = _batch()

    def loss(seed):
        return MagSDObjective()(_tiny().train(), images, labels, torch.Generator().manual_seed(seed)).loss

    assert torch.equal(loss(3), loss(3))


@pytest.mark.parametrize('name', timm.list_models('magsd_*'))
def test_works_with_every_magsd_model(name):
    model = timm.create_model(name).train()
    images, labels = _batch(2, 64)
    out = MagSDObjective()(model, images, labels, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.parameters())


def test_works_under_autocast():
    model = _tiny().train()
    images, labels = _batch()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = MagSDObjective()(model, images, labels, torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    model = _tiny().train()
    images, labels = _batch(8, 64)
    objective = MagSDObjective()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    losses = []
    for step in range(12):
        out = objective(model, images, labels, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_a_model_without_attention_is_refused():
    with pytest.raises(TypeError, match='forward_with_attention'):
        MagSDObjective()(timm.create_model('test_resnet', in_chans=1), *_batch())


def _ddp_worker(rank: int, world_size: int, init_file: str, results: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    for pass_by_pass in (False, True):  # both backward forms in one launch: starting the processes is the cost
        model = _tiny().train()
        local = copy.deepcopy(model)
        ddp = DistributedDataParallel(model)
        images, labels = _batch(4, 64, seed=rank)  # each rank its own data
        objective = MagSDObjective()
        if pass_by_pass:
            objective.backward(ddp, images, labels, torch.Generator().manual_seed(rank))
        else:
            objective(ddp, images, labels, torch.Generator().manual_seed(rank)).loss.backward()
        objective(local, images, labels, torch.Generator().manual_seed(rank)).loss.backward()
        synced = torch.cat([p.grad.flatten() for p in ddp.module.parameters()])
        own = torch.cat([p.grad.flatten() for p in local.parameters()])
        torch.save({'synced': synced, 'own': own}, f'{results}.{pass_by_pass}.{rank}')
    dist.destroy_process_group()


def test_ddp_wrapped_model_syncs_the_gradients_of_all_four_passes_in_either_backward_form(tmp_path):
    results = str(tmp_path / 'grads')
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'init'), results), nprocs=2, join=True)
    for pass_by_pass in (False, True):
        ranks = [torch.load(f'{results}.{pass_by_pass}.{r}') for r in range(2)]
        torch.testing.assert_close(ranks[0]['synced'], ranks[1]['synced'])
        torch.testing.assert_close(ranks[0]['synced'], (ranks[0]['own'] + ranks[1]['own']) / 2)
        assert not torch.allclose(ranks[0]['own'], ranks[1]['own'])


@pytest.mark.parametrize('fused, diversity', [(False, 0.), (True, 0.), (False, 0.5)])
def test_pass_by_pass_backward_gives_the_joint_loss_and_gradients(fused, diversity):
    images, labels = _batch()
    joint_model, split_model = _tiny().train(), _tiny().train()
    objective = MagSDObjective(fused_views=fused, view_weights=(1., .5, 2.), diversity=diversity)
    joint = objective(joint_model, images, labels, torch.Generator().manual_seed(5))
    joint.loss.backward()
    split = objective.backward(split_model, images, labels, torch.Generator().manual_seed(5))
    torch.testing.assert_close(split.loss, joint.loss.detach())
    assert split.parts.keys() == joint.parts.keys()
    for (name, a), b in zip(joint_model.named_parameters(), split_model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_pass_by_pass_backward_uses_the_given_backward_once_per_pass():
    calls = []
    MagSDObjective().backward(_tiny().train(), *_batch(), backward=lambda loss: (calls.append(1), loss.backward()))
    assert len(calls) == 4


class _CountingDataParallel(torch.nn.DataParallel):
    """DataParallel (on the CPU it calls its module directly) that counts the passes made through it."""

    def __init__(self, module):
        super().__init__(module)
        self.passes = 0

    def forward(self, *args, **kwargs):
        self.passes += 1
        return super().forward(*args, **kwargs)


def _spied_and_wrapped(wrapper: str):
    """A tiny MA-Net whose forward records each call's return_attention, and its wrapper."""
    model, entered = _tiny().train(), []
    forward = model.forward
    model.forward = lambda *a, **k: (entered.append(k.get('return_attention', False)), forward(*a, **k))[1]
    if wrapper == 'DataParallel':
        return model, _CountingDataParallel(model), entered
    torch._dynamo.reset()
    # the 'eager' backend runs the captured graph as is: what matters is that the raw pass enters the compiled forward
    return model, torch.compile(model, backend='eager'), entered


@pytest.mark.parametrize('wrapper', ['DataParallel', 'torch.compile'])
@pytest.mark.parametrize('pass_by_pass', [False, True])
def test_every_pass_goes_through_the_wrapper_with_the_unwrapped_models_loss_and_gradients(wrapper, pass_by_pass):
    images, labels = _batch()
    objective = MagSDObjective()
    reference = _tiny().train()
    expected = objective(reference, images, labels, torch.Generator().manual_seed(2))
    expected.loss.backward()
    model, wrapped, entered = _spied_and_wrapped(wrapper)
    run = objective.backward if pass_by_pass else objective
    out = run(wrapped, images, labels, torch.Generator().manual_seed(2))
    if not pass_by_pass:
        out.loss.backward()
    if wrapper == 'DataParallel':
        assert wrapped.passes == 4
    assert entered == [True, False, False, False]  # the raw pass (with its maps), then the three views
    torch.testing.assert_close(out.loss.detach(), expected.loss.detach())
    for (name, a), b in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_the_diversity_penalty_adds_the_weighted_overlap_of_the_raw_maps_and_logs_it():
    from magsd_timm.method.losses import map_overlap

    images, labels = _batch()
    plain = MagSDObjective()(_tiny().train(), images, labels, torch.Generator().manual_seed(5))
    model = _tiny().train()
    penalised = MagSDObjective(diversity=2.)(model, images, labels, torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, attention = _tiny().train()(images, return_attention=True)
    overlap = map_overlap(attention)
    assert 'map_overlap' not in plain.parts and penalised.parts['map_overlap'] == pytest.approx(float(overlap))
    assert float(penalised.loss) == pytest.approx(float(plain.loss) + 2 * float(overlap), rel=1e-5)
    assert penalised.parts['loss'] == pytest.approx(float(penalised.loss))
