"""The optimizer and the learning-rate schedule of a run, from timm's factories.

``create_optimizer`` gives the authors' SGD (``'paper'``: Nesterov momentum) or any optimizer timm
names. ``create_schedule`` gives a timm scheduler stepped once per optimizer update: the paper's
step schedule is timm's ``multistep`` (x0.1 at 50% and 83% of the run), ``cosine`` decays to zero,
``constant`` holds, and ``timm:NAME`` is any schedule of timm's factory with its defaults. Every
schedule starts with an optional linear warmup from one update's share of the learning rate.
``freeze_stages`` fixes the first stages of a backbone (timm's ``freeze``: no gradients, BatchNorm
statistics frozen too), the stages being the parameter groups of the model's ``group_matcher``.
"""
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from timm.models import group_parameters
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

__all__ = ['PAPER_MILESTONES', 'SCHEDULES', 'TIMM_SCHEDULES', 'create_optimizer', 'create_schedule', 'freeze_stages',
           'optimizer_problem']

SCHEDULES = ('step', 'cosine', 'constant')
# timm's schedules that step on updates alone ('plateau' steps on a validation metric, which the trainer's
# per-update schedule does not give it)
TIMM_SCHEDULES = ('cosine', 'tanh', 'step', 'multistep', 'poly', 'rsqrt', 'wsd', 'constant')
PAPER_MILESTONES: Tuple[float, ...] = (0.5, 0.83)  # fractions of the run where the paper's schedule drops x0.1


def _param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool,
                  head_lr_scale: float) -> List[Dict[str, Any]]:
    """Parameter groups: weight decay on all (the authors') or on weights alone (timm's), the head's lr scaled."""
    trained = [p for p in model.parameters() if p.requires_grad]  # frozen stages stay as they are
    groups = ([{'params': trained, 'weight_decay': weight_decay}] if decay_all
              else param_groups_weight_decay(model, weight_decay))
    if head_lr_scale == 1.:
        return groups
    head = {id(p) for p in model.get_classifier().parameters()}
    split = []
    for group in groups:
        body = [p for p in group['params'] if id(p) not in head]
        top = [p for p in group['params'] if id(p) in head]
        split += [dict(group, params=body)] if body else []
        split += [dict(group, params=top, lr_scale=head_lr_scale)] if top else []
    return split


def create_optimizer(model: torch.nn.Module, opt: str, lr: float, momentum: float, weight_decay: float,
                     head_lr_scale: float = 1.) -> torch.optim.Optimizer:
    """'paper': the authors' SGD with Nesterov momentum, all parameters decayed; else timm's optimizer of that name.

    head_lr_scale multiplies the classifier's learning rate: timm's lr_scale, which its schedules apply
    (create_schedule does so from the first update on).
    """
    if opt == 'paper':
        return torch.optim.SGD(_param_groups(model, weight_decay, True, head_lr_scale), lr=lr,
                               momentum=momentum, nesterov=True, weight_decay=weight_decay)
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum,
                               param_group_fn=lambda m: _param_groups(m, weight_decay, False, head_lr_scale))


def optimizer_problem(opt: str) -> Optional[str]:
    """Why the trainer cannot train with optimizer `opt` ('paper' or a timm name), or None when it can."""
    import timm.optim

    if opt == 'paper':
        return None
    if opt.lower() not in timm.optim.list_optimizers():
        return 'not \'paper\' nor a timm optimizer.'
    if timm.optim.get_optimizer_info(opt.lower()).second_order:
        return 'needs second-order gradients (backward with create_graph), which the trainer does not compute.'
    try:  # some need packages or devices that are not here (bitsandbytes, apex, ...): say so before any data is read
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # advice about optional packages, given again when the run creates it
            create_optimizer_v2([torch.nn.Parameter(torch.zeros(1))], opt=opt, lr=1e-3)
    except (ImportError, RuntimeError, ValueError, AssertionError, TypeError) as e:
        return f'cannot be created here ({type(e).__name__}: {" ".join(str(e).split())[:200]}).'
    return None


def create_schedule(optimizer: torch.optim.Optimizer, sched: str, epochs: int, updates_per_epoch: int,
                    warmup_epochs: float = 0.) -> Scheduler:
    """A timm scheduler for `sched` (see SCHEDULES, or timm:NAME), to step with step_update(updates done)."""
    name = sched.removeprefix('timm:') if sched.startswith('timm:') else {'step': 'multistep'}.get(sched, sched)
    if sched not in SCHEDULES and (not sched.startswith('timm:') or name not in TIMM_SCHEDULES):
        raise ValueError(f"Unknown schedule '{sched}': choose {', '.join(SCHEDULES)} or timm:NAME with NAME one of "
                         f"{', '.join(TIMM_SCHEDULES)}.")
    warmup_updates = warmup_epochs * updates_per_epoch
    lr = optimizer.param_groups[0]['lr']
    kwargs = dict(decay_milestones=[m * epochs for m in PAPER_MILESTONES], decay_rate=0.1) if sched == 'step' else {}
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=name, num_epochs=epochs, warmup_epochs=warmup_epochs,
        warmup_lr=lr / max(warmup_updates, 1), min_lr=0., step_on_epochs=False, updates_per_epoch=updates_per_epoch,
        **kwargs)
    scheduler.step_update(0)  # the first update's rates, lr_scale applied, before any update
    return scheduler


def freeze_stages(model: torch.nn.Module, stages: int, grouped_by: Optional[torch.nn.Module] = None,
                  prefix: str = '') -> List[str]:
    """Freeze the model's first `stages` parameter groups (stem first) and their BatchNorm statistics; their modules.

    grouped_by: a model whose group_matcher defines the stages (an MA-Net, for its plain backbone), its
    parameter names mapped onto this model's by removing prefix.
    """
    if stages <= 0:
        return []
    reference = grouped_by if grouped_by is not None else model
    groups = group_parameters(reference, reference.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    if stages > len(ordered) - 2:  # MA-Net's attention and classifier, or a plain model's last stage and head
        raise ValueError(f'--freeze-stages {stages}: at most {len(ordered) - 2} of the model\'s {len(ordered)} parameter '
                         'groups can be frozen (freezing more would leave nothing but the head to train).')
    names = [n[len(prefix):] for group in ordered[:stages] for n in group if n.startswith(prefix)]
    own = {n for n, _ in model.named_parameters()}
    if not names or not set(names) <= own:
        raise ValueError(f'--freeze-stages: the stages do not name parameters of {type(model).__name__}.')
    modules = sorted({n.rsplit('.', 1)[0] for n in names})
    from timm.utils import freeze

    freeze(model, modules)  # timm's: requires_grad off, BatchNorm2d -> FrozenBatchNorm2d
    return modules
