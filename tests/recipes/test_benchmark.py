"""recipes/benchmark.py runs end to end and writes the tables docs/benchmarks.md shows (timings are not judged)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import cxr, step, throughput
from support.recipes import RECIPES, load_recipe

SMALL = ['--model', 'magsd_custom', '--model-kwargs', '{"backbone": "test_resnet"}', '--baseline', 'test_resnet',
         '--batch-size', '2', '--img-size', '64',
         '--min-run-time', '0.2', '--min-rounds', '1']


@pytest.fixture
def bench_here(capsys, tmp_path):
    """The recipe's main in this process (no interpreter start-up), for suites that start no worker processes."""
    module = load_recipe('benchmark')

    def run(*args: str, code: int = 0) -> str:
        assert module.main([*SMALL, '--output-dir', str(tmp_path), *args]) == code
        out, err = capsys.readouterr()
        return out if code == 0 else err
    run.module = module
    return run


def _cells(row: str) -> list:
    return [c.strip() for c in row.strip().strip('|').split('|')]


def _printed_quotient(printed: str, numerator: str, denominator: str) -> bool:
    """Whether `printed` can be numerator / denominator when all three were rounded as printed.

    Timings are not judged, but the tables must compute what they claim: this holds at any speed,
    on a fast machine (few ms) as on a slow, loaded one (a fraction of an image per second).
    """
    def half(text: str) -> float:
        text = text.rstrip('x')
        return 0.5 * 10 ** -(len(text.split('.')[1]) if '.' in text else 0)

    value, a, b = (float(t.rstrip('x')) for t in (printed, numerator, denominator))
    low = (a - half(numerator)) / (b + half(denominator))
    high = (a + half(numerator)) / max(b - half(denominator), 1e-12)
    return low - half(printed) <= value <= high + half(printed)


def test_model_suite_writes_a_ratio_table_with_memory(tmp_path, bench_here):
    stdout = bench_here('--suite', 'model')
    table = (tmp_path / 'model.md').read_text()
    assert table in stdout and not (tmp_path / 'step.md').exists()
    rows = [line for line in table.splitlines() if re.match(r'\| (inference|forward\+backward) \|', line)]
    assert len(rows) == 2
    for row in rows:
        cells = _cells(row)
        assert _printed_quotient(cells[3], cells[2], cells[1]), cells
        assert re.fullmatch(r'\d+ / \d+', cells[5])


def test_step_suite_compares_each_magsd_step_with_the_plain_reference(tmp_path, bench_here):
    bench_here('--suite', 'step')
    rows = [_cells(line) for line in (tmp_path / 'step.md').read_text().splitlines()[4:]]
    names = [r[0] for r in rows]
    assert names[0] == 'plain, eager, contiguous fp32' and rows[0][2] == '1.000x'
    assert {'MAG-SD, eager, contiguous', 'MAG-SD, channels_last', 'MAG-SD, channels_last, fused views',
            'MAG-SD, channels_last, pass-by-pass backward'} <= set(names)
    for cells in rows[:-1]:
        assert _printed_quotient(cells[2], cells[1], rows[0][1]), cells
    assert sum('<= 2.6x' in cells[3] for cells in rows) == 1  # the fastest MAG-SD step is judged
    assert names[-1] == 'augmentations + loss alone' and 'of the fastest MAG-SD step' in rows[-1][2]


def test_the_plain_reference_step_runs_in_the_precision_of_the_magsd_steps(bench_here, monkeypatch):
    args = bench_here.module._parse_args([*SMALL, '--dtype', 'bfloat16'])
    seen = []
    cross_entropy = step.F.cross_entropy
    monkeypatch.setattr(step.F, 'cross_entropy', lambda logits, y: seen.append(logits.dtype) or cross_entropy(logits, y))
    step._plain_train_step(args, False)()
    assert seen == [torch.bfloat16]  # a bf16 MAG-SD step over an fp32 plain one would credit bf16 to MAG-SD


def test_bad_arguments_are_refused_by_name(bench_here, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_here('--batch-size', '0')
    assert exit_.value.code == 2 and '--batch-size' in capsys.readouterr().err


def test_data_suite_compares_a_worker_with_what_training_consumes(tmp_path, bench_here):
    bench_here('--suite', 'data')
    rows = [_cells(line) for line in (tmp_path / 'data.md').read_text().splitlines()[4:]]
    assert [r[0] for r in rows[:2]] == ['8-bit JPEG', '16-bit PNG']
    consumed = rows[2][2].split()[0]
    for cells in rows[:2]:
        assert _printed_quotient(cells[2], '1000', cells[1]), cells  # images/s from ms per image
        assert _printed_quotient(cells[3], cells[2], consumed), cells  # against what one training step consumes
        assert '>= 4x' in cells[4]


@pytest.mark.subprocess
def test_cli_suite_times_the_help_of_each_command_against_starting_python(tmp_path, bench_here):
    stdout = bench_here('--suite', 'cli')
    rows = {line.split(' | ')[0].strip('| `'): line for line in stdout.splitlines() if line.startswith('| `')}
    assert set(rows) == {'python -c pass', 'magsd --help', 'magsd-hub --help', 'magsd predict --help'}
    assert '| 1.0x |' in rows['python -c pass'] and '< 1 s (' in rows['magsd --help']
    assert (tmp_path / 'cli.md').read_text().strip() in stdout


def test_trainer_suite_compares_the_trainer_loop_with_a_bare_loop(tmp_path, bench_here):
    bench_here('--suite', 'trainer')
    rows = [_cells(line) for line in (tmp_path / 'trainer.md').read_text().splitlines()[4:]]
    assert [r[0] for r in rows] == ['bare objective loop', 'magsd_timm trainer loop']
    assert rows[0][2] == '1.000x' and '>= 0.95x' in rows[1][3]
    assert _printed_quotient(rows[1][2], rows[1][1], rows[0][1]), rows


def test_throughput_suite_gives_the_trainers_images_per_second_and_its_data_share(tmp_path, bench_here, monkeypatch):
    monkeypatch.setattr(throughput, 'THROUGHPUT_TARGETS', {('magsd_custom', 64, 1): 1e9})  # out of reach
    bench_here('--suite', 'throughput', '--throughput-models', 'magsd_custom', '--throughput-sizes', '64',
               '--throughput-freeze', '0', '1')
    rows = [_cells(line) for line in (tmp_path / 'throughput.md').read_text().splitlines()[6:]]
    assert [r[:3] for r in rows] == [['`magsd_custom`', '64', '0'], ['`magsd_custom`', '64', '1'],
                                     ['data path alone (preprocessing kept)', '64', ''],
                                     ['data path alone (every film decoded and resized again)', '64', '']]
    assert [r[5] for r in rows[:2]] == ['', '>= 1e+09 (MISSES)']  # judged on the setting it is set for
    for row in rows[:2]:  # the data share is the data path's time over the step's: kept images/s over the step's
        share = float(row[4].rstrip('%')) / 100
        assert abs(share - float(row[3]) / float(rows[2][3])) <= 0.006 + 0.1 / float(rows[2][3]), row


def test_attention_suite_scores_every_map_and_grad_cam_over_seeds(tmp_path, bench_here):
    bench_here('--suite', 'attention', '--attention-images', '48', '--attention-epochs', '1', '--attention-seeds', '0', '1',
               '--attention-test-images', '30')
    table = (tmp_path / 'attention.md').read_text()
    rows = [_cells(line) for line in table.splitlines() if line.startswith('| MA-Net') or line.startswith('| Grad-CAM')]
    assert [r[0] for r in rows] == ['MA-Net (MAG-SD), `evidence`', 'MA-Net (MAG-SD), `mean`', 'MA-Net (MAG-SD), `top`',
                                    'MA-Net (MAG-SD), `grad-cam`', 'Grad-CAM, plain backbone (cross-entropy)']
    for cells in rows:  # mean ± sd over the two seeds
        assert all(re.fullmatch(r'\d\.\d{3} ± \d\.\d{3}', cell) and float(cell[:5]) <= 1 for cell in cells[1:3])
    assert '>= 0.9 and >= either Grad-CAM' in rows[0][3] and not any(r[3] for r in rows[1:])
    assert '48 training images x 1 epochs, 30 test images' in table and 'seeds 0, 1 (mean ± sd)' in table


def test_maps_suite_scores_every_map_of_each_model_against_boxes_with_intervals_and_times(tmp_path, bench_here,
                                                                                          trained_run):
    import json

    from magsd_timm.data import sample_records
    from magsd_timm.data.build import build_dataset

    records = sample_records()
    build_dataset(records, tmp_path / 'data', seed=2, fractions=(0.5, 0.25, 0.25))
    names = [r['path'].rsplit('/', 1)[-1] for r in records]
    (tmp_path / 'boxes.json').write_text(json.dumps(dict(
        images=[dict(id=i, file_name=n, width=100, height=100) for i, n in enumerate(names)],
        annotations=[dict(image_id=i, bbox=[0, 0, 50, 100]) for i in range(len(names))])))
    assert 'needs --data PREPARED' in bench_here('--suite', 'maps', code=2)
    stdout = bench_here('--suite', 'maps', '--data', str(tmp_path / 'data'), '--boxes', str(tmp_path / 'boxes.json'),
                        '--maps-models', str(trained_run), str(trained_run), '--bootstrap', '20',
                        '--min-run-time', '0.1', '--min-rounds', '1')
    table = (tmp_path / 'maps.md').read_text()
    assert table in stdout and 'test split of data with boxes in `boxes.json` (they cover 0.500' in table
    rows = {_cells(line)[0]: _cells(line) for line in table.splitlines()
            if line.startswith('| `') and str(trained_run) not in line}
    assert list(rows) == ['`evidence` (default)', '`mean`', '`top`', '`grad-cam`']
    for cells in rows.values():  # the mean over the two models, then each model's figure with its interval
        for cell in cells[1:3]:
            assert re.fullmatch(r'\*\*(\d\.\d{3})\*\* \((\1 \[\d\.\d{3}, \d\.\d{3}\]); \2\)', cell), cell
        assert re.fullmatch(r'\d+\.\d\dx', cells[4])
    assert 'attention maps of at least 7 x 7 (here 2, 2): MISSES' in table  # 64 px, stride 32
    regions = [_cells(line) for line in table.splitlines() if line.startswith(f'| `{trained_run}')]
    assert len(regions) == 2 and regions[0] == regions[1]  # one model twice, the same draws
    assert all(0 <= float(share) <= 1 for share in regions[0][1:4]) and '| model | mixup | dimming | patching |' in table

    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    save_for_hf(timm.create_model('test_resnet', in_chans=1, num_classes=2), tmp_path / 'plain',
                model_config={'label_names': ['bacterial pneumonia', 'normal']})
    data = ['--suite', 'maps', '--data', str(tmp_path / 'data'), '--boxes', str(tmp_path / 'boxes.json'),
            '--bootstrap', '20', '--min-run-time', '0.1', '--min-rounds', '1']
    bench_here(*data, '--maps-models', str(tmp_path / 'plain'))
    table = (tmp_path / 'maps.md').read_text()
    assert [_cells(line)[0] for line in table.splitlines() if line.startswith('| `')] == ['`grad-cam`']
    assert 'Grad-CAM of the predicted class is their only map' in table and 'augmentations' not in table
    assert '(MA-Nets) or models without, not both' in bench_here(*data, '--maps-models', str(trained_run),
                                                               str(tmp_path / 'plain'), code=2)


def test_near_copy_suite_finds_made_copies_and_lists_the_pairs_among_the_files(tmp_path, bench_here):
    import json
    import shutil

    from magsd_timm.data.sample import sample_records

    films = tmp_path / 'films'
    films.mkdir()
    for n, record in enumerate(sample_records()[:5]):
        shutil.copy(record['path'], films / f'{n}.jpeg')
    shutil.copy(sample_records()[0]['path'], films / 'again.jpeg')  # the collection's own copy
    stdout = bench_here('--suite', 'near-copies', '--near-copy-images', str(films), '--near-copy-films', '2',
                        '--near-copy-total', '24')
    rows = [_cells(line) for line in stdout.splitlines() if line.startswith('| ') and '/' in line]
    assert len(rows) == 9 and all(r[1] == '2 / 2 = 1.000' for r in rows)  # every kind of copy, of both films
    assert '24 images searched: 6 files of 6' in stdout and 'Pairs found among the files themselves: 1 ' in stdout
    kept = float(re.search(r'Memory: ([\d.]+) KB kept per image', stdout)[1])
    assert 18 < kept < 19 and 'MiB resident' in stdout  # a 24 x 24 descriptor and a 128 x 128 equalised image
    found = json.loads((tmp_path / 'near-copies-found.json').read_text())
    assert len(found) == 1 and {Path(found[0]['a']).name, Path(found[0]['b']).name} == {'0.jpeg', 'again.jpeg'}


def test_cxr_suite_trains_both_methods_alike_leaving_a_source_out_and_reports_where_they_look_and_the_shortcuts(
        tmp_path, bench_here, capsys):
    import json

    from magsd_timm.data import sample_records
    from magsd_timm.data.build import build_dataset
    from magsd_timm.hub import load

    covid = {'bacterial pneumonia': 'COVID-19', 'normal': 'normal'}
    records = [dict(r, label=covid[r['label']], source='left' if i % 2 else 'right')
               for i, r in enumerate(sample_records())]
    build_dataset(records, tmp_path / 'data', seed=2, fractions=(0.5, 0.25, 0.25))  # both sources in every split
    names = [r['path'].rsplit('/', 1)[-1] for r in records]
    (tmp_path / 'boxes.json').write_text(json.dumps(dict(
        images=[dict(id=i, file_name=n, width=100, height=100) for i, n in enumerate(names)],
        annotations=[dict(image_id=i, bbox=[0, 0, 50, 100]) for i in range(len(names))])))
    suite = ['--suite', 'cxr', '--data', str(tmp_path / 'data'), '--holdout-source', 'left', '--seeds', '0',
             '--cxr-img-size', '64', '--cxr-batch-size', '4', '--cxr-model', 'magsd_custom', '--bootstrap', '20',
             '--train-args', '--model-kwargs \'{"backbone": "test_resnet"}\'']
    stdout = bench_here(*suite, '--cxr-epochs', '1', '--boxes', str(tmp_path / 'boxes.json'))
    table = (tmp_path / 'cxr.md').read_text()
    assert table in stdout
    rows = {_cells(line)[0]: _cells(line) for line in table.splitlines() if line.startswith('| ')}
    assert rows['metric'] == ['metric', 'MAG-SD', 'baseline']  # on the test split without the left-out source
    assert re.fullmatch(r'\d\.\d{3} ± 0\.000 \[\d\.\d{3}, \d\.\d{3}\]', rows['macro_f1'][1])
    assert {'sensitivity: COVID-19', 'specificity: normal', 'auroc: normal'} <= set(rows) and 'target >= +0.02' in table
    assert 'without `left`, which was left out of training and validation' in table
    assert 'Left out: `left`, 8 images never trained or validated on' in table  # all of its splits
    assert re.fullmatch(r'\d\.\d{3} ± 0\.000 \[\d\.\d{3}, \d\.\d{3}\]', rows['COVID-19 vs normal AUROC (8 images)'][1])
    assert {'COVID-19 sensitivity', 'COVID-19 specificity'} <= set(rows) and 'target >= 0.80' in table
    assert {'left', 'right'} <= set(rows)  # per source, the left-out one too
    assert {'in distribution: lungs hidden', 'held out: border hidden'} <= set(rows)  # the shortcut measures
    assert rows['MAG-SD: evidence'][0] and rows['baseline: grad-cam'][0]
    assert 'target >= 0.7 with maps of at least 7 x 7, here about' in table
    assert str(tmp_path) not in table and 'boxes in `boxes.json`' in table  # no path of this machine
    run = tmp_path / 'cxr' / 'baseline-without-left-seed0'
    config = json.loads((run / 'final' / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet'  # the MA-Net's own backbone, trained alike
    assert yaml.safe_load((run / 'args.yaml').read_text())['exclude_sources'] == ['left']
    assert 'trained alike (1 epochs, 64 px, batch 4' in table  # what the runs' records say

    plain = bench_here.module._parse_args([*SMALL, '--output-dir', str(tmp_path), *suite[:4], *suite[6:]])
    assert list(cxr._scored_sets(load(f'local-dir:{run / "best"}'), None, plain)) == ['test']  # no source left out
    # a run is reused only with exactly the settings asked for; anything else is refused, nothing trained
    stamps = sorted(p.stat().st_mtime_ns for p in (tmp_path / 'cxr').rglob('*.safetensors'))
    err = bench_here(*suite, '--cxr-epochs', '15', code=2)
    assert 'holds a run with other settings (epochs: 1 then, 15 now)' in err and err.count('\n') == 1
    assert (tmp_path / 'cxr.md').read_text() == table
    for method in ('magsd', 'baseline'):  # the same settings: the finished runs are reused, nothing is trained
        args = bench_here.module._parse_args([*SMALL, '--output-dir', str(tmp_path), *suite, '--cxr-epochs', '1'])
        assert cxr._train_run(args, method, 0) == tmp_path / 'cxr' / f'{method}-without-left-seed0'
    assert 'cxr: ' not in capsys.readouterr().out  # no training command was printed, so none was run
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / 'cxr').rglob('*.safetensors')) == stamps
    # the data folder prepared again with another seed: a finished run trained on the old splits is not reused
    build_dataset(records, tmp_path / 'data', seed=3, fractions=(0.5, 0.25, 0.25), overwrite=True)
    capsys.readouterr()
    err = bench_here(*suite, '--cxr-epochs', '1', code=2)
    assert 'holds a run with other settings (data_sha256: ' in err and err.count('\n') == 1
    (tmp_path / 'cxr' / 'magsd-without-left-seed0' / 'args.yaml').write_text('[unclosed')
    err = bench_here(*suite, '--cxr-epochs', '1', code=2)
    assert "args.yaml: not a readable record of a run's arguments" in err and err.count('\n') == 1


@pytest.mark.subprocess
def test_a_training_child_dies_with_a_killed_benchmark(tmp_path):
    import os
    import signal
    import time

    parent = subprocess.Popen([sys.executable, '-c', f"""
import subprocess, sys
sys.path.insert(0, {str(RECIPES)!r})
from benchmarks.common import die_with_parent
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=die_with_parent)
print(child.pid, flush=True)
child.wait()
"""], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if open(f'/proc/{child}/stat').read().split()[2] == 'Z':  # dead, waiting to be reaped
                break
        except FileNotFoundError:  # dead and reaped
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail('the child outlived its killed parent')


def test_cxr_suite_scores_a_covid_source_never_seen_at_an_operating_point_chosen_on_validation(tmp_path, bench_here):
    import json

    from magsd_timm.data import sample_records
    from magsd_timm.data.build import build_dataset

    films = sample_records()
    covid = [r for r in films if r['label'] == 'bacterial pneumonia']
    normal = [r for r in films if r['label'] == 'normal']
    placed = ([('COVID-19', 'seen', s) for s in ('train', 'train', 'validation', 'test')]
              + [('COVID-19', 'unseen', s) for s in ('train', 'train', 'validation', 'test')])
    placed_normal = ([('normal', src, s) for src in ('seen', 'unseen') for s in ('train', 'validation', 'test')]
                     + [('normal', 'far', 'train'), ('normal', 'far', 'test')])
    records = [dict(r, label=label, source=source, split=split, patient_id=f'p{i}')
               for i, (r, (label, source, split)) in enumerate(zip(covid + normal, placed + placed_normal))]
    build_dataset(records, tmp_path / 'data', given_splits=True)
    suite = ['--suite', 'cxr', '--data', str(tmp_path / 'data'), '--unseen-covid-source', 'unseen', '--probe',
             'far:normal', '--seeds', '0', '--cxr-img-size', '64', '--cxr-batch-size', '4', '--cxr-model',
             'magsd_custom', '--bootstrap', '20', '--cxr-epochs', '1',
             '--train-args', '--model-kwargs \'{"backbone": "test_resnet"}\' --augment mild+hospital --balance '
                             'class-source --epoch-samples 6 --source-adversary 0.5',
             '--magsd-args', '--centre-loss 0.5']  # an attention option: MAG-SD's runs alone
    stdout = bench_here(*suite)
    table = (tmp_path / 'cxr-unseen-unseen.md').read_text()
    assert table in stdout
    rows = {_cells(line)[0]: _cells(line) for line in table.splitlines() if line.startswith('| ')}
    summary = json.loads((tmp_path / 'cxr-unseen-unseen.json').read_text())  # what a model card is built from
    assert summary['source'] == 'unseen' and summary['normal_films'] == {'seen': 1, 'unseen': 1}
    magsd_auroc = summary['methods']['MAG-SD']['auroc']
    assert rows['COVID-19 vs normal AUROC (6 films)'][1].startswith(f"{magsd_auroc['per_seed'][0]:.3f} ± 0.000 [")
    assert summary['methods']['baseline']['probe_specificity']['films'] == 2
    assert [r['method'] for r in summary['runs']] == ['magsd', 'baseline'] and 'data_sha256' in summary['runs'][0]
    assert set(summary['in_distribution']['MAG-SD']) == {'macro_f1', 'macro_f1_interval'}
    # both methods trained without the unseen source's COVID-19 films and without the probe
    for method in ('magsd', 'baseline'):
        recorded = yaml.safe_load((tmp_path / 'cxr' / f'{method}-unseen-unseen-seed0' / 'args.yaml').read_text())
        assert recorded['exclude_sources'] == ['unseen:COVID-19', 'far:normal']
        assert (recorded['augment'], recorded['epoch_samples'], recorded['source_adversary']) == ('mild+hospital', 6, 0.5)
        assert recorded['centre_loss'] == (0.5 if method == 'magsd' else 0.)
    assert "`unseen`'s 4 COVID-19 films (every split) were never trained or validated on" in table
    assert 'normal films of the test split (seen 1, unseen 1)' in table  # the probe is scored on its own
    assert re.fullmatch(r'\d\.\d{3} ± 0\.000 \[\d\.\d{3}, \d\.\d{3}\]', rows['COVID-19 vs normal AUROC (6 films)'][1])
    assert re.fullmatch(r'\d\.\d{3} ± 0\.000', rows['operating point: P(COVID-19) at least'][2])
    for row in ('COVID-19 sensitivity, unseen films (4)', 'specificity, seen normal films of the test split (1)',
                'specificity, probe: far:normal (2 films, held out entirely)'):
        assert re.fullmatch(r'[01]\.\d{3} ± 0\.000 \[[01]\.\d{3}, [01]\.\d{3}\]', rows[row][1]), row
    assert 'AUROC on the unseen COVID-19 source' in table and 'target >= 0.85' in table
    assert 'MAG-SD minus baseline: ' in table
    assert 'augment mild+hospital, source adversary 0.5' in table  # what the runs' records say
    assert 'films cut to the lungs by no detector; MAG-SD alone: centre_loss 0.5, as the runs' in table
    assert 'without `unseen:COVID-19` `far:normal`, which was left out of training and validation' in table
    # the operating point is P(COVID-19) at the validation split's 10th percentile of COVID-19 films
    result = dict(class_names=['COVID-19', 'normal'], labels=torch.tensor([0] * 10 + [1]),
                  probs=[torch.tensor([[v, 1 - v] for v in [.1, .2, .3, .4, .5, .6, .7, .8, .9, 1., .05]])])
    assert cxr._operating_point(result) == [pytest.approx(.1)]


def test_predict_suite_gives_films_per_second_of_the_command_once_its_model_is_loaded(tmp_path, bench_here, trained_run):
    stdout = bench_here('--suite', 'predict', '--predict-model', str(trained_run))
    table = (tmp_path / 'predict.md').read_text()
    assert table in stdout and f'`magsd predict {trained_run}` on 16 films of the bundled sample' in table
    rows = [_cells(line) for line in table.splitlines() if line.startswith('| ') and line[2].isdigit()]
    assert [r[0] for r in rows] == ['1', '16'] and float(rows[1][2]) > 0 and '>= 30' in rows[1][3]
    assert 'needs --predict-model' in bench_here('--suite', 'predict', code=2)
