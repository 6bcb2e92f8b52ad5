"""A run folder: written by the trainer's calls, read back by find_run, claimed by one run at a time."""
import contextlib
import json

import pytest
import timm

import magsd_timm  # noqa: F401
from magsd_timm.errors import BadInputError
from magsd_timm.run_records import BEST, FINAL, find_run, read_args
from magsd_timm.train.run_folder import RunFolder
from magsd_timm.utils.outputs import OutputBusyError

CLASSES = ['bacterial pneumonia', 'normal']
DATA_CONFIG = dict(input_size=(1, 64, 64), interpolation='bilinear', mean=(0.449,), std=(0.226,), crop_pct=1.0,
                   crop_mode='squash')


def _metrics():
    per_class = {c: 0.5 for c in CLASSES}
    return dict(accuracy=0.75, macro_f1=float('nan'), ece=0.1, num_samples=4, confusion_matrix=[[1, 1], [0, 2]],
                **{m: dict(per_class) for m in ('sensitivity', 'specificity', 'ppv', 'npv', 'auroc', 'auprc')})


def test_what_the_trainer_writes_find_run_reads_back(tmp_path):
    run = RunFolder(tmp_path / 'run')
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_classes=2)
    run.write_args({'model': 'magsd_custom', 'epochs': 2}, 'accelerate launch recipes/train.py --epochs 2')
    run.save_model(BEST, model, CLASSES, DATA_CONFIG, {'epoch': 1}, card=lambda folder: f'card of {folder.name}')
    run.write_best_report(_metrics(), 1, CLASSES)
    run.save_model(FINAL, model, CLASSES, DATA_CONFIG, {'epoch': 1})
    run.write_summary([{'epoch': 0, 'train_loss': 1.0, 'val_accuracy': 0.5},
                       {'epoch': 1, 'train_loss': 0.5, 'val_accuracy': 0.75}])

    found = find_run(run.path)
    assert found.checkpoint == run.path / BEST and found.epoch == 1
    assert found.args == {'model': 'magsd_custom', 'epochs': 2}
    assert found.command == 'accelerate launch recipes/train.py --epochs 2'
    assert found.metrics['accuracy'] == 0.75 and found.metrics['macro_f1'] is None  # strict JSON: NaN is null
    config = json.loads((run.path / BEST / 'config.json').read_text())
    assert config['label_names'] == CLASSES and config['training'] == {'epoch': 1}
    assert config['pretrained_cfg']['input_size'] == [1, 64, 64]
    assert (run.path / BEST / 'README.md').read_text().startswith('card of ')  # rendered from the staged folder
    report = (run.path / 'eval_best.md').read_text()
    assert '| accuracy | 0.750 |' in report and '| macro_f1 | n/a |' in report
    assert find_run(run.path / FINAL).metrics is None  # the report belongs to best/ only
    assert run.read_summary(before_epoch=1) == [{'epoch': 0, 'train_loss': 1.0, 'val_accuracy': 0.5}]
    assert (run.path / 'summary.csv').read_text().splitlines()[0] == 'epoch,train_loss,val_accuracy'
    assert {p.name for p in run.path.iterdir()} >= {'args.yaml', 'best', 'final', 'eval_best.json', 'eval_best.md',
                                                    'confusion_matrix.png', 'summary.json', 'summary.csv', 'curves.png'}
    assert not [p for p in run.path.iterdir() if p.name.startswith('.')]  # no staging file left behind


def test_the_saved_config_names_the_classes_in_the_classifiers_order_for_readers_without_timm(tmp_path):
    from magsd_timm import CXR_LABEL_NAMES

    trained_order = sorted(CXR_LABEL_NAMES)  # a dataset's classes, sorted: not the architecture's default order
    assert trained_order != list(CXR_LABEL_NAMES)
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_classes=4)
    RunFolder(tmp_path / 'run').save_model(FINAL, model, trained_order, DATA_CONFIG, {'epoch': 1})
    config = json.loads((tmp_path / 'run' / FINAL / 'config.json').read_text())
    assert config['label_names'] == config['pretrained_cfg']['label_names'] == trained_order


def test_a_config_whose_two_lists_of_classes_disagree_is_refused():
    from magsd_timm.models.config import ConfigError, check_checkpoint_config

    config = dict(architecture='magsd_resnet18', num_classes=2, label_names=['a', 'b'],
                  pretrained_cfg=dict(label_names=['b', 'a']))
    with pytest.raises(ConfigError, match="one of them is not the classifier's order"):
        check_checkpoint_config(config)


def test_a_used_folder_is_refused_unless_resumed_and_a_held_one_always(tmp_path):
    run = RunFolder(tmp_path / 'run')
    run.write_args({}, 'train')
    (run.checkpoints / 'step_00000003').mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        with pytest.raises(BadInputError, match='is not empty: pass --resume'):
            run.claim(stack, resume=False)
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'notes.txt').write_text('not a run')
    with contextlib.ExitStack() as stack, pytest.raises(BadInputError, match='is not empty'):
        RunFolder(tmp_path / 'other').claim(stack, resume=False)
    with contextlib.ExitStack() as stack:
        assert run.claim(stack, resume=True) == []
        with contextlib.ExitStack() as other, pytest.raises(OutputBusyError, match='another training run'):
            RunFolder(tmp_path / 'run').claim(other, resume=True)


def test_claiming_clears_what_a_killed_run_left(tmp_path):
    run = RunFolder(tmp_path / 'run')
    (run.path / '.best.old').mkdir(parents=True)  # killed while replacing best/: the earlier best comes back
    (run.path / '.final.staging-abc').mkdir()
    (run.checkpoints / '.step_00000004.staging-save').mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        notes = run.claim(stack, resume=True)
    assert (run.path / BEST).is_dir() and len(notes) == 3
    assert sorted(p.name for p in run.path.iterdir()) == ['best', 'checkpoints']
    assert list(run.checkpoints.iterdir()) == []


@pytest.mark.parametrize('resume', [False, True])
def test_a_run_that_stopped_before_its_first_checkpoint_does_not_block_the_retry(tmp_path, resume):
    run = RunFolder(tmp_path / 'run')
    run.write_args({'epochs': 3, 'lr': 0.1}, 'train --epochs 3 --lr 0.1')
    run.write_skipped([{'file': 'a.png', 'reason': 'unreadable'}])
    with contextlib.ExitStack() as stack:
        notes = run.claim(stack, resume=resume)
    assert notes == [f'{run.path}: the run there stopped before its first checkpoint; starting afresh']
    assert list(run.path.iterdir()) == [] and read_args(run.path) == {}  # no record of a run that did not happen


def test_settings_that_change_a_result_are_told_apart_from_operational_ones():
    from magsd_timm.run_records import setting_differences

    recorded = {'epochs': 4, 'lr': 0.0003, 'model_kwargs': {'num_maps': 4}, 'workers': 0, 'output': 'a',
                'command': 'x', 'pretrained': False}
    same = dict(recorded, workers=2, output='b', command='y', resume=True, keep_checkpoints=5, checkpoint_every=3)
    assert setting_differences(recorded, same) == []
    assert setting_differences(recorded, dict(same, epochs=6, model_kwargs={'num_maps': 8}, seed=1)) == [
        'epochs: 4 then, 6 now', "model_kwargs: {'num_maps': 4} then, {'num_maps': 8} now",
        'seed: not recorded then, 1 now']


def test_an_unreadable_record_of_arguments_is_a_bad_input(tmp_path):
    (tmp_path / 'run').mkdir()
    for text in ('[unclosed', '- a list\n', b'\xff\xfe'):
        (tmp_path / 'run' / 'args.yaml').write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(BadInputError, match='args.yaml: not a'):
            read_args(tmp_path / 'run')
