"""Classification metrics against hand-computed confusion matrices."""
import math

import pytest
import torch

from magsd_timm.metrics import classification_metrics

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
