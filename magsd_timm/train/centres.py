"""WS-DAN's feature-centre loss: each class's pooled part features drawn towards a running centre.

Hu et al.'s WS-DAN (arXiv:1901.09891) keeps one centre per class of the BAP vector (the M attention
maps' pooled part features, unit length) and adds the squared distance of each film's vector to its
class's centre (normalised) to the loss, so that map m pools the same part in every film of a class:
the maps become specific instead of interchangeable. The centres are not learned by the optimizer;
after each batch each one moves a share ``rate`` (WS-DAN's beta, 0.05) of the way to the mean of its
class's vectors in the batch (over every process, so every process keeps the same centres): a running
mean, as Wen et al.'s centre loss keeps it. WS-DAN steps from the normalised centre instead, which
never settles where a class's films differ: the mean of unit vectors is shorter than one, so the
centre shrinks through zero and turns round (``tests/train/test_centres.py`` shows this one settles).

The vector is the classifier's input (caught by ``adversary.classifier_input``), divided by its length
to undo MA-Net's logit scale. Like the source adversary, the centres exist only in training: checkpoints
hold them (a resumed run continues them), exported models do not.
"""
from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['FeatureCentres']


class FeatureCentres(nn.Module):
    """One running centre per class of the pooled features; the weighted centre loss of a batch."""

    def __init__(self, num_features: int, num_classes: int, weight: float, rate: float = 0.05):
        super().__init__()
        if not 0. < rate <= 1.:
            raise ValueError(f'rate {rate}: the share of the way a centre moves each batch is in (0, 1].')
        self.weight, self.rate = weight, rate
        self.register_buffer('centres', torch.zeros(num_classes, num_features))

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The weighted mean squared distance of features (B, D) to their classes' centres, and the detached
        distance for the log; then the centres move towards this batch's features."""
        features = F.normalize(features.float(), dim=-1)
        targets = F.normalize(self.centres, dim=-1)[labels]  # a centre still at zero stays zero
        distance = (features - targets).pow(2).sum(dim=-1).mean()
        self._move(features.detach() - self.centres[labels], labels)
        return self.weight * distance, {'centre_distance': distance.detach()}

    @torch.no_grad()
    def _move(self, steps: torch.Tensor, labels: torch.Tensor) -> None:
        """Move each class's centre by rate times the mean step of its films over every process."""
        sums = torch.zeros_like(self.centres).index_add_(0, labels, steps)
        counts = torch.bincount(labels, minlength=self.centres.shape[0]).to(sums)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.centres += self.rate * sums / counts.clamp(min=1.)[:, None]
