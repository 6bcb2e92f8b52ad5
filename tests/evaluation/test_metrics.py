"""Classification metrics against hand-computed confusion matrices and scikit-learn; bootstrap intervals."""
import math

import pytest
import torch

from magsd_timm.evaluation.metrics import bootstrap_intervals, classification_metrics

NAMES = ('covid', 'viral', 'normal')


def _one_hot_logits(predictions):
    return torch.nn.functional.one_hot(torch.tensor(predictions), 3).float() * 5


def test_metrics_match_a_hand_computed_confusion_matrix():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    m = classification_metrics(_one_hot_logits(preds), labels, NAMES)
    assert m['confusion_matrix'] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert m['accuracy'] == pytest.approx(7 / 10)
    # covid: TP 3, FN 1, FP 1, TN 5
    assert m['sensitivity']['covid'] == pytest.approx(3 / 4)
    assert m['specificity']['covid'] == pytest.approx(5 / 6)
    assert m['ppv']['covid'] == pytest.approx(3 / 4)
    assert m['npv']['covid'] == pytest.approx(5 / 6)
    # viral: TP 2, FN 1, FP 1, TN 6; normal: TP 2, FN 1, FP 1, TN 6
    assert m['specificity']['viral'] == pytest.approx(6 / 7) and m['npv']['normal'] == pytest.approx(6 / 7)
    f1 = [2 * 3 / (2 * 3 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 1)]
    assert m['macro_f1'] == pytest.approx(sum(f1) / 3)
    assert m['num_samples'] == 10


def test_auroc_is_one_against_the_rest_with_ties_halved():
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1]]))
    m = classification_metrics(logits, labels, NAMES)
    # class 0 scores: positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: 1, 1, 0.5, 1 -> 0.875
    assert m['auroc']['covid'] == pytest.approx(0.875)
    assert math.isnan(m['auroc']['normal'])  # no positive of 'normal': undefined, not 0
    assert math.isnan(m['sensitivity']['normal'])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match='do not fit 3 classes'):
        classification_metrics(torch.zeros(4, 2), torch.zeros(4), NAMES)


def test_auroc_and_auprc_agree_with_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (200,), generator=generator)
    logits = torch.randn(200, 3, generator=generator) + 1.5 * torch.nn.functional.one_hot(labels, 3)
    m = classification_metrics(logits, labels, NAMES)
    probs = logits.softmax(-1).numpy()
    for k, name in enumerate(NAMES):
        target = (labels == k).numpy()
        assert m['auroc'][name] == pytest.approx(roc_auc_score(target, probs[:, k]), abs=1e-6)
        assert m['auprc'][name] == pytest.approx(average_precision_score(target, probs[:, k]), abs=1e-6)


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy_per_bin():
    # confidences 0.9 (bin 14), 0.9, 0.6 (bin 9), 0.6: right, wrong, right, right
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.6, 0.2]])
    labels = torch.tensor([0, 1, 0, 1])
    m = classification_metrics(probs, labels, NAMES, probabilities=True)
    assert m['ece'] == pytest.approx(2 / 4 * abs(0.9 - 0.5) + 2 / 4 * abs(0.6 - 1.0))
    assert m['accuracy'] == pytest.approx(3 / 4)  # probabilities are taken as they are


def test_bootstrap_resamples_patients_not_images():
    # patient A's 10 images are all right, patient B's 10 all wrong
    labels = torch.zeros(20, dtype=torch.long)
    probs = torch.tensor([[0.9, 0.05, 0.05]] * 10 + [[0.05, 0.9, 0.05]] * 10)
    by_patient = bootstrap_intervals(probs, labels, NAMES, groups=['A'] * 10 + ['B'] * 10, replicates=400)
    by_image = bootstrap_intervals(probs, labels, NAMES, replicates=400)
    assert by_patient['accuracy'] == pytest.approx([0.0, 1.0])  # two patients: each is all or nothing
    low, high = by_image['accuracy']
    assert 0.2 < low < 0.5 < high < 0.8  # twenty independent images: a narrower interval
    again = bootstrap_intervals(probs, labels, NAMES, replicates=400)
    assert again['accuracy'] == by_image['accuracy'] and again['ppv']['covid'] == by_image['ppv']['covid']  # seeded
    assert math.isnan(by_patient['auroc']['covid'][0])  # never defined: no image of another class


def test_bootstrap_needs_one_group_per_image():
    with pytest.raises(ValueError, match='3 group ids for 4 images'):
        bootstrap_intervals(torch.full((4, 3), 1 / 3), torch.zeros(4, dtype=torch.long), NAMES, groups=[1, 2, 3])


def test_metrics_render_as_the_tables_of_reports_and_cards():
    from magsd_timm.evaluation.metrics import metric_cell, metrics_markdown

    assert metric_cell(0.12345) == '0.123' and metric_cell(float('nan')) == 'n/a' and metric_cell(None) == 'n/a'
    assert metric_cell(0.5, [0.25, 0.75]) == '0.500 [0.250, 0.750]' and metric_cell(0.5, [None, 0.7]) == '0.500'
    metrics = classification_metrics(torch.tensor([[2., 0.], [0., 2.], [2., 0.]]), torch.tensor([0, 1, 1]), ['a', 'b'])
    intervals = {k: [0.1, 0.9] for k in ('accuracy', 'macro_f1', 'ece')}
    intervals.update({k: {'a': [0.1, 0.9], 'b': [0.2, 0.8]} for k in metrics if isinstance(metrics[k], dict)})
    text = metrics_markdown(metrics, ['a', 'b'], intervals)
    assert '| metric | value [95% CI] |' in text and '| accuracy | 0.667 [0.100, 0.900] |' in text
    assert '| images | 3 |' in text and '| b | 0.500 [0.200, 0.800] | 1.000 [0.200, 0.800] |' in text
    assert '| true \\ predicted | a | b |' in text and '| b | 1 | 1 |' in text
    assert '| metric | value |' in metrics_markdown(metrics, ['a', 'b'])


def test_macro_f1_has_one_definition_the_mean_over_the_classes_present():
    from accelerate import Accelerator

    from magsd_timm.data.dataset import CXRDataset
    from magsd_timm.evaluation.report import evaluate
    from magsd_timm.train.loop import validate

    names = ['COVID-19', 'normal', 'viral pneumonia']  # no viral pneumonia among the labels
    labels = torch.tensor([0, 0, 0, 1, 1])
    logits = torch.tensor([[5., 0, 0], [5, 0, 0], [0, 0, 5], [0, 5, 0], [0, 5, 0]])  # one COVID-19 called viral
    expected = (0.8 + 1.0) / 2  # F1 of COVID-19 and of normal; the absent class does not count
    assert classification_metrics(logits, labels, names)['macro_f1'] == pytest.approx(expected)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[x[:, 0, 0, 0].long()]
    images = torch.arange(5.)[:, None, None, None].expand(5, 1, 2, 2)
    trainer = validate(Accelerator(cpu=True), Fixed(), [(images, labels)], names)['macro_f1']
    records = [dict(path=f'{i}.png', label=names[int(k)], patient_id=None, source=None) for i, k in enumerate(labels)]
    report, _ = evaluate([logits], labels, CXRDataset(records, names), names, replicates=10)
    assert trainer == report['metrics']['macro_f1'] == pytest.approx(expected)


def test_nan_scores_are_refused_not_scored():
    with pytest.raises(ValueError, match='NaN or infinite'):
        classification_metrics(torch.tensor([[float('nan'), 0.], [0., 1.]]), torch.tensor([0, 1]), ['a', 'b'])
