"""Soft distance regularisation of MAG-SD and its total loss.

The raw view's class probabilities p0 (softmax of its logits, detached) are the target of every
augmented view. Where the raw prediction is wrong or unsure (argmax != label, or max p0 < 0.7), p0 is
replaced by a smoothed one-hot target: eps = 0.01 on each wrong class and 1 - (K - 1) * eps on the
true one. Each view k adds D_k = mean over batch and classes of |p0 - softmax(z_k)|; the loss is
CE(z0, y) + sum_k w_k D_k. The views' own cross-entropies are reported, not optimised.

The authors' code writes the true class as 1 - K * eps, so its target sums to 0.99:
``authors_target=True`` reproduces that exactly.

``map_overlap`` is an optional term beyond the authors' method (``MagSDObjective.diversity``): the mean
cosine similarity of an image's attention maps two by two, which a diversity penalty lowers so that the
maps cover different places instead of repeating one another (as part-attention models penalise it).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ['magsd_loss', 'map_overlap', 'raw_terms', 'refined_target', 'soft_distance', 'view_terms']


def refined_target(
        raw_logits: torch.Tensor,
        labels: torch.Tensor,
        confidence: float = 0.7,
        smoothing: float = 0.01,
        authors_target: bool = False,
) -> torch.Tensor:
    """Detached raw probabilities (B, K), replaced by a smoothed one-hot where wrong or below confidence."""
    probs = raw_logits.detach().float().softmax(dim=-1)
    top, predicted = probs.max(dim=-1)
    refine = (predicted != labels) | (top < confidence)
    num_classes = probs.shape[-1]
    on_value = 1. - (num_classes if authors_target else num_classes - 1) * smoothing
    smoothed = torch.full_like(probs, smoothing).scatter_(1, labels[:, None], on_value)
    return torch.where(refine[:, None], smoothed, probs)


def soft_distance(target: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference, over batch and classes, between target and a view's probabilities."""
    return (target - view_logits.float().softmax(dim=-1)).abs().mean()


def raw_terms(
        raw_logits: torch.Tensor,
        labels: torch.Tensor,
        confidence: float = 0.7,
        smoothing: float = 0.01,
        authors_target: bool = False,
        class_weights: Optional[Sequence[float]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Cross-entropy (class-weighted if given) of the raw logits, the views' target and the raw parts."""
    weight = torch.tensor(class_weights, device=raw_logits.device) if class_weights is not None else None
    ce_raw = F.cross_entropy(raw_logits.float(), labels, weight=weight)
    target = refined_target(raw_logits, labels, confidence, smoothing, authors_target)
    accuracy = (raw_logits.detach().argmax(dim=-1) == labels).float().mean()
    return ce_raw, target, {'ce_raw': ce_raw.detach(), 'accuracy': accuracy}


def view_terms(
        target: torch.Tensor, view_logits: torch.Tensor, labels: torch.Tensor, name: str,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One view's soft distance to the target, and its parts (distance, and its CE, reported only)."""
    distance = soft_distance(target, view_logits)
    ce = F.cross_entropy(view_logits.detach().float(), labels)
    return distance, {f'distance_{name}': distance.detach(), f'ce_{name}': ce}


def magsd_loss(
        raw_logits: torch.Tensor,
        view_logits: Sequence[torch.Tensor],
        labels: torch.Tensor,
        view_names: Sequence[str] = ('mixup', 'dimming', 'patching'),
        view_weights: Sequence[float] = (1., 1., 1.),
        confidence: float = 0.7,
        smoothing: float = 0.01,
        authors_target: bool = False,
        class_weights: Optional[Sequence[float]] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total MAG-SD loss and its detached parts (raw CE, each view's distance and CE, raw accuracy)."""
    if not len(view_logits) == len(view_names) == len(view_weights):
        raise ValueError(
            f'{len(view_logits)} view logits, {len(view_names)} view names and {len(view_weights)} weights '
            'must be as many.')
    loss, target, parts = raw_terms(raw_logits, labels, confidence, smoothing, authors_target, class_weights)
    for name, weight, logits in zip(view_names, view_weights, view_logits):
        distance, view_parts = view_terms(target, logits, labels, name)
        loss = loss + weight * distance
        parts.update(view_parts)
    parts['loss'] = loss.detach()
    return loss, parts


def map_overlap(attention: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean cosine similarity of each image's attention maps (B, M, h, w) two by two, over images and pairs:
    0 when no two maps share a place, 1 when all are the same map (the maps are >= 0)."""
    flat = F.normalize(attention.float().flatten(2), dim=2, eps=eps)  # a map of zeros stays zero
    gram = flat @ flat.transpose(1, 2)  # (B, M, M)
    m = attention.shape[1]
    off_diagonal = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)
    return (off_diagonal / max(m * (m - 1), 1)).mean()
