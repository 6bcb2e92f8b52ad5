"""An operating point: a threshold chosen at a sensitivity, read per group of films."""
import pytest
import torch

from magsd_timm.evaluation.operating_point import films_by_source, groups_of, rate_at, threshold_at_sensitivity


def test_the_threshold_calls_at_least_the_chosen_share_of_the_class():
    scores = torch.linspace(0.05, 0.95, 10)
    probs = torch.stack([1 - scores, scores], dim=1)
    labels = torch.tensor([1] * 9 + [0])
    threshold = threshold_at_sensitivity(probs, labels, 1, 0.75)
    assert threshold == pytest.approx(0.25)  # the lower quantile: 7 of the 9 films (0.78), never fewer than 0.75
    assert rate_at(probs, range(9), 1, threshold, positive=True).tolist() == [False, False] + [True] * 7
    assert rate_at(probs, [9], 1, threshold, positive=False).tolist() == [False]
    with pytest.raises(ValueError, match='no film of the class'):
        threshold_at_sensitivity(probs, torch.zeros(10, dtype=torch.long), 1, 0.9)


def test_films_are_grouped_per_source_of_their_class():
    labels, sources = [0, 1, 1, 0, 1], ['b', 'a', 'b', 'a', 'a']
    assert films_by_source(labels, sources, 1) == {'a': [1, 4], 'b': [2]}
    assert groups_of(labels, sources, 1, 0) == {'positive': [1, 2, 4], 'a': [3], 'b': [0]}
