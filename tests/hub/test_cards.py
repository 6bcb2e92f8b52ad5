"""Model cards rebuilt from a training run: timm-style metadata, evaluation, data biases, usage, citation."""
import json
import math
import shutil

import pytest
import timm
import yaml

from magsd_timm.hub import TrainingRun, find_run, render_model_card


def _split(card: str):
    _, header, body = card.split('---\n', 2)
    return yaml.safe_load(header), body


@pytest.fixture(scope='module')
def run(trained_run):
    return find_run(trained_run)


@pytest.fixture(scope='module')
def model(run):
    return timm.create_model(f'local-dir:{run.checkpoint}', pretrained=True).eval()


def test_find_run_reads_what_the_trainer_recorded(trained_run, run):
    assert run.checkpoint == trained_run / 'best'
    assert run.command.startswith('accelerate launch recipes/train.py ') and '--epochs 1' in run.command
    assert 'command' not in run.args and run.args['model'] == 'magsd_custom'
    assert run.epoch == 0 and run.metrics['num_samples'] == 2
    assert find_run(trained_run / 'best').args == run.args  # the checkpoint folder finds its run
    final = find_run(trained_run / 'final')
    assert final.checkpoint == trained_run / 'final' and final.metrics is None  # eval_best is not about final/


def test_find_run_names_a_folder_without_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='expected a training output folder'):
        find_run(tmp_path)


def test_metadata_is_timm_style_with_the_runs_metrics(run, model):
    meta, _ = _split(render_model_card(model, run, 'org/cxr-model'))
    assert meta['library_name'] == 'timm' and meta['pipeline_tag'] == 'image-classification'
    assert meta['license'] == 'apache-2.0' and meta['datasets'] == ['kermany16']
    assert {'image-classification', 'timm', 'magsd', 'medical-imaging'} <= set(meta['tags'])
    assert 'base_model' not in meta  # trained from scratch
    results = meta['model-index'][0]['results']
    values = {m['type']: m['value'] for r in results for m in r['metrics']}
    assert values == {'accuracy': round(run.metrics['accuracy'], 4), 'f1': round(run.metrics['macro_f1'], 4)}
    assert meta['model-index'][0]['name'] == 'cxr-model'


def test_a_pretrained_backbone_is_the_base_model_and_undefined_metrics_are_left_out(run, model):
    metrics = dict(run.metrics, macro_f1=float('nan'))
    changed = TrainingRun(run.checkpoint, dict(run.args, pretrained=True), metrics, run.epoch, run.command)
    meta, body = _split(render_model_card(model, changed, 'org/cxr-model', license='cc-by-4.0',
                                          dataset_id='org/cxr-data'))
    assert meta['base_model'] == timm.models.get_pretrained_cfg('test_resnet').hf_hub_id
    assert meta['license'] == 'cc-by-4.0' and meta['datasets'] == ['org/cxr-data']
    assert [m['type'] for m in meta['model-index'][0]['results'][0]['metrics']] == ['accuracy']
    assert 'ImageNet weights `timm/test_resnet' in body


@pytest.mark.parametrize('tag, base_model', [('tv_in1k', 'timm/resnet18.tv_in1k'), ('../../etc', None)])
def test_a_plain_baseline_names_the_weights_it_started_from_by_their_tag(run, tmp_path, tag, base_model):
    from magsd_timm.run_records import FINAL
    from magsd_timm.train.run_folder import RunFolder

    baseline = timm.create_model('resnet18.tv_in1k', num_classes=2, in_chans=1)
    folder = RunFolder(tmp_path / 'base')
    folder.save_model(FINAL, baseline, ['a', 'b'], dict(input_size=(1, 64, 64), interpolation='bilinear', mean=(0.5,),
                                                        std=(0.5,), crop_pct=1.0, crop_mode='squash'),
                      {'epoch': 0, 'pretrained_weights': 'the Hub (timm/resnet18.tv_in1k)'})
    config_file = folder.path / FINAL / 'config.json'
    config = json.loads(config_file.read_text())
    config['pretrained_cfg']['tag'] = tag  # as recorded, or as a hostile config would have it
    config_file.write_text(json.dumps(config))
    trained = TrainingRun(folder.path / FINAL, dict(run.args, pretrained=True, method='baseline'), None, 0, run.command)
    meta, body = _split(render_model_card(baseline, trained, 'org/baseline'))
    assert meta.get('base_model') == base_model
    if base_model:
        assert 'ImageNet weights `timm/resnet18.tv_in1k`, loaded from the Hub (timm/resnet18.tv_in1k)' in body


def test_body_says_what_the_model_is_how_it_was_trained_and_how_to_use_it(run, model):
    _, body = _split(render_model_card(model, run, 'org/cxr-model'))
    config = json.loads((run.checkpoint / 'config.json').read_text())
    assert f"classify chest\nX-rays into: {', '.join(config['label_names'])}" in body
    assert '`magsd_custom` over `test_resnet`, 4 attention maps' in body
    assert f'**Params (M):** {sum(p.numel() for p in model.parameters()) / 1e6:.2f}' in body
    from magsd_timm.utils.tables import shown_command

    assert shown_command(run.command) in body and '| epochs | 1 |' in body  # the command, without this machine's folders
    assert '--output run --model magsd_custom' in body
    assert f"| accuracy | {run.metrics['accuracy']:.3f} |" in body and '| true \\ predicted |' in body
    assert 'not a medical device' in body and '## Intended use' in body
    usage = body.split('## How to use')[1]
    assert usage.index('import magsd_timm') < usage.index('create_model')
    assert "timm.create_model('hf-hub:org/cxr-model', pretrained=True)" in usage
    assert '**Preprocessing:** each film resized whole' in body
    assert 'No test report yet, so no shortcut measures' in body  # said where they would be
    assert 'transform = create_transform(model)' in usage and 'from magsd_timm.data import create_transform' in usage
    assert '@article{li2021magsd' in body
    assert not math.isnan(float(body.split('**GMACs:** ')[1].split()[0]))


def test_known_biases_come_from_the_prepared_datasets_card(run, model, tmp_path):
    prepared = tmp_path / 'cxr'
    prepared.mkdir()
    (prepared / 'README.md').write_text(
        '---\npretty_name: Two hospitals\n---\n# x\n\n## Known biases and limits\n\nAll COVID-19 films come '
        'from hospital A.\n\n## Preparation\n\nnot this\n')
    changed = TrainingRun(run.checkpoint, dict(run.args, data=str(prepared)), run.metrics, run.epoch, run.command)
    meta, body = _split(render_model_card(model, changed, 'org/cxr-model'))
    biases = body.split('## Data and known biases')[1].split('## Intended use')[0]
    assert 'All COVID-19 films come from hospital A.' in biases and 'not this' not in biases
    assert meta['datasets'] == ['Two hospitals'] and '`Two hospitals`' in body


def test_a_datasets_name_of_any_text_round_trips_into_the_model_card(run, model, tmp_path):
    from huggingface_hub import ModelCard

    from magsd_timm.data.build import build_dataset
    from magsd_timm.data.sample import sample_records

    name = 'CXR: "150" per class\n胸部 #1'
    build_dataset(sample_records(), tmp_path / 'cxr', seed=0, pretty_name=name)
    changed = TrainingRun(run.checkpoint, dict(run.args, data=str(tmp_path / 'cxr')), run.metrics, run.epoch,
                          run.command)
    card = ModelCard(render_model_card(model, changed, 'org/cxr-model'))
    assert card.data.datasets == [name] and card.data.library_name == 'timm'
    assert card.data.eval_results[0].dataset_name == name
    assert '`CXR: "150" per class 胸部 #1` (a local dataset' in card.text
    assert str(tmp_path) not in card.text and str(run.checkpoint.parent) not in card.text  # no folder of this machine


def test_a_checkpoint_without_records_still_gets_a_card(run, model, tmp_path):
    bare = tmp_path / 'bare'
    shutil.copytree(run.checkpoint, bare)
    _, body = _split(render_model_card(model, find_run(bare), 'org/bare'))
    assert 'No evaluation was recorded with this checkpoint.' in body and 'not recorded' in body


def test_a_test_report_in_the_run_is_the_cards_headline_with_intervals_per_source_and_where_it_looks(
        trained_run, tmp_path, model, capsys):
    import shutil

    from magsd_timm.cli.magsd import main

    run_dir = tmp_path / 'run'
    shutil.copytree(trained_run, run_dir)
    assert main(['evaluate', str(run_dir / 'best'), '--split', 'train', '--bootstrap', '20',
                 '--output', str(run_dir / 'test')]) == 0
    run = find_run(run_dir)
    assert run.test_report['split'] == 'train' and run.test_report['num_images'] == 12
    meta, body = _split(render_model_card(model, run, 'org/cxr-model'))
    assert {r['dataset']['split'] for r in meta['model-index'][0]['results']} == {'test'}
    assert body.index('### Test split') < body.index('### Validation split')
    accuracy, (low, high) = run.test_report['metrics']['accuracy'], run.test_report['intervals']['accuracy']
    assert f'| accuracy | {accuracy:.3f} [{low:.3f}, {high:.3f}] |' in body
    hiding = run.test_report['hiding']['lungs']['answers_changed']  # the shortcut measures, next to the scores
    assert body.index('#### Shortcuts') < body.index('### Validation split') and 'No test report yet' not in body
    assert f'| lungs hidden | 0.408 | {hiding:.3f}' in body
