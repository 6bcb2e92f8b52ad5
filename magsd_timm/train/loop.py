"""One training epoch and one evaluation pass, the way accelerate's examples write them."""
import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..console import DivergedError
from ..metrics import classification_metrics
from ..objective import MagSDObjective
from .checkpoint import TrainProgress

__all__ = ['NonFiniteLossError', 'evaluate', 'lr_factor', 'train_one_epoch']


class NonFiniteLossError(DivergedError):
    """The loss became NaN or infinite: the run stops before any checkpoint takes the broken weights."""


def lr_factor(schedule: str, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warmup, then 'step' (x0.1 at 50% and 83%, the paper's),
    'cosine' (to zero at the end) or 'constant'."""
    if schedule not in ('step', 'cosine', 'constant'):
        raise ValueError(f"Unknown schedule '{schedule}': choose step, cosine or constant.")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == 'step':
            return 0.1 ** sum(step >= int(total_steps * m) for m in (0.5, 0.83))
        if schedule == 'cosine':
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.)))
        return 1.
    return factor


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
        clip_grad: Optional[float] = None,
        class_weights: Optional[Sequence[float]] = None,
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
                weight = torch.tensor(class_weights, device=logits.device) if class_weights is not None else None
                loss = F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)
                accelerator.backward(loss)
                parts = {'loss': loss.detach(), 'accuracy': (logits.argmax(-1) == labels).float().mean()}
            if not math.isfinite(loss.item()):
                raise NonFiniteLossError(
                    f'loss is {loss.item()} at epoch {progress.epoch}, step {progress.global_step}: stopping; '
                    'the last checkpoint is untouched (lower the learning rate or use bf16 instead of fp16).')
            if clip_grad is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), clip_grad)
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
