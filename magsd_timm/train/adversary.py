"""Training against the source: a head that tells the hospital from the features, behind a gradient reversal.

Domain-adversarial training (Ganin et al., JMLR 2016): a small head predicts each film's source from
the pooled features the classifier reads (the classifier's input, caught by a hook, so any timm model
and MA-Net alike). The head learns to tell the sources apart; the gradient that reaches the network
through it is reversed and scaled, so the network learns features from which the source cannot be
told. The scale rises from 0 to ``weight`` over the run as Ganin et al. ramp it (2 / (1 + exp(-10 p)) - 1,
p the share of the run done), so the classifier forms before the reversal pushes.

In public chest X-ray data class and source coincide (every child's film one collection's, most COVID-19
films another's): a head that sees only the features would push the class out with the source. This
head also sees the film's class, so what it can use, and what the reversal removes, is what tells the
sources apart among films of the same class (class-conditional, as in Long et al.'s CDAN, NeurIPS 2018).

The head exists only in training: checkpoints hold it (a resumed run continues it), exported models do not.
"""
import contextlib
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ['GradientReversal', 'SourceAdversary', 'SourceLabelled', 'classifier_input']


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient multiplied by -scale backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


class SourceAdversary(nn.Module):
    """Predicts a film's source from its pooled features and its class, through a gradient reversal."""

    def __init__(self, num_features: int, num_classes: int, num_sources: int, weight: float, hidden: int = 128):
        super().__init__()
        self.num_classes, self.weight = num_classes, weight
        self.norm = nn.LayerNorm(num_features, elementwise_affine=False)  # MA-Net's pooled features are x100
        self.head = nn.Sequential(nn.Linear(num_features + num_classes, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, num_sources))

    def scale(self, progress: float) -> float:
        """The reversal's scale at this share of the run (0 to 1): Ganin et al.'s ramp up to weight."""
        return self.weight * (2. / (1. + math.exp(-10. * min(max(progress, 0.), 1.))) - 1.)

    def forward(self, features: torch.Tensor, labels: torch.Tensor, progress: float) -> torch.Tensor:
        """Source logits (B, num_sources) of features (B, C) of films of these classes."""
        reversed_ = GradientReversal.apply(self.norm(features.float()), self.scale(progress))
        return self.head(torch.cat([reversed_, F.one_hot(labels, self.num_classes).float()], dim=1))

    def loss(self, features: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor, progress: float
             ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The head's cross-entropy on the sources, and its detached value and accuracy for the log."""
        logits = self(features, labels, progress)
        loss = F.cross_entropy(logits, sources)
        return loss, {'source_loss': loss.detach(), 'source_accuracy': (logits.argmax(-1) == sources).float().mean()}


@contextlib.contextmanager
def classifier_input(model: nn.Module) -> Iterator[List[torch.Tensor]]:
    """A list that receives the input of the model's classifier (the pooled features) at its first forward inside
    the block; the model may be wrapped (DistributedDataParallel, torch.compile)."""
    inner = model
    while hasattr(inner, 'module') or hasattr(inner, '_orig_mod'):
        inner = getattr(inner, 'module', None) or inner._orig_mod
    caught: List[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        if not caught:  # the raw pass; MAG-SD's views pass through the classifier after it
            caught.append(inputs[0])

    handle = inner.get_classifier().register_forward_pre_hook(hook)
    try:
        yield caught
    finally:
        handle.remove()


class SourceLabelled(Dataset):
    """A dataset's (image, class) items with the index of each one's source added: (image, class, source)."""

    def __init__(self, dataset: Any, sources: Sequence[str]):
        self.dataset, self.sources = dataset, list(sources)
        self.indices = [self.sources.index(s) for s in dataset.column('source')]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random transforms the items get."""
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        image, label = self.dataset[index]
        return image, label, self.indices[index]


def source_names(dataset: Any) -> Optional[List[str]]:
    """The sources of a dataset's films, sorted; None when a film has none recorded."""
    sources = dataset.column('source')
    return None if any(s is None for s in sources) else sorted(set(sources))
