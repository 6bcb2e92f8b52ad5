"""A run published as a tag: a card that leads with its recipe's unseen-source results and its operating point."""
import ast
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from support.recipes import load_recipe


@pytest.fixture(scope='module')
def covid_run(tmp_path_factory):
    """A tiny MA-Net trained on the sample relabelled COVID-19 / normal from two sources, with its test report."""
    from magsd_timm.cli.magsd import main as magsd
    from magsd_timm.data import sample_records
    from magsd_timm.data.build import build_dataset

    root = tmp_path_factory.mktemp('publish')
    relabel = {'bacterial pneumonia': 'COVID-19', 'normal': 'normal'}
    records = [dict(r, label=relabel[r['label']], source='ab'[i % 2]) for i, r in enumerate(sample_records())]
    build_dataset(records, root / 'data', seed=2, fractions=(0.5, 0.25, 0.25))
    run = root / 'run'
    assert load_recipe('train').main(['--data', str(root / 'data'), '--output', str(run), '--model', 'magsd_custom',
                                      '--model-kwargs', '{"backbone": "test_resnet", "num_maps": 4}', '--epochs', '1',
                                      '--img-size', '64', '--batch-size', '4', '--cpu', '--augment', 'mild+hospital']) == 0
    assert magsd(['evaluate', str(run), str(root / 'data'), '--split', 'test', '--bootstrap', '20',
                  '--output', str(run / 'test')]) == 0
    return run


def _summary(run: Path, tmp_path: Path, **changed) -> Path:
    """A cxr suite summary of one unseen source whose MAG-SD run is the published run's recipe (with changes)."""
    record = dict(yaml.safe_load((run / 'args.yaml').read_text()), seed=1, exclude_sources=['b:COVID-19'], **changed)
    rate = dict(per_seed=[0.8], interval=[0.7, 0.9], films=10)
    summary = dict(source='b', unseen_films=10, probe=None, normal_films={'a': 4}, operating_sensitivity=0.9,
                   methods={'MAG-SD': dict(auroc=dict(per_seed=[0.91], interval=[0.85, 0.95], films=14),
                                           operating_point=[0.4], sensitivity=rate, specificity={'a': rate},
                                           probe_specificity=None)},
                   runs=[record, dict(record, method='baseline')],
                   command=f'python recipes/benchmark.py --suite cxr --data {run.parent / "data"} --unseen-covid-source b')
    path = tmp_path / f'cxr-unseen-b-{len(changed)}.json'
    path.write_text(json.dumps(summary))
    return path


def _hub(*args) -> subprocess.CompletedProcess:
    from magsd_timm.cli.magsd_hub import main

    return main([str(a) for a in args])


def test_a_published_tag_is_staged_with_its_results_operating_point_test_report_and_entry(covid_run, tmp_path, capfd):
    staged = tmp_path / 'hub' / 'magsd-published'
    code = _hub('push-model', covid_run, 'tester/magsd-published', '--dry-run', staged, '--tag',
                'magsd_custom.cxr_test', '--unseen-results', _summary(covid_run, tmp_path), '--license', 'other')
    out = capfd.readouterr().out
    assert code == 0, out
    assert sorted(p.name for p in staged.iterdir()) == ['README.md', 'config.json', 'model.safetensors',
                                                        'test_report.json', 'test_report.md']
    card = ModelCard.load(staged / 'README.md')
    assert card.data.license == 'other' and card.data.library_name == 'timm'
    body = card.text
    assert body.index('## Results on COVID-19 sources it never saw') < body.index('## Model details')
    assert '| b | 10 | 1 | 0.910 [0.850, 0.950] | 0.800 [0.700, 0.900] | 0.800 [0.700, 0.900] | n/a |' in body
    assert "timm.create_model('magsd_custom.cxr_test', pretrained=True)" in body
    assert "This model's operating point:** call a film COVID-19 when P(COVID-19) >=" in body
    assert '| COVID-19, a |' in body and '| normal, b |' in body  # read on its test split, per source
    assert "b's COVID-19 films, unseen: sensitivity 0.80 at the operating point chosen for 0.90" in body
    assert 'mild+hospital' in body  # the augmentation, as the run recorded it
    entry = ast.literal_eval(out.split("'magsd_custom.cxr_test': ", 1)[1].strip().rstrip(','))
    assert entry['folder'] == 'magsd-published' and entry['hf_hub_id'] == 'tester/magsd-published'
    assert entry['label_names'] == ['COVID-19', 'normal'] and len(entry['sha256']) == 64
    assert entry['license'] == 'other'  # the weights keep their data's licence, not the code's
    assert "magsd_timm.load('magsd_custom.cxr_test')" in body and 'model(image).softmax(-1)' in body
    # the card goes to the Hub: its commands and reports name the data, not the folders of the machine that made it
    assert 'benchmark.py --suite cxr --data data --unseen-covid-source b' in body and str(covid_run.parent) not in body


def test_a_probe_called_mostly_covid_is_a_known_failure_mode_on_the_card(covid_run, tmp_path, capfd):
    path = _summary(covid_run, tmp_path)
    summary = json.loads(path.read_text())
    summary['methods']['MAG-SD']['probe_specificity'] = dict(per_seed=[0.25], interval=[0.0, 0.6], films=4)
    path.write_text(json.dumps(summary))
    staged = tmp_path / 'staged'
    assert _hub('push-model', covid_run, 'tester/x', '--dry-run', staged, '--tag', 'magsd_custom.cxr_test',
                '--unseen-results', path) == 0, capfd.readouterr()
    failures = ModelCard.load(staged / 'README.md').text.split('Known failure modes', 1)[1].split('Not measured', 1)[0]
    assert "- the probe's normal films from other hospitals (4), with b's COVID-19 unseen: specificity 0.25" in failures


def test_results_of_another_recipe_or_no_results_are_refused(covid_run, tmp_path, capfd):
    other = _summary(covid_run, tmp_path, lr=0.1)
    code = _hub('push-model', covid_run, 'tester/x', '--dry-run', tmp_path / 'x', '--tag', 'magsd_custom.cxr_test',
                '--unseen-results', other)
    err = capfd.readouterr().err
    assert code == 2 and 'its runs used another recipe than the run published (lr: 0.1 then, 0.0003 now' in err
    code = _hub('push-model', covid_run, 'tester/x', '--dry-run', tmp_path / 'x', '--tag', 'magsd_custom.cxr_test')
    assert code == 2 and 'give --unseen-results' in capfd.readouterr().err
    code = _hub('push-model', covid_run, 'tester/x', '--dry-run', tmp_path / 'x', '--tag', 'magsd_resnet18.cxr_test',
                '--unseen-results', _summary(covid_run, tmp_path))
    assert code == 2 and "a published tag is the model's architecture and a tag, magsd_custom.<tag>" in \
        capfd.readouterr().err
    assert not (tmp_path / 'x').exists()


def test_a_calibrated_model_states_its_operating_point_on_the_probabilities_it_reports(covid_run, tmp_path, capfd):
    import re
    import shutil

    from magsd_timm.evaluation.report import save_temperature

    def stated(run: Path, name: str):
        staged = tmp_path / name
        assert _hub('push-model', run, 'tester/x', '--dry-run', staged, '--tag', 'magsd_custom.cxr_test',
                    '--unseen-results', _summary(run, tmp_path)) == 0, capfd.readouterr()
        body = ModelCard.load(staged / 'README.md').text
        threshold = float(re.search(r'P\(COVID-19\) >= ([0-9.]+)', body).group(1))
        return threshold, re.findall(r'\| (?:COVID-19|normal), [ab] \| .*\|', body), body

    calibrated = tmp_path / 'calibrated'
    shutil.copytree(covid_run, calibrated)
    save_temperature(calibrated / 'best', 3.0)
    plain, plain_rows, _ = stated(covid_run, 'plain')
    scaled, scaled_rows, body = stated(calibrated, 'scaled')
    assert 'divided by the temperature 3.0000' in body and '(model(image) / 3.0000).softmax(-1)' in body
    assert scaled != plain and scaled_rows == plain_rows  # another threshold, the same films called (a monotone scale)
