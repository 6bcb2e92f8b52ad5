"""The magsd command, run as users run it (the installed console script), on real and generated radiographs."""
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import timm
import torch
from timm.models import save_for_hf

import magsd_timm
from magsd_timm.data import build_transforms, read_image, resolve_cxr_data_config
from magsd_timm.data.sample import sample_records
from support.dicom_files import write_dicom

CLI = shutil.which('magsd', path=str(Path(sys.executable).parent))  # this interpreter's script
SAMPLE = Path(sample_records()[0]['path']).parents[1]  # .../kermany16 with normal/ and pneumonia/ folders


def magsd(*args) -> subprocess.CompletedProcess:
    assert CLI, 'the magsd console script is not installed (pip install -e .)'
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture
def magsd_here(capsys):
    """The magsd command's main in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from magsd_timm.cli.magsd import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run


@pytest.mark.subprocess
def test_the_console_script_runs_and_every_command_has_help_with_the_exit_codes(capsys):
    from magsd_timm.cli.magsd import main

    proc = magsd('predict', '--help')  # the installed script itself, once
    assert proc.returncode == 0 and 'Exit codes' in proc.stdout and '--allow-untrained' in proc.stdout
    for command in ('predict', 'evaluate', 'export', 'info', 'push-model', 'push-dataset'):
        with pytest.raises(SystemExit) as exit_:
            main([command, '--help'])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and '4  an exported model does not reproduce' in out and '--traceback' in out


def test_the_hub_commands_are_magsd_sub_commands_too(trained_run, tmp_path, capsys):
    from magsd_timm.cli.magsd import main

    assert main(['push-model', str(trained_run), 'org/cxr', '--dry-run', str(tmp_path / 'staged')]) == 0
    assert f"staged for org/cxr in {tmp_path / 'staged'}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / 'staged').iterdir()) == ['README.md', 'config.json', 'model.safetensors']


@pytest.mark.subprocess
def test_help_and_version_load_neither_torch_nor_timm():
    code = ('import sys\nfrom magsd_timm.cli.magsd import main\nfrom magsd_timm.cli.magsd_hub import main as hub\n'
            'for run, argv in ((main, ["--help"]), (main, ["push-model", "--help"]), (hub, ["--version"])):\n'
            '    try:\n        run(argv)\n    except SystemExit:\n        pass\n'
            'print(sorted(m for m in ("torch", "timm", "huggingface_hub", "numpy") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == '[]'


def test_predict_prints_probabilities_of_the_bundled_radiographs(trained_run, tmp_path, magsd_here):
    proc = magsd_here('predict', trained_run, SAMPLE / 'normal', str(SAMPLE / 'pneumonia' / '*.jpeg'),
                      '--format', 'json', '--heatmap', tmp_path / 'maps')
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result['predictions']) == 16 and result['failed'] == []
    model = magsd_timm.load(str(trained_run)).eval()
    transform = build_transforms(resolve_cxr_data_config(model))
    for row in result['predictions']:
        assert set(row['probabilities']) == {'bacterial pneumonia', 'normal'}
        with torch.no_grad():
            expected = model(transform(read_image(row['file']))[None]).softmax(-1)[0]
        got = [row['probabilities'][c] for c in ('bacterial pneumonia', 'normal')]
        assert got == pytest.approx(expected.tolist(), abs=1e-5)
        assert row['predicted'] == max(row['probabilities'], key=row['probabilities'].get)
        assert Path(row['heatmap']).read_bytes()[:4] == b'\x89PNG' and row['map'] == 'evidence'
    assert len(list((tmp_path / 'maps').iterdir())) == 16


def test_predict_draws_the_map_asked_for(trained_run, tmp_path, magsd_here):
    proc = magsd_here('predict', trained_run, SAMPLE / 'normal', '--format', 'csv', '--heatmap', tmp_path / 'maps',
                      '--map', 'top')
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 8 and {row['map'] for row in rows} == {'top'} and proc.stderr == ''


def test_a_model_without_attention_maps_draws_grad_cam_and_says_so(tmp_path, magsd_here):
    torch.manual_seed(0)
    save_for_hf(timm.create_model('test_resnet', in_chans=1, num_classes=2), tmp_path / 'plain',
                model_config={'label_names': ['bacterial pneumonia', 'normal']})
    proc = magsd_here('predict', tmp_path / 'plain', '--allow-untrained', SAMPLE / 'normal', '--format', 'json',
                      '--heatmap', tmp_path / 'maps')
    assert proc.returncode == 0, proc.stderr
    assert {row['map'] for row in json.loads(proc.stdout)['predictions']} == {'grad-cam'}
    assert 'has no attention maps, so the overlays show grad-cam, not the evidence map' in proc.stderr
    assert len(list((tmp_path / 'maps').glob('*.png'))) == 8


@pytest.mark.parametrize('command, needs', [('predict', '--heatmap'), ('evaluate', '--boxes')])
def test_a_map_is_chosen_only_where_one_is_drawn(command, needs, magsd_here):
    inputs = [str(SAMPLE / 'normal')] if command == 'predict' else []
    proc = magsd_here(command, 'magsd_custom', *inputs, '--map', 'top')
    assert proc.returncode == 2 and f'--map top chooses the heat map of {needs}, which was not given' in proc.stderr
    assert proc.stderr.count('\n') == 1


def test_predict_reads_dicom_of_both_photometries_and_bit_depths(trained_run, tmp_path, magsd_here):
    ramp = np.linspace(0, 1, 96 * 80).reshape(96, 80)
    write_dicom(tmp_path / 'mono2_16.dcm', np.round(ramp * 4095).astype(np.uint16))
    write_dicom(tmp_path / 'mono1_16.dcm', np.round((1 - ramp) * 4095).astype(np.uint16), photometric='MONOCHROME1')
    write_dicom(tmp_path / 'mono2_8.dcm', np.round(ramp * 255).astype(np.uint8))
    write_dicom(tmp_path / 'mono1_8.dcm', np.round((1 - ramp) * 255).astype(np.uint8), photometric='MONOCHROME1')
    proc = magsd_here('predict', trained_run, tmp_path, '--format', 'csv')
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r['file']).name: r for r in csv.DictReader(io.StringIO(proc.stdout))}
    assert set(rows) == {'mono1_16.dcm', 'mono2_16.dcm', 'mono1_8.dcm', 'mono2_8.dcm'}
    # MONOCHROME1 stores the inverted image: once read, both photometries are the same radiograph
    for bits in ('16', '8'):
        assert float(rows[f'mono1_{bits}.dcm']['normal']) == pytest.approx(float(rows[f'mono2_{bits}.dcm']['normal']),
                                                                           abs=1e-4)


def test_an_output_file_named_csv_or_json_gets_that_format_unless_format_says_otherwise(trained_run, tmp_path,
                                                                                         magsd_here):
    for name, check in (('p.csv', lambda text: next(csv.DictReader(io.StringIO(text)))['file']),
                        ('p.json', lambda text: json.loads(text)), ('p.txt', lambda text: text.index('predicted'))):
        assert magsd_here('predict', trained_run, SAMPLE / 'normal', '--output', tmp_path / name).returncode == 0
        check((tmp_path / name).read_text())  # parses in the format its name asks for
    assert magsd_here('predict', trained_run, SAMPLE / 'normal', '--output', tmp_path / 'q.csv',
                      '--format', 'table').returncode == 0
    assert (tmp_path / 'q.csv').read_text().startswith('file ')  # the table, as asked


def test_help_says_percent_once(capsys):
    from magsd_timm.cli.magsd import main

    with pytest.raises(SystemExit):
        main(['evaluate', '--help'])
    out = capsys.readouterr().out
    assert 'bootstrap 95% CIs' in out and '%%' not in out


def test_unreadable_and_missing_inputs_are_reported_and_the_rest_predicted(trained_run, tmp_path, magsd_here):
    (tmp_path / 'notes.png').write_text('not an image')
    good = sample_records()[0]['path']
    proc = magsd_here('predict', trained_run, good, tmp_path / 'notes.png', tmp_path / 'gone.jpeg')
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ['file', 'predicted'] and len(lines) == 2 and lines[1].startswith(good)
    assert 'notes.png: not an image file' in proc.stderr and 'gone.jpeg: no such file or folder' in proc.stderr
    assert '2 input(s) failed, 1 image(s) predicted' in proc.stderr


def test_an_image_that_cannot_be_a_radiograph_is_refused_never_answered(trained_run, tmp_path, magsd_here):
    from PIL import Image

    Image.new('L', (512, 512), 255).save(tmp_path / 'white.png')
    good = sample_records()[0]['path']
    proc = magsd_here('predict', trained_run, good, tmp_path / 'white.png')
    assert proc.returncode == 1 and 'white.png: blank or nearly constant' in proc.stderr
    assert 'white.png' not in proc.stdout and len(proc.stdout.strip().splitlines()) == 2  # the header and the film


def test_file_names_with_control_or_bidirectional_characters_cannot_break_or_reverse_a_row(
        trained_run, tmp_path, magsd_here):
    film = Path(sample_records()[0]['path']).read_bytes()
    named = tmp_path / 'a\u202egpj.\x1b[31mb\nc.jpeg'  # reverses the rest of a line, colours it, breaks it
    named.write_bytes(film)
    (tmp_path / 'gone\u2067.png').write_text('not an image')
    proc = magsd_here('predict', trained_run, named, tmp_path / 'gone\u2067.png')
    rows = proc.stdout.strip().splitlines()
    assert len(rows) == 2 and 'a\\u202egpj.\\x1b[31mb\\nc.jpeg' in rows[1]
    assert not any(c in proc.stdout + proc.stderr for c in '\u202e\u2067\x1b')
    assert 'gone\\u2067.png' in proc.stderr


def test_an_unknown_model_lists_close_matches(magsd_here):
    proc = magsd_here('info', 'magsd_resnet5')
    assert proc.returncode == 2 and 'Close matches: magsd_resnet50' in proc.stderr


def test_evaluate_writes_reports_with_bootstrap_intervals_by_patient(trained_run, tmp_path, magsd_here):
    proc = magsd_here('evaluate', trained_run, '--split', 'train', '--bootstrap', '200', '--output', tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / 'evaluation.json').read_text())
    assert report['num_images'] == 12 and report['bootstrap']['resampled'] == 'patient'
    assert report['num_patients'] == 11  # person1946's two films are one patient
    metrics, intervals = report['metrics'], report['intervals']
    for name in ('accuracy', 'macro_f1', 'ece'):
        low, high = intervals[name]
        assert low <= metrics[name] + 1e-9 and metrics[name] <= high + 1e-9
    assert set(metrics['auprc']) == {'bacterial pneumonia', 'normal'} and len(intervals['sensitivity']['normal']) == 2
    # the confusion matrix is that of the predictions predict gives for the same images
    predicted = json.loads(magsd_here('predict', trained_run, *[r['path'] for r in _train_records()],
                                 '--format', 'json').stdout)['predictions']
    matrix = [[0, 0], [0, 0]]
    for row, record in zip(predicted, _train_records()):
        classes = ['bacterial pneumonia', 'normal']
        matrix[classes.index(record['label'])][classes.index(row['predicted'])] += 1
    assert metrics['confusion_matrix'] == matrix
    for name in ('evaluation.md', 'confusion_matrix.png', 'roc.png', 'pr.png', 'reliability.png'):
        assert (tmp_path / name).exists(), name
    assert '[95% CI]' in (tmp_path / 'evaluation.md').read_text()
    hiding = report['hiding']  # the lungs (no boxes: the central region) and the border hidden, every image
    assert hiding['num_images'] == 12 and hiding['with_lung_boxes'] == 0 and hiding['focus_class'] is None
    assert all(0 <= hiding[c][k] <= 1 for c in ('lungs', 'border') for k in ('hidden_share', 'answers_changed'))
    # the central region at 64 px: rows 10-53, columns 13-50
    assert 'lungs hidden: ' in proc.stdout and '| lungs hidden | 0.408 |' in (tmp_path / 'evaluation.md').read_text()


def _train_records():
    from magsd_timm.data import open_dataset

    return open_dataset(None, 'train').items


def test_a_checkpoint_without_the_datas_classes_is_refused_with_both_lists(tmp_path, magsd_here):
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4, num_classes=2)
    save_for_hf(model, tmp_path / 'covid', safe_serialization=True, model_config={'label_names': ['COVID-19', 'normal']})
    proc = magsd_here('evaluate', tmp_path / 'covid', '--output', tmp_path / 'out', '--allow-untrained')
    assert proc.returncode == 2
    assert "['COVID-19', 'normal']" in proc.stderr and "'bacterial pneumonia' is not among its classes" in proc.stderr
    assert not (tmp_path / 'out').exists()


def test_a_four_class_checkpoint_evaluates_data_holding_two_of_its_classes(tmp_path, magsd_here):
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4)  # the 4 CXR classes
    save_for_hf(model, tmp_path / 'cxr4', safe_serialization=True,
                model_config={'label_names': list(magsd_timm.CXR_LABEL_NAMES)})
    proc = magsd_here('evaluate', tmp_path / 'cxr4', '--split', 'train', '--bootstrap', '20', '--output',
                      tmp_path / 'out', '--allow-untrained')
    assert proc.returncode == 0, proc.stderr
    assert 'absent classes: COVID-19, viral pneumonia' in proc.stdout
    report = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())
    assert report['absent_classes'] == ['COVID-19', 'viral pneumonia']
    assert set(report['metrics']['sensitivity']) == set(magsd_timm.CXR_LABEL_NAMES)  # predictions over all four


def _calibration_manifest(folder: Path, checkpoint: Path, magsd_here, images: int = 40, validation: int = 30) -> Path:
    """Seeded crops of the bundled radiographs (distinct files), the first `validation` of them that split.

    Each crop is labelled with the checkpoint's own prediction, except every fifth with the other
    class: a model right on 80% of the images, whatever the training gave, has a likelihood with a
    minimum inside the temperature range (a perfect or hopeless one would not).
    """
    import random

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng, records = random.Random(0), sample_records()
    for i in range(images):
        with Image.open(records[i % len(records)]['path']) as image:
            image = image.convert('L')
            w, h = image.size
            x, y = rng.randint(0, w // 8), rng.randint(0, h // 8)
            image.crop((x, y, x + w * 7 // 8, y + h * 7 // 8)).resize((96, 96)).save(folder / f'crop{i:02d}.png')
    crops = [folder / f'crop{i:02d}.png' for i in range(images)]
    predicted = [row['predicted'] for row in json.loads(
        magsd_here('predict', checkpoint, *crops, '--format', 'json').stdout)['predictions']]
    classes = ['bacterial pneumonia', 'normal']
    rows = ['path,label,split'] + [
        f"{crop.name},{label if i % 5 else classes[1 - classes.index(label)]},{'validation' if i < validation else 'test'}"
        for i, (crop, label) in enumerate(zip(crops, predicted))]
    (folder / 'manifest.csv').write_text('\n'.join(rows) + '\n')
    return folder / 'manifest.csv'


def test_calibration_saves_a_temperature_that_predict_then_uses(trained_run, tmp_path, magsd_here):
    checkpoint = tmp_path / 'checkpoint'
    shutil.copytree(trained_run / 'best', checkpoint)
    image = sample_records()[0]['path']
    before = json.loads(magsd_here('predict', checkpoint, image, '--format', 'json').stdout)['predictions'][0]
    manifest = _calibration_manifest(tmp_path / 'data', checkpoint, magsd_here)
    proc = magsd_here('evaluate', checkpoint, manifest, '--split', 'test', '--calibrate', '--bootstrap', '20',
                      '--output', tmp_path / 'out')
    assert proc.returncode == 0, proc.stderr
    temperature = json.loads((checkpoint / 'config.json').read_text())['temperature']
    report = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())
    assert report['calibration']['temperature'] == temperature == report['temperature']
    assert report['calibration']['ece_after'] <= report['calibration']['ece_before'] + 1e-9
    after = json.loads(magsd_here('predict', checkpoint, image, '--format', 'json').stdout)['predictions'][0]
    logits = torch.tensor([before['probabilities'][c] for c in ('bacterial pneumonia', 'normal')]).log()
    expected = (logits / temperature).softmax(-1).tolist()
    assert [after['probabilities'][c] for c in ('bacterial pneumonia', 'normal')] == pytest.approx(expected, abs=1e-4)


def test_calibration_on_too_few_images_is_refused_and_saves_nothing(trained_run, tmp_path, magsd_here):
    checkpoint = tmp_path / 'checkpoint'
    shutil.copytree(trained_run / 'best', checkpoint)
    config = (checkpoint / 'config.json').read_bytes()
    proc = magsd_here('evaluate', checkpoint, '--calibrate', '--calibration-split', 'validation', '--output', tmp_path / 'o')
    assert proc.returncode == 2 and 'needs at least 20 calibration images' in proc.stderr and 'has 2' in proc.stderr
    assert (checkpoint / 'config.json').read_bytes() == config and not (tmp_path / 'o').exists()


def test_calibration_needs_a_local_checkpoint(magsd_here):
    proc = magsd_here('evaluate', 'magsd_custom', '--calibrate')
    assert proc.returncode == 2 and 'needs a local checkpoint folder' in proc.stderr


def test_export_onnx_and_torchscript_match_eager_at_another_batch(trained_run, tmp_path, magsd_here):
    model = magsd_timm.load(str(trained_run)).eval()
    images = torch.randn(4, 1, 64, 64)  # the size the checkpoint was trained at, so the size it is exported at
    with torch.no_grad():
        expected = model(images)
    proc = magsd_here('export', trained_run, '--format', 'onnx', '--output', tmp_path / 'm.onnx')
    assert proc.returncode == 0, proc.stderr
    assert 'same logits as eager at batch 3' in proc.stdout
    session = onnxruntime.InferenceSession(str(tmp_path / 'm.onnx'))
    torch.testing.assert_close(torch.from_numpy(session.run(None, {'input': images.numpy()})[0]), expected,
                               rtol=1e-4, atol=1e-3)
    proc = magsd_here('export', trained_run, '--format', 'torchscript', '--output', tmp_path / 'm.pt')
    assert proc.returncode == 0, proc.stderr
    torch.testing.assert_close(torch.jit.load(str(tmp_path / 'm.pt'))(images), expected, rtol=1e-4, atol=1e-3)


def test_info_describes_the_checkpoint(trained_run, magsd_here):
    proc = magsd_here('info', trained_run, '--json')
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    model = magsd_timm.load(str(trained_run))
    assert info['architecture'] == 'magsd_custom' and info['backbone'] == 'test_resnet'
    assert info['parameters'] == sum(p.numel() for p in model.parameters())
    # trained at 64 px (the fixture's --img-size 64): the checkpoint keeps that size, and so the model's data config
    assert info['label_names'] == ['bacterial pneumonia', 'normal'] and info['data_config']['input_size'] == [1, 64, 64]
    assert info['trained_on']['img_size'] == 64 and info['trained_on']['data'] == 'sample'
    assert info['gmacs'] > 0 and info['attention_maps'] == 4


@pytest.mark.parametrize('args, message', [
    (['predict', 'magsd_custom', 'x.png', '--batch-size', '0'], 'argument --batch-size: 0 must be >= 1'),
    (['evaluate', 'magsd_custom', '--bootstrap', 'nan'], "argument --bootstrap: 'nan' is not an integer"),
    (['export', 'magsd_custom', '--format', 'tflite'], "invalid choice: 'tflite'"),
    (['predict', 'magsd_custom', 'x.png', '--map', 'evidense'],
     "argument --map: invalid choice: 'evidense' (choose from 'evidence', 'mean', 'top', 'grad-cam')"),
])
def test_bad_arguments_are_named(args, message, capsys):
    from magsd_timm.cli.magsd import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def _strict_json(text: str):
    """JSON as strict parsers read it: a bare NaN or Infinity is an error."""
    def refuse(constant):
        raise ValueError(f'bare {constant} in JSON')
    return json.loads(text, parse_constant=refuse)


def test_predict_handles_names_that_are_not_utf8_and_bombs_and_writes_its_output_whole(trained_run, tmp_path,
                                                                                       magsd_here):
    import os

    from support.image_files import bomb_png

    folder = tmp_path / 'in'
    folder.mkdir()
    odd = os.fsencode(str(folder)) + b'/scan_\xff.jpeg'
    shutil.copyfile(sample_records()[0]['path'], odd)
    bomb_png(folder / 'bomb.png')
    output = tmp_path / 'existing.json'
    output.write_text('earlier output')
    proc = magsd_here('predict', trained_run, folder, '--format', 'json', '--output', output, '--heatmap', tmp_path / 'maps')
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    result = _strict_json(output.read_text(encoding='utf-8'))
    assert [Path(p['file']).name for p in result['predictions']] == ['scan_\\xff.jpeg']
    assert [Path(f['file']).name for f in result['failed']] == ['bomb.png'] and 'bomb' in result['failed'][0]['error']
    assert [p.name for p in (tmp_path / 'maps').iterdir()] == ['scan_\\xff.png']
    assert 'bomb.png' in proc.stderr and '1 input(s) failed, 1 image(s) predicted' in proc.stderr


def _with_config(trained_run, tmp_path, **values) -> Path:
    checkpoint = tmp_path / 'checkpoint'
    shutil.copytree(trained_run / 'best', checkpoint)
    config = json.loads((checkpoint / 'config.json').read_text())
    (checkpoint / 'config.json').write_text(json.dumps(dict(config, **values)))
    return checkpoint


@pytest.mark.parametrize('temperature', [-1, 0, float('nan')])
def test_an_invalid_temperature_is_refused_and_an_earlier_output_kept(trained_run, tmp_path, temperature, magsd_here):
    checkpoint = _with_config(trained_run, tmp_path, temperature=temperature)
    output = tmp_path / 'existing.txt'
    output.write_text('earlier output')
    proc = magsd_here('predict', checkpoint, sample_records()[0]['path'], '--output', output)
    assert proc.returncode == 2 and f'temperature {temperature!r} is invalid' in proc.stderr
    assert proc.stderr.count('\n') == 1 and output.read_text() == 'earlier output'


def test_predict_and_evaluate_outputs_are_strict_json(trained_run, tmp_path, magsd_here):
    proc = magsd_here('predict', trained_run, sample_records()[0]['path'], '--format', 'json')
    assert proc.returncode == 0 and _strict_json(proc.stdout)['predictions']
    manifest = tmp_path / 'm.csv'  # a test split of normal images only: the bacterial pneumonia metrics are undefined (NaN)
    manifest.write_text('path,label,split\n' + ''.join(
        f"{r['path']},{r['label']},{'test' if r['label'] == 'normal' and n < 2 else 'train'}\n"
        for n, r in enumerate(sample_records())))
    proc = magsd_here('evaluate', trained_run, manifest, '--bootstrap', '20', '--output', tmp_path / 'eval')
    assert proc.returncode == 0, proc.stderr
    report = _strict_json((tmp_path / 'eval' / 'evaluation.json').read_text())
    assert report['num_images'] == 2 and report['metrics']['auroc']['bacterial pneumonia'] is None
    assert report['metrics']['sensitivity']['bacterial pneumonia'] is None
    proc = magsd_here('info', trained_run, '--json')
    assert _strict_json(proc.stdout)['temperature'] == 1.0


@pytest.mark.parametrize('change, message', [
    (dict(model_args={'backbone': 'test_resnet', 'num_maps': 4, 'num_classes': 2, 'not_an_argument': 1}),
     'unknown model argument(s) not_an_argument'),
    (dict(architecture='resnet18'), "do not fit architecture 'resnet18'"),
    (dict(architecture='magsd_resnet19'), "architecture 'magsd_resnet19', which is not a registered timm model"),
    (dict(model_args={'backbone': 'test_resnet', 'num_maps': 3_000_000, 'num_classes': 2}), 'num_maps 3000000'),
])
def test_an_invalid_config_is_one_line_and_exit_2(trained_run, tmp_path, change, message, magsd_here):
    proc = magsd_here('info', _with_config(trained_run, tmp_path, **change))
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count('\n') == 1, proc.stderr


def test_a_truncated_weights_file_is_one_line_and_exit_2(trained_run, tmp_path, magsd_here):
    checkpoint = _with_config(trained_run, tmp_path)
    data = (checkpoint / 'model.safetensors').read_bytes()
    (checkpoint / 'model.safetensors').write_bytes(data[:len(data) // 3])
    proc = magsd_here('predict', checkpoint, sample_records()[0]['path'])
    assert proc.returncode == 2 and 'truncated or corrupt' in proc.stderr and proc.stderr.count('\n') == 1


def test_evaluate_scores_where_the_model_looks_against_boxes(trained_run, tmp_path, magsd_here):
    from PIL import Image

    images = []
    for i, record in enumerate(sample_records()):
        with Image.open(record['path']) as image:
            width, height = image.size
        images.append(dict(id=i, file_name=Path(record['path']).name, width=width, height=height))
    annotations = [dict(image_id=i['id'], bbox=[0, 0, i['width'] / 2, i['height']]) for i in images]  # left halves
    (tmp_path / 'boxes.json').write_text(json.dumps(dict(images=images, annotations=annotations)))
    proc = magsd_here('evaluate', trained_run, '--split', 'train', '--bootstrap', '20', '--boxes',
                      tmp_path / 'boxes.json', '--overlays', '2', '--output', tmp_path / 'out')
    assert proc.returncode == 0, proc.stderr
    where = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())['localization']
    assert where['map'] == 'evidence' and where['method'].startswith('evidence map: ') and where['num_images'] == 12
    assert where['box_area_share'] == pytest.approx(0.5, abs=0.02) and 0 <= where['mass_in_boxes'] <= 1
    assert 'of the map in the boxes' in proc.stdout
    assert 'share of the heat map inside the boxes' in (tmp_path / 'out' / 'evaluation.md').read_text()
    assert len(list((tmp_path / 'out' / 'overlays').glob('*.png'))) == 2
    maps = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())['attention_maps']  # each map, not the mean
    assert [m['map'] for m in maps['maps']] == [0, 1, 2, 3] and maps['num_images'] == 12  # the run's 4 maps
    assert sum(m['classifier_share'] for m in maps['maps']) == pytest.approx(1)
    assert 'The 4 attention maps one by one' in (tmp_path / 'out' / 'evaluation.md').read_text()

    # a report replaces the earlier one whole: nothing of it stays beside the new one (its overlays), no lock either
    proc = magsd_here('evaluate', trained_run, '--split', 'train', '--bootstrap', '20', '--output', tmp_path / 'out')
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / 'out' / 'overlays').exists() and 'localization' not in json.loads(
        (tmp_path / 'out' / 'evaluation.json').read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]
    report = (tmp_path / 'out' / 'evaluation.json').read_bytes()
    (tmp_path / 'bad.json').write_text('{"images": 1}')  # fails half-way: the earlier report stays as it was
    proc = magsd_here('evaluate', trained_run, '--split', 'train', '--bootstrap', '20', '--boxes', tmp_path / 'bad.json',
                      '--output', tmp_path / 'out')
    assert proc.returncode == 2 and (tmp_path / 'out' / 'evaluation.json').read_bytes() == report
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('keep me')
    proc = magsd_here('evaluate', trained_run, '--split', 'train', '--output', tmp_path / 'mine')
    assert proc.returncode == 2 and 'holds other files than an evaluation report' in proc.stderr
    assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep me'


# ---- what a config feeds into inference is checked, and so is what inference gives ------------------

def _with_data_config(trained_run, tmp_path, **values) -> Path:
    config = json.loads((trained_run / 'best' / 'config.json').read_text())
    return _with_config(trained_run, tmp_path, pretrained_cfg=dict(config['pretrained_cfg'], **values))


@pytest.mark.parametrize('change, message', [
    (dict(temperature=1e-300), 'temperature 1e-300 is invalid'),
    (dict(temperature=1e6), 'temperature 1000000.0 is invalid'),
    (dict(std=[1e-300]), 'std [1e-300] is invalid'),
    (dict(mean=['a']), "mean ['a'] is invalid"),
    (dict(crop_pct=0), 'crop_pct 0 is invalid'),
])
def test_a_config_that_would_make_probabilities_nonsense_is_refused_before_any_prediction(
        trained_run, tmp_path, change, message, magsd_here):
    checkpoint = (_with_config(trained_run, tmp_path, **change) if 'temperature' in change
                  else _with_data_config(trained_run, tmp_path, **change))
    for command in (['predict', checkpoint, sample_records()[0]['path'], '--output', tmp_path / 'predict'],
                    ['evaluate', checkpoint, '--output', tmp_path / 'evaluate'], ['info', checkpoint, '--json']):
        proc = magsd_here(*command)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count('\n') == 1, proc.stderr
        assert proc.stdout == '' and not (tmp_path / command[0]).exists()


def test_nan_probabilities_are_an_error_never_a_prediction(trained_run, tmp_path, magsd_here, monkeypatch):
    from magsd_timm.models.magsd import MANet

    real = MANet.forward_with_attention

    def broken(self, x):
        logits, attention = real(self, x)
        return torch.full_like(logits, float('nan')), attention
    monkeypatch.setattr(MANet, 'forward_with_attention', broken)
    proc = magsd_here('predict', trained_run, sample_records()[0]['path'], '--format', 'json')
    assert proc.returncode == 2 and proc.stdout == '' and 'NaN or infinite probabilities' in proc.stderr
    proc = magsd_here('evaluate', trained_run, '--output', tmp_path / 'eval')
    assert proc.returncode == 2 and 'NaN or infinite probabilities' in proc.stderr and not (tmp_path / 'eval').exists()


def test_info_loads_and_checks_the_weights(trained_run, tmp_path, magsd_here):
    from safetensors.torch import load_file, save_file

    checkpoint = _with_config(trained_run, tmp_path)
    weights = load_file(checkpoint / 'model.safetensors')
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first] = torch.full_like(weights[first], float('nan'))
    save_file(weights, checkpoint / 'model.safetensors')
    proc = magsd_here('info', checkpoint)
    assert proc.returncode == 2 and 'NaN or infinite values' in proc.stderr and proc.stderr.count('\n') == 1


def test_a_config_may_pass_only_known_safe_arguments_to_the_backbone(trained_run, tmp_path, magsd_here):
    args = json.loads((trained_run / 'best' / 'config.json').read_text())['model_args']
    secret = tmp_path / 'secret.pth'
    torch.save({'x': torch.zeros(1)}, secret)
    for backbone_kwargs, message in (
            ({'pretrained': True, 'pretrained_cfg_overlay': {'file': str(secret)}},
             'backbone_kwargs pretrained, pretrained_cfg_overlay are not allowed'),
            ({'pretrained_cfg_overlay': {'url': 'http://127.0.0.1:9/w.pth'}}, 'pretrained_cfg_overlay is not allowed'),
            ({'img_size': 10 ** 6}, 'backbone_kwargs img_size 1000000 is invalid')):
        checkpoint = _with_config(trained_run, tmp_path / str(len(message)),
                                  model_args=dict(args, backbone_kwargs=backbone_kwargs))
        proc = magsd_here('predict', checkpoint, sample_records()[0]['path'])
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count('\n') == 1, proc.stderr


# ---- evaluate: side effects last, unreadable images said, not fatal -----------------------------------

def test_a_calibration_whose_evaluation_fails_leaves_the_checkpoint_unchanged(trained_run, tmp_path, magsd_here):
    checkpoint = tmp_path / 'checkpoint'
    shutil.copytree(trained_run / 'best', checkpoint)
    (checkpoint / 'config.json').chmod(0o644)
    config = (checkpoint / 'config.json').read_bytes()
    manifest = _calibration_manifest(tmp_path / 'data', checkpoint, magsd_here)
    (tmp_path / 'boxes.json').write_text('{"images": 1}')  # fails after the calibration
    proc = magsd_here('evaluate', checkpoint, manifest, '--split', 'test', '--calibrate', '--bootstrap', '20',
                      '--boxes', tmp_path / 'boxes.json', '--output', tmp_path / 'out')
    assert proc.returncode == 2 and 'is not a COCO box file' in proc.stderr
    assert (checkpoint / 'config.json').read_bytes() == config
    proc = magsd_here('evaluate', checkpoint, manifest, '--split', 'test', '--calibrate', '--bootstrap', '20',
                      '--output', tmp_path / 'out')
    assert proc.returncode == 0, proc.stderr
    assert (checkpoint / 'config.json').stat().st_mode & 0o777 == 0o644  # the file's mode is kept, as any tool does


def test_evaluate_leaves_out_unreadable_images_and_says_so(trained_run, tmp_path, magsd_here):
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG not really')
    manifest = tmp_path / 'm.csv'
    manifest.write_text('path,label,split\n' + ''.join(f"{r['path']},{r['label']},test\n" for r in sample_records())
                        + 'broken.png,normal,test\n')
    proc = magsd_here('evaluate', trained_run, manifest, '--bootstrap', '20', '--output', tmp_path / 'out')
    assert proc.returncode == 1 and 'broken.png' in proc.stderr and '1 unreadable image(s) left out' in proc.stderr
    report = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())
    assert [Path(u['file']).name for u in report['unreadable']] == ['broken.png'] and report['num_images'] == 16
    assert 'could not be read and were left out' in (tmp_path / 'out' / 'evaluation.md').read_text()


def test_a_missing_local_folder_is_named_as_one(tmp_path, magsd_here, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'runs').mkdir()
    for ref in ('runs/nothere', './nothere', str(tmp_path / 'a' / 'b')):
        proc = magsd_here('predict', ref, 'x.png')
        assert proc.returncode == 2 and 'no such checkpoint folder' in proc.stderr and 'Hub repo id' not in proc.stderr


def test_box_files_with_invalid_boxes_are_scored_without_them_and_say_how_many(trained_run, tmp_path, magsd_here):
    from PIL import Image

    images, annotations = [], []
    for i, record in enumerate(sample_records()):
        with Image.open(record['path']) as image:
            width, height = image.size
        images.append(dict(id=i, file_name=Path(record['path']).name, width=width, height=height))
        annotations.append(dict(id=i, image_id=i, bbox=[0, 0, width / 2, height]))
    annotations += [dict(id=100, image_id=0, bbox=[0, 0, 0, 10]), dict(id=101, image_id=1, bbox=[5, 5, -3, 10]),
                    dict(id=102, image_id=2, bbox=[10 ** 6, 0, 10, 10]), dict(id=103, image_id=3, bbox=['a', 0, 1, 1])]
    (tmp_path / 'boxes.json').write_text(json.dumps(dict(images=images, annotations=annotations)).replace(
        '"bbox": [0, 0, 0, 10]', '"bbox": [0, 0, Infinity, 10]'))
    proc = magsd_here('evaluate', trained_run, '--split', 'train', '--bootstrap', '20', '--boxes',
                      tmp_path / 'boxes.json', '--overlays', '0', '--output', tmp_path / 'out')
    assert proc.returncode == 0, proc.stderr
    where = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())['localization']
    assert where['invalid_boxes'] == 4 and where['num_images'] == 12
    assert where['box_area_share'] == pytest.approx(0.5, abs=0.02)  # the invalid boxes changed no mask
    assert '4 invalid box(es) left out' in proc.stdout and proc.stderr.count('left out of') == 4


def test_an_export_that_does_not_reproduce_the_model_has_its_own_exit_code(trained_run, tmp_path, magsd_here,
                                                                            monkeypatch):
    from magsd_timm.cli.console import EXIT_DIVERGED, EXIT_NOT_REPRODUCED
    from magsd_timm.models import export

    monkeypatch.setattr(export, 'export_model', lambda model, output, *a, **k: export.ExportCheck(
        Path(output), 'torch.jit.script', 3, max_abs_diff=1.0, max_abs_logit=2.0, tolerance=1e-3))
    proc = magsd_here('export', trained_run, '--format', 'torchscript', '--output', tmp_path / 'm.pt')
    assert proc.returncode == EXIT_NOT_REPRODUCED == 4 != EXIT_DIVERGED  # not the trainer's "diverged"
    assert 'does not reproduce the model' in proc.stderr and 'DIFFERENT logits' in proc.stdout
