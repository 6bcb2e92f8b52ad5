"""An operating point: the probability of one class at or above which a film is called that class.

A classifier's argmax answers at no stated sensitivity. A screening use states one instead: the
threshold on P(class) that calls a chosen share of that class's validation films (e.g. COVID-19
sensitivity 0.90), and then reports, on films it never chose with, the sensitivity reached and the
specificity on every other group of films (each source's normals, a probe).
"""
from typing import Any, Dict, List, Sequence

import torch

__all__ = ['groups_of', 'rate_at', 'threshold_at_sensitivity']


def threshold_at_sensitivity(probs: torch.Tensor, labels: torch.Tensor, index: int, sensitivity: float) -> float:
    """The highest P(class index) that at least `sensitivity` of the films labelled index reach (ValueError: none)."""
    scores = probs[labels == index, index].double()
    if not len(scores):
        raise ValueError('no film of the class to choose an operating point on')
    return float(torch.quantile(scores, 1 - sensitivity, interpolation='lower'))


def rate_at(probs: torch.Tensor, films: Sequence[int], index: int, threshold: float, positive: bool) -> torch.Tensor:
    """For each of these films, whether the operating point answers right: called the class (positive films) or not
    called it (negative films)."""
    scores = probs[list(films), index]
    return scores >= threshold if positive else scores < threshold


def groups_of(labels: List[int], sources: List[Any], index: int, other: int) -> Dict[str, List[int]]:
    """The films of class `index`, and the films of class `other` per source: what an operating point is read on."""
    groups = {'positive': [i for i, k in enumerate(labels) if k == index]}
    for source in sorted({str(s) for s, k in zip(sources, labels) if k == other}):
        groups[source] = [i for i, (s, k) in enumerate(zip(sources, labels)) if k == other and str(s) == source]
    return groups
