"""Learning-rate schedules and checkpoint folders of the training loop."""

import pytest
from accelerate import Accelerator

from magsd_timm.train.checkpoint import TrainProgress, latest_checkpoint, save_checkpoint
from magsd_timm.train.loop import lr_factor


def test_paper_schedule_drops_tenfold_at_half_and_83_percent_after_warmup():
    factor = lr_factor('step', total_steps=100, warmup_steps=4)
    assert [factor(s) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert factor(49) == 1.0 and factor(50) == pytest.approx(0.1) and factor(83) == pytest.approx(0.01)


def test_cosine_schedule_ends_at_zero_and_constant_stays():
    cosine = lr_factor('cosine', total_steps=10)
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.)
    assert lr_factor('constant', 10)(9) == 1.0
    with pytest.raises(ValueError, match="Unknown schedule 'linear'"):
        lr_factor('linear', 10)


def test_checkpoints_are_complete_folders_and_only_the_newest_are_kept(tmp_path):
    accelerator = Accelerator(cpu=True)
    progress = TrainProgress()
    accelerator.register_for_checkpointing(progress)
    for step in (1, 2, 3):
        progress.global_step = step
        save_checkpoint(accelerator, tmp_path, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['step_00000002', 'step_00000003']
    (tmp_path / '.step_00000009.tmp').mkdir()  # a save killed half-way is never taken for a checkpoint
    assert latest_checkpoint(tmp_path).name == 'step_00000003'
    progress.global_step = 0
    accelerator.load_state(str(latest_checkpoint(tmp_path)))
    assert progress.global_step == 3
    assert latest_checkpoint(tmp_path / 'none') is None


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    from magsd_timm.outputs import OutputWriteError

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
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # no partial .tmp left behind
    assert sorted(p.name for p in good.iterdir()) == saved and latest_checkpoint(tmp_path) == good


def test_what_killed_saves_left_is_removed(tmp_path):
    from magsd_timm.train.checkpoint import remove_partial_checkpoints

    (tmp_path / '.step_00000004.tmp').mkdir()
    (tmp_path / 'step_00000002').mkdir()
    assert [p.name for p in remove_partial_checkpoints(tmp_path)] == ['.step_00000004.tmp']
    assert [p.name for p in tmp_path.iterdir()] == ['step_00000002']
