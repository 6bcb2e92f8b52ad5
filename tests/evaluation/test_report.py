"""Evaluation helpers: class alignment, temperature scaling, the saved temperature, the report."""
import json
import math

import pytest
import torch

from magsd_timm.data import CXRDataset
from magsd_timm.evaluation.report import (
    MIN_CALIBRATION_IMAGES,
    CalibrationError,
    LabelMismatchError,
    align_labels,
    evaluate,
    fit_temperature,
    save_temperature,
    write_reports,
)
from magsd_timm.models import ConfigError


def test_classes_in_another_order_or_fewer_are_mapped_and_other_classes_refused():
    assert align_labels(['normal', 'pneumonia'], ['pneumonia', 'normal']).tolist() == [1, 0]
    assert align_labels(['COVID-19', 'viral', 'bacterial', 'normal'], ['normal', 'COVID-19']).tolist() == [3, 0]
    with pytest.raises(LabelMismatchError) as error:
        align_labels(['COVID-19', 'normal'], ['normal', 'pneumonia'])
    assert "['COVID-19', 'normal']" in str(error.value) and "['normal', 'pneumonia']" in str(error.value)
    assert "'pneumonia' is not among its classes" in str(error.value)


def test_an_external_set_with_fewer_classes_is_scored_over_the_present_ones_and_names_the_absent(tmp_path):
    classes = ['COVID-19', 'viral', 'bacterial', 'normal']
    # 8 images, COVID-19 and normal only; the model calls one normal image viral and one COVID-19 image normal
    records = [dict(path=f'x{i}.png', label='COVID-19' if i < 4 else 'normal', patient_id=f'p{i}',
                    source='siteA' if i % 2 else 'siteB') for i in range(8)]
    dataset = CXRDataset(records, classes)
    labels = torch.tensor(dataset.labels())
    predicted = torch.tensor([0, 0, 0, 3, 3, 3, 3, 1])
    logits = 5 * torch.nn.functional.one_hot(predicted, 4).float()
    report, probs = evaluate([logits], labels, dataset, classes, replicates=20)
    assert probs.shape == (8, 4) and report['absent_classes'] == ['viral', 'bacterial']
    metrics = report['metrics']
    assert metrics['accuracy'] == pytest.approx(6 / 8)
    # F1: COVID-19 2*3/(2*3+0+1) = 6/7; normal 2*3/(2*3+1+1) = 3/4; the absent classes are not averaged in
    assert metrics['macro_f1'] == pytest.approx((6 / 7 + 3 / 4) / 2)
    assert metrics['sensitivity']['COVID-19'] == pytest.approx(3 / 4) and metrics['specificity']['COVID-19'] == 1.0
    assert math.isnan(metrics['sensitivity']['viral']) and metrics['specificity']['viral'] == pytest.approx(7 / 8)
    assert report['per_source']['siteA']['classes'] == ['COVID-19', 'normal']
    # the shortcut table: per class, each source's share of its images recognised (siteA: odd i, siteB: even i)
    assert report['class_source_accuracy'] == {
        'COVID-19': {'siteA': {'num_images': 2, 'accuracy': 0.5}, 'siteB': {'num_images': 2, 'accuracy': 1.0}},
        'normal': {'siteA': {'num_images': 2, 'accuracy': 0.5}, 'siteB': {'num_images': 2, 'accuracy': 1.0}}}
    write_reports(dict(report, model='m', data='external', split='test'), probs, labels, classes, tmp_path)
    text = (tmp_path / 'evaluation.md').read_text()
    assert 'Absent from these images: viral, bacterial.' in text
    assert "## Shortcuts" in text and '| COVID-19 | 0.500 (2) | 1.000 (2) |' in text


def test_temperature_scaling_recovers_the_temperature_that_generated_the_labels():
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(20000, 3, generator=generator)
    labels = torch.multinomial((logits / 2.5).softmax(-1), 1, generator=generator)[:, 0]
    assert fit_temperature([logits], labels) == pytest.approx(2.5, rel=0.05)


def test_calibration_on_too_few_images_is_refused_saying_how_many_are_needed():
    logits, labels = torch.randn(MIN_CALIBRATION_IMAGES - 1, 2), torch.zeros(MIN_CALIBRATION_IMAGES - 1).long()
    with pytest.raises(CalibrationError, match=f'at least {MIN_CALIBRATION_IMAGES} calibration images; '
                                               f'the calibration split has {MIN_CALIBRATION_IMAGES - 1}'):
        fit_temperature([logits], labels)


@pytest.mark.parametrize('sign, edge', [(1, '0.01'), (-1, '100')])
def test_a_fit_on_the_edge_of_the_search_range_is_refused(sign, edge):
    # all right with a margin: sharper is always better (T -> 0); all wrong: flatter is always better (T -> inf)
    labels = torch.arange(40) % 2
    logits = sign * 5 * torch.nn.functional.one_hot(labels, 2).float()
    with pytest.raises(CalibrationError, match=rf'edge of the search range .*\({edge}'):
        fit_temperature([logits], labels)


def test_the_temperature_is_saved_into_the_config_and_nothing_else_changes(tmp_path):
    config = {'architecture': 'magsd_resnet18', 'label_names': ['a', 'b'], 'pretrained_cfg': {'mean': [0.5]}}
    (tmp_path / 'config.json').write_text(json.dumps(config))
    save_temperature(tmp_path, 1.7)
    assert json.loads((tmp_path / 'config.json').read_text()) == dict(config, temperature=1.7)
    assert [p.name for p in tmp_path.iterdir()] == ['config.json']  # no temporary file left


@pytest.mark.parametrize('value', [-1., 0., math.nan, math.inf])
def test_an_invalid_temperature_is_never_saved(tmp_path, value):
    (tmp_path / 'config.json').write_text('{"architecture": "x"}')
    with pytest.raises(ConfigError, match='temperature'):
        save_temperature(tmp_path, value)
    assert (tmp_path / 'config.json').read_text() == '{"architecture": "x"}'


def test_report_has_intervals_by_patient_per_source_results_and_plots(tmp_path):
    records = [dict(path=f'x{i}.png', label='a' if i % 2 else 'b', patient_id=f'p{i // 2}', source=f's{i % 3 > 0}')
               for i in range(12)]
    dataset = CXRDataset(records, ['a', 'b'])
    labels = torch.tensor(dataset.labels())
    noise = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    logits = torch.nn.functional.one_hot(labels, 2).float() * 3 + noise
    report, probs = evaluate([logits], labels, dataset, ['a', 'b'], temperature=2.0, replicates=50)
    assert report['num_patients'] == 6 and report['bootstrap']['resampled'] == 'patient'
    assert torch.allclose(probs, (logits / 2).softmax(-1))
    assert set(report['per_source']) == {'sTrue', 'sFalse'} and report['per_source']['sTrue']['num_images'] == 8
    low, high = report['intervals']['accuracy']
    assert low <= report['metrics']['accuracy'] <= high
    written = write_reports(dict(report, model='m', data='d', split='test'), probs, labels, ['a', 'b'], tmp_path)
    saved = json.loads((tmp_path / 'evaluation.json').read_text())  # strict JSON: NaN written as null
    assert saved['metrics']['accuracy'] == report['metrics']['accuracy']
    assert '| accuracy |' in (tmp_path / 'evaluation.md').read_text() and '6 patients' in written[1].read_text()
    for plot in written[2:]:
        assert plot.read_bytes()[:4] == b'\x89PNG'
    assert not any(isinstance(v, float) and math.isnan(v) for v in saved['metrics'].values())
