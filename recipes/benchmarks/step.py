"""Suite `step`: one full MAG-SD training step (raw pass, three attention-guided views, soft distance
loss, backward, SGD) against one plain training step of the backbone (eager, contiguous, in the same
precision: --dtype is the autocast of both), in the forms that may make it faster: channels_last, the
three views fused into one batch, back-propagation pass by pass (MagSDObjective.backward),
torch.compile (with --compile; it compiles for minutes on a CPU). The augmentations plus the loss are
also timed alone, as a share of the step.
"""
import argparse

import torch
import torch.nn.functional as F

from .common import Step, autocast, batch, create, interleaved_medians, isolated_peak_memory_mib, meets_or_misses, synced

STEP_TARGET = 2.6  # a MAG-SD training step over one plain eager contiguous step in the same precision
AUGMENT_LOSS_TARGET = 0.05  # share of the MAG-SD step spent in the augmentations and the loss

def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The paper's optimizer."""
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _plain_train_step(args: argparse.Namespace, channels_last: bool) -> Step:
    """One cross-entropy training step of the plain backbone, under the same autocast as the MAG-SD steps."""
    model = create(args.baseline, args, channels_last).train()
    optimizer = sgd(model)
    x, y = batch(args, channels_last)

    def step() -> None:
        with autocast(args):  # a ratio of steps in one precision: bf16 speeds both, not only MAG-SD
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return synced(step, args)


def magsd_train_step(args: argparse.Namespace, channels_last: bool, fused: bool, form: str) -> Step:
    """One MAG-SD training step, objective then SGD; form: 'joint', 'pass-by-pass' or 'compiled'."""
    from magsd_timm.method.augment import draw_uniforms
    from magsd_timm.method.objective import MagSDObjective

    model = create(args.model, args, channels_last).train()
    optimizer = sgd(model)
    x, y = batch(args, channels_last)
    objective = MagSDObjective(fused_views=fused)
    loss_of = torch.compile(objective.from_uniforms) if form == 'compiled' else objective.from_uniforms
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if form == 'pass-by-pass':
            with autocast(args):
                objective.backward(model, x, y, generator)
        else:
            uniforms = draw_uniforms(x.shape[0], generator, x.device)
            with autocast(args):
                loss = loss_of(model, x, y, uniforms).loss
            loss.backward()
        optimizer.step()
    return synced(step, args)


def _augment_and_loss(args: argparse.Namespace) -> Step:
    """The augmentations and the loss alone, on the attention and logits of a real raw pass."""
    from magsd_timm.method.augment import attention_views_from_uniforms, draw_uniforms
    from magsd_timm.method.losses import magsd_loss

    model = create(args.model, args).train()
    x, y = batch(args)
    with torch.no_grad(), autocast(args):
        logits, attention = model.forward_with_attention(x)
    view_logits = [logits.clone().requires_grad_() for _ in range(3)]
    logits.requires_grad_()
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        attention_views_from_uniforms(x, attention, draw_uniforms(x.shape[0], generator, x.device))
        magsd_loss(logits, view_logits, y)[0].backward()
    return synced(step, args)


def run(args: argparse.Namespace) -> str:
    """A MAG-SD training step in several forms against one plain step in the same precision: a Markdown table."""
    reference = f"plain, eager, contiguous {'bf16' if args.dtype == 'bfloat16' else 'fp32'}"
    cases = {
        reference: (_plain_train_step, (args, False)),
        'plain, channels_last': (_plain_train_step, (args, True)),
        'MAG-SD, eager, contiguous': (magsd_train_step, (args, False, False, 'joint')),
        'MAG-SD, channels_last': (magsd_train_step, (args, True, False, 'joint')),
        'MAG-SD, channels_last, fused views': (magsd_train_step, (args, True, True, 'joint')),
        'MAG-SD, channels_last, pass-by-pass backward': (magsd_train_step, (args, True, False, 'pass-by-pass')),
    }
    if args.compile:
        cases['MAG-SD, channels_last, torch.compile'] = (magsd_train_step, (args, True, False, 'compiled'))
    memory = {name: isolated_peak_memory_mib(make, step_args, args)
              for name, (make, step_args) in cases.items() if not name.endswith('torch.compile')}
    seconds = interleaved_medians({name: make(*step_args) for name, (make, step_args) in cases.items()},
                                   args.min_run_time, args.min_rounds)
    extra = interleaved_medians({'augment+loss': _augment_and_loss(args)}, max(1., args.min_run_time / 10),
                                 args.min_rounds)
    magsd = {k: v for k, v in seconds.items() if k.startswith('MAG-SD')}
    best = min(magsd, key=magsd.get)
    lines = ['| step | ms | ratio to the reference | target | peak MiB |', '|---|---|---|---|---|']
    for name, value in seconds.items():
        ratio = value / seconds[reference]
        target = f'<= {STEP_TARGET}x ({meets_or_misses(ratio <= STEP_TARGET)})' if name == best else ''
        peak = f'{memory[name]:.0f}' if name in memory else ''
        lines.append(f'| {name} | {1e3 * value:.1f} | {ratio:.3f}x | {target} | {peak} |')
    share = extra['augment+loss'] / seconds[best]
    lines.append(
        f"| augmentations + loss alone | {1e3 * extra['augment+loss']:.1f} | {share:.1%} of the fastest "
        f'MAG-SD step | <= {AUGMENT_LOSS_TARGET:.0%} ({meets_or_misses(share <= AUGMENT_LOSS_TARGET)}) | |')
    return '\n'.join(lines)
