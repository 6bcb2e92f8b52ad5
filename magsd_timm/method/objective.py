"""The MAG-SD training objective that any training loop can call.

One raw forward gives the logits and the attention maps; the attention guides three harder views
(mixup, dimming, patching); each view goes through the same network; the soft distance loss ties the
views' predictions to the raw one. By default each view is a separate forward, which keeps the
authors' BatchNorm behaviour (statistics per view); ``fused_views=True`` runs the three views as one
batch (one forward, BatchNorm statistics over all three).

With ``diversity`` > 0 (off by default: the authors' method has no such term) the raw pass adds
``diversity * map_overlap(attention)``, which pushes one image's attention maps apart.

``objective(model, images, labels)`` returns the loss for the loop to back-propagate.
``objective.backward(model, images, labels)`` back-propagates it itself, pass by pass: the raw
target is detached, so the loss splits into one term per pass, and each pass's activations are
freed before the next pass runs: the same gradients with one pass's activations alive at a time
instead of four. In the step benchmark (``recipes/benchmark.py --suite step``, docs/benchmarks.md) that is about
a third of the step's peak memory, for a step about 4% slower on a 2-core CPU. Under
DistributedDataParallel only the last pass synchronises the accumulated gradients. Every pass, the
raw one included, runs through the model's own forward, so wrappers (DistributedDataParallel,
DataParallel, torch.compile) see all four.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from .augment import AttentionAugmentConfig, AttentionViews, attention_views_from_uniforms, draw_uniforms
from .losses import magsd_loss, map_overlap, raw_terms, view_terms

__all__ = ['MagSDObjective', 'ObjectiveOutput', 'VIEW_NAMES']

VIEW_NAMES = ('mixup', 'dimming', 'patching')


class ObjectiveOutput(NamedTuple):
    """The loss to back-propagate, its detached parts for logging, and the raw logits."""
    loss: torch.Tensor
    parts: Dict[str, torch.Tensor]
    logits: torch.Tensor


def _raw_pass(model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits and attention maps of the raw images, through model's own forward (and so its wrappers')."""
    inner = model
    while not hasattr(inner, 'forward_with_attention'):  # a magsd_* model inside DDP, DataParallel, torch.compile
        wrapped = getattr(inner, 'module', None) or getattr(inner, '_orig_mod', None)
        if wrapped is None:
            raise TypeError(
                f'MAG-SD needs a model with forward_with_attention (a magsd_* model), got {type(model).__name__}.')
        inner = wrapped
    return model(images, return_attention=True)


@dataclass
class MagSDObjective:
    """CE on the raw logits plus weighted soft distances of the three attention-guided views."""
    augment: AttentionAugmentConfig = field(default_factory=AttentionAugmentConfig)
    view_weights: Tuple[float, float, float] = (1., 1., 1.)
    confidence: float = 0.7
    smoothing: float = 0.01
    authors_target: bool = False
    fused_views: bool = False
    class_weights: Optional[Tuple[float, ...]] = None  # of the raw cross-entropy, for imbalanced classes
    diversity: float = 0.  # weight of the attention maps' overlap (losses.map_overlap) on the raw pass

    def _diversity_term(self, attention: torch.Tensor, parts: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted overlap of the raw pass's maps (logged as map_overlap), or 0 when diversity is off."""
        if not self.diversity:
            return torch.zeros((), device=attention.device)
        overlap = map_overlap(attention)
        parts['map_overlap'] = overlap.detach()
        return self.diversity * overlap

    def __call__(
            self,
            model: nn.Module,
            images: torch.Tensor,
            labels: torch.Tensor,
            generator: Optional[torch.Generator] = None,
    ) -> ObjectiveOutput:
        """Run the raw pass, the three views and the loss for one batch."""
        uniforms = draw_uniforms(images.shape[0], generator, images.device)
        return self.from_uniforms(model, images, labels, uniforms)

    def from_uniforms(
            self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, uniforms: torch.Tensor,
    ) -> ObjectiveOutput:
        """The objective with its randomness given (see draw_uniforms): a form torch.compile takes whole."""
        logits, attention = _raw_pass(model, images)
        views = attention_views_from_uniforms(images, attention, uniforms, self.augment)
        view_logits = [
            out for _, batch in self._view_batches(views) for out in model(batch).split(images.shape[0])]
        loss, parts = magsd_loss(
            logits, view_logits, labels, VIEW_NAMES, self.view_weights,
            self.confidence, self.smoothing, self.authors_target, self.class_weights)
        loss = loss + self._diversity_term(attention, parts)
        parts['loss'] = loss.detach()
        return ObjectiveOutput(loss, parts, logits)

    def _view_batches(self, views: AttentionViews) -> List[Tuple[Tuple[str, ...], torch.Tensor]]:
        """The forward passes the views take: one each, or all three as one batch when fused."""
        if self.fused_views:
            return [(VIEW_NAMES, torch.cat(views))]
        return [((name,), view) for name, view in zip(VIEW_NAMES, views)]

    def backward(
            self,
            model: nn.Module,
            images: torch.Tensor,
            labels: torch.Tensor,
            generator: Optional[torch.Generator] = None,
            backward: Optional[Callable[[torch.Tensor], None]] = None,
            raw_extra: Optional[Callable[[], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]] = None,
    ) -> ObjectiveOutput:
        """Compute the objective and back-propagate it pass by pass with `backward` (e.g. accelerator.backward).

        raw_extra: a further loss on the raw pass (and its parts for the log), back-propagated with it while its
        activations live: e.g. a source adversary on the features the raw pass pooled (train/adversary.py).
        """
        backward = backward or torch.Tensor.backward
        no_sync: Callable[[], ContextManager] = getattr(model, 'no_sync', contextlib.nullcontext)
        uniforms = draw_uniforms(images.shape[0], generator, images.device)
        with no_sync():
            logits, attention = _raw_pass(model, images)
            ce_raw, target, parts = raw_terms(
                logits, labels, self.confidence, self.smoothing, self.authors_target, self.class_weights)
            extra, extra_parts = raw_extra() if raw_extra is not None else (0., {})
            diversity = self._diversity_term(attention, parts)
            backward(ce_raw + diversity + extra)
        views = attention_views_from_uniforms(images, attention, uniforms, self.augment)
        passes = self._view_batches(views)
        total = ce_raw.detach() + diversity.detach()
        weights = dict(zip(VIEW_NAMES, self.view_weights))
        for i, (names, batch) in enumerate(passes):
            with no_sync() if i < len(passes) - 1 else contextlib.nullcontext():
                loss = 0.
                for name, view_logits in zip(names, model(batch).split(images.shape[0])):
                    distance, view_parts = view_terms(target, view_logits, labels, name)
                    loss = loss + weights[name] * distance
                    parts.update(view_parts)
                backward(loss)
            total = total + loss.detach()
        parts['loss'] = total
        parts.update(extra_parts)
        return ObjectiveOutput(total, parts, logits.detach())

