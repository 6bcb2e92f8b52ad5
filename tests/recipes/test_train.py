"""recipes/train.py end to end on the bundled sample: outputs, exact resume after SIGKILL, NaN stop."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import yaml
from safetensors.torch import load_file

import magsd_timm  # noqa: F401  (registers the models)

RECIPE = Path(__file__).resolve().parents[2] / 'recipes' / 'train.py'
FAST = ['--img-size', '64', '--batch-size', '4', '--cpu']


def _train(output: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(RECIPE), '--output', str(output), *FAST, *args],
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_run_leaves_checkpoints_exports_and_a_summary(tmp_path):
    out = tmp_path / 'run'
    _train(out, '--epochs', '2')
    assert (out / 'args.yaml').exists() and (out / 'eval_best.json').exists()
    rows = (out / 'summary.csv').read_text().splitlines()
    assert rows[0].startswith('epoch,') and len(rows) == 3 and 'val_macro_f1' in rows[0]
    # 12 training images of the sample, batch 4: 3 steps an epoch, a checkpoint at each epoch's end
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['step_00000003', 'step_00000006']
    model = timm.create_model(f'local-dir:{out / "final"}', pretrained=True)
    assert list(model.pretrained_cfg['label_names']) == ['normal', 'pneumonia']
    assert {p.name for p in (out / 'final').iterdir()} == {'model.safetensors', 'config.json'}
    report = json.loads((out / 'eval_best.json').read_text())
    assert report['num_samples'] == 2 and set(report['sensitivity']) == {'normal', 'pneumonia'}
    assert '| macro_f1 |' in (out / 'eval_best.md').read_text()
    for plot in ('curves.png', 'confusion_matrix.png'):
        assert (out / plot).read_bytes()[:4] == b'\x89PNG'
    card = (out / 'best' / 'README.md').read_text()
    meta = yaml.safe_load(card.split('---')[1])
    assert meta['library_name'] == 'timm' and {'magsd', 'medical-imaging'} <= set(meta['tags'])
    assert 'import magsd_timm' in card and 'not a medical device' in card and '--epochs 2' in card


def test_the_run_says_how_to_push_it(tmp_path):
    proc = _train(tmp_path / 'run', '--epochs', '1')
    assert f"magsd-hub push-model {tmp_path / 'run'} ORG/NAME" in proc.stdout


def test_resume_after_sigkill_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    steady = tmp_path / 'steady'
    _train(steady, '--epochs', '3', '--checkpoint-every', '2')

    killed = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, str(RECIPE), '--output', str(killed), *FAST, '--epochs', '3',
                             '--checkpoint-every', '2'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / 'checkpoints' / 'step_00000008').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / 'final').exists()  # it really died before the end
    _train(killed, '--epochs', '3', '--checkpoint-every', '2', '--resume')

    a, b = load_file(steady / 'final' / 'model.safetensors'), load_file(killed / 'final' / 'model.safetensors')
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_non_finite_loss_stops_the_run_without_saving_after_it(tmp_path):
    out = tmp_path / 'nan'
    proc = _train(out, '--epochs', '2', '--lr', '1e12', '--checkpoint-every', '1', check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    message = next(line for line in proc.stderr.splitlines() if 'loss is' in line)
    failing_step = int(message.split('step ')[1].split(':')[0])
    saved = [int(p.name.split('_')[1]) for p in (out / 'checkpoints').iterdir()]
    assert saved and max(saved) <= failing_step  # nothing written after the step that broke
    assert not (out / 'final').exists()


def test_bad_arguments_are_refused_by_name(tmp_path):
    proc = _train(tmp_path / 'x', '--epochs', '0', check=False)
    assert proc.returncode == 2 and '--epochs' in proc.stderr
    proc = _train(tmp_path / 'x', '--model', 'resnet18', check=False)
    assert proc.returncode == 2 and 'magsd_*' in proc.stderr


def test_two_cpu_ranks_stay_in_sync_and_count_each_validation_image_once(tmp_path):
    from magsd_timm.data.sample import sample_records
    records = sample_records()
    manifest = tmp_path / 'm.csv'
    manifest.write_text('path,label,patient_id,split\n' + ''.join(
        f"{r['path']},{r['label']},{r['patient_id']},{'validation' if i in (0, 8, 9) else 'train'}\n"
        for i, r in enumerate(records)))
    out = tmp_path / 'ddp'
    proc = subprocess.run(
        [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
         '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', str(RECIPE),
         '--output', str(out), '--data', str(manifest), '--epochs', '1', '--img-size', '64', '--batch-size', '2',
         '--cpu'], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 process(es) in sync' in proc.stdout
    assert json.loads((out / 'eval_best.json').read_text())['num_samples'] == 3  # 3 images on 2 ranks: none twice


def test_baseline_trains_the_plain_backbone_and_options_run(tmp_path):
    _train(tmp_path / 'base', '--epochs', '1', '--method', 'baseline', '--label-smoothing', '0.1', '--balance', 'loss')
    config = json.loads((tmp_path / 'base' / 'final' / 'config.json').read_text())
    assert config['architecture'] == 'resnet18' and config['num_classes'] == 2
    _train(tmp_path / 'opts', '--epochs', '1', '--model-ema', '0.9', '--clip-grad', '1', '--opt', 'adamw',
           '--lr', '1e-4', '--sched', 'cosine', '--warmup-epochs', '0.5', '--balance', 'sampler', '--grad-accum', '2')
    assert (tmp_path / 'opts' / 'final' / 'model.safetensors').exists()
    _train(tmp_path / 'timm', '--epochs', '2', '--sched', 'timm:cosine', '--warmup-epochs', '1')
    lrs = [float(line.split(',')[1]) for line in (tmp_path / 'timm' / 'summary.csv').read_text().splitlines()[1:]]
    assert len(lrs) == 2 and lrs[0] != lrs[1]  # the factory's schedule moved the learning rate
    proc = _train(tmp_path / 'bad', '--sched', 'linear', check=False)
    assert proc.returncode == 2 and '--sched linear' in proc.stderr
