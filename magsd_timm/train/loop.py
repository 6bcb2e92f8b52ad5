"""One training epoch and one evaluation pass, the way accelerate's examples write them."""
import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..metrics import classification_metrics
from ..objective import MagSDObjective
from .checkpoint import TrainProgress

__all__ = ['NonFiniteLossError', 'evaluate', 'train_one_epoch']


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops before any checkpoint takes the broken weights."""


def _step_generator(seed: int, global_step: int) -> torch.Generator:
    """The augmentation randomness of one step: a function of the seed and the step, so resumes repeat it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + global_step)


def train_one_epoch(
        accelerator,
        model: torch.nn.Module,
        loader,
        optimizer: torch.optim.Optimizer,
        progress: TrainProgress,
        objective: Optional[MagSDObjective],
        seed: int,
        on_step: Optional[Callable[[Dict[str, float]], None]] = None,
        label_smoothing: float = 0.,
) -> List[Dict[str, torch.Tensor]]:
    """Train over loader (already advanced to progress.step_in_epoch); objective None is plain cross-entropy."""
    model.train()
    logged = []
    for images, labels in loader:
        with accelerator.accumulate(model):
            if objective is not None:
                out = objective.backward(
                    model, images, labels, _step_generator(seed, progress.global_step), accelerator.backward)
                loss, parts = out.loss, out.parts
            else:
                logits = model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
                accelerator.backward(loss)
                parts = {'loss': loss.detach(), 'accuracy': (logits.argmax(-1) == labels).float().mean()}
            if not math.isfinite(loss.item()):
                raise NonFiniteLossError(
                    f'loss is {loss.item()} at epoch {progress.epoch}, step {progress.global_step}: stopping; '
                    'the last checkpoint is untouched (lower the learning rate or use bf16 instead of fp16).')
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        progress.step_in_epoch += 1
        progress.global_step += 1
        logged.append(parts)
        if on_step is not None:
            on_step({k: float(v) for k, v in parts.items()})
    return logged


@torch.no_grad()
def evaluate(accelerator, model: torch.nn.Module, loader, class_names: Sequence[str]) -> Dict[str, object]:
    """One deterministic pass; logits and labels gathered over processes with exact sample counts."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        logits = model(images)
        logits, labels = accelerator.gather_for_metrics((logits.float(), labels))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    return classification_metrics(torch.cat(all_logits), torch.cat(all_labels), class_names)
