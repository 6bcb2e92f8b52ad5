"""An operating point: the probability of one class at or above which a film is called that class.

A classifier's argmax answers at no stated sensitivity. A screening use states one instead: the
threshold on P(class) that calls a chosen share of that class's validation films (e.g. COVID-19
sensitivity 0.90), and then reports, on films it never chose with, the sensitivity reached and the
specificity on every other group of films (each source's normals, a probe).
"""
from typing import Any, Dict, List, Sequence

import torch

__all__ = ['films_by_source', 'groups_of', 'rate_at', 'threshold_at_sensitivity']


def threshold_at_sensitivity(probs: torch.Tensor, labels: torch.Tensor, index: int, sensitivity: float) -> float:
    """A P(class index) that at least `sensitivity` of the films labelled index reach: the lower (1 - sensitivity)
    quantile of their scores (ValueError: no such film)."""
    scores = probs[labels == index, index].double()
    if not len(scores):
        raise ValueError('no film of the class to choose an operating point on')
    return float(torch.quantile(scores, 1 - sensitivity, interpolation='lower'))


def rate_at(probs: torch.Tensor, films: Sequence[int], index: int, threshold: float, positive: bool) -> torch.Tensor:
    """For each of these films, whether the operating point answers right: called the class (positive films) or not
    called it (negative films)."""
    scores = probs[list(films), index]
    return scores >= threshold if positive else scores < threshold


def films_by_source(labels: Sequence[int], sources: Sequence[Any], index: int) -> Dict[str, List[int]]:
    """The films of class `index`, per source (sorted by name)."""
    groups: Dict[str, List[int]] = {}
    for i, (source, k) in enumerate(zip(sources, labels)):
        if k == index:
            groups.setdefault(str(source), []).append(i)
    return dict(sorted(groups.items()))


def groups_of(labels: List[int], sources: List[Any], index: int, other: int) -> Dict[str, List[int]]:
    """The films of class `index`, and the films of class `other` per source: what an operating point is read on."""
    return {'positive': [i for i, k in enumerate(labels) if k == index], **films_by_source(labels, sources, other)}
