"""One training update and one evaluation pass, the way accelerate's examples write them.

``train_step`` is everything one batch does to the weights: the forward and backward pass (the
MAG-SD objective, or cross-entropy for the baseline), and at each optimizer update (every
``gradient_accumulation_steps`` batches, ``accelerator.sync_gradients``) the gradient clipping, the
optimizer step, the learning-rate schedule and the weight EMA. A training loop calls it once per
batch and does the rest (logging, checkpoints, evaluation) itself.
"""
import contextlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3

from ..errors import DivergedError
from ..evaluation.metrics import classification_metrics
from ..method.objective import MagSDObjective
from ..utils.seeds import seeded_generator
from .adversary import SourceAdversary, classifier_input
from .centres import FeatureCentres
from .checkpoint import TrainProgress

__all__ = ['NonFiniteLossError', 'TrainSetup', 'train_step', 'validate']


class NonFiniteLossError(DivergedError):
    """The loss became NaN or infinite: the run stops before any checkpoint takes the broken weights."""


@dataclass
class TrainSetup:
    """What a training update works on (prepared by accelerate) and how: objective, clipping, schedule, EMA."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[Scheduler] = None  # timm's, stepped per update (train.optim.create_schedule)
    objective: Optional[MagSDObjective] = None  # None: cross-entropy on the raw images (the baseline)
    ema: Optional[ModelEmaV3] = None
    clip_grad: Optional[float] = None
    label_smoothing: float = 0.  # of the baseline's cross-entropy
    class_weights: Optional[Sequence[float]] = None  # of the baseline's cross-entropy
    seed: int = 0  # with the global step, it draws the MAG-SD views: a resumed run draws the same ones
    adversary: Optional[SourceAdversary] = None  # trained against the source (train/adversary.py), in the optimizer
    total_steps: int = 1  # the run's batches: the adversary's reversal ramps up over them
    centres: Optional[FeatureCentres] = None  # WS-DAN's feature-centre loss (train/centres.py), MAG-SD only


def _raw_extra(setup: TrainSetup, caught: List[torch.Tensor], labels: torch.Tensor,
               sources: Optional[torch.Tensor], share: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The losses on the raw pass's pooled features (caught[0]): the source adversary's and the centre loss."""
    loss, parts = torch.zeros((), device=labels.device), {}
    if setup.adversary is not None:
        source_loss, source_parts = setup.adversary.loss(caught[0], labels, sources, share)
        loss, parts = loss + source_loss, parts | source_parts
    if setup.centres is not None:
        centre_loss, centre_parts = setup.centres.loss(caught[0], labels)
        loss, parts = loss + centre_loss, parts | centre_parts
    return loss, parts


def _loss(accelerator, setup: TrainSetup, images: torch.Tensor, labels: torch.Tensor,
          global_step: int, sources: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Forward and backward of one batch; the detached loss and its parts."""
    with contextlib.ExitStack() as stack:
        extra = None
        if setup.adversary is not None or setup.centres is not None:  # on the raw pass's pooled features
            caught = stack.enter_context(classifier_input(setup.model))
            share = global_step / max(setup.total_steps, 1)

            def extra():
                return _raw_extra(setup, caught, labels, sources, share)
        if setup.objective is not None:
            return setup.objective.backward(setup.model, images, labels, seeded_generator(setup.seed, global_step),
                                            accelerator.backward, extra).parts
        logits = setup.model(images)
        weight = torch.tensor(setup.class_weights, device=logits.device) if setup.class_weights is not None else None
        loss = F.cross_entropy(logits, labels, weight=weight, label_smoothing=setup.label_smoothing)
        extra_loss, parts = extra() if extra is not None else (0., {})
        accelerator.backward(loss + extra_loss)
        return {'loss': loss.detach(), 'accuracy': (logits.argmax(-1) == labels).float().mean(), **parts}


def train_step(accelerator, setup: TrainSetup, images: torch.Tensor, labels: torch.Tensor,
               progress: TrainProgress, sources: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Train on one batch (model in train mode); at an optimizer update also clip, step, schedule and EMA.
    sources: each film's source index, for the source adversary (TrainSetup.adversary)."""
    with accelerator.accumulate(setup.model, *([setup.adversary] if setup.adversary is not None else [])):
        parts = _loss(accelerator, setup, images, labels, progress.global_step, sources)
        loss = float(parts['loss'])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f'loss is {loss} at epoch {progress.epoch}, step {progress.global_step}: stopping; '
                'the last checkpoint is untouched (lower the learning rate or use bf16 instead of fp16).')
        if accelerator.sync_gradients:
            if setup.clip_grad is not None:
                accelerator.clip_grad_norm_(setup.model.parameters(), setup.clip_grad)
            setup.optimizer.step()
            setup.optimizer.zero_grad(set_to_none=True)
    progress.step_in_epoch += 1
    progress.global_step += 1
    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:  # fp16 skips overflowing steps
        progress.updates += 1
        if setup.scheduler is not None:
            setup.scheduler.step_update(progress.updates)
        if setup.ema is not None:
            setup.ema.update(accelerator.unwrap_model(setup.model), step=progress.updates)
    return {k: float(v) for k, v in parts.items()}


@torch.no_grad()
def validate(accelerator, model: torch.nn.Module, loader, class_names: Sequence[str]) -> Dict[str, object]:
    """Validate: one deterministic pass; logits and labels gathered over processes with exact sample counts; the metrics."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        logits = model(images)
        logits, labels = accelerator.gather_for_metrics((logits.float(), labels))
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLossError('the validation logits hold NaN or infinite values: the weights have diverged; '
                                     'stopping (lower the learning rate or use bf16 instead of fp16).')
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    return classification_metrics(torch.cat(all_logits), torch.cat(all_labels), class_names)
