"""Suite `model`: MA-Net inference and one forward+backward against the plain timm backbone with its
own classifier, same input, same threads.
"""
import argparse

import torch
import torch.nn.functional as F

from .common import Step, autocast, batch, create, interleaved_medians, isolated_peak_memory_mib, meets_or_misses, synced

MODEL_TARGET = 1.10  # MA-Net over the plain backbone, for inference and for forward+backward

def _model_step(name: str, mode: str, args: argparse.Namespace) -> Step:
    """One inference or one forward+backward of a model."""
    model = create(name, args).train(mode != 'inference')
    x, y = batch(args)

    def infer() -> None:
        with torch.inference_mode(), autocast(args):
            model(x)

    def forward_backward() -> None:
        with autocast(args):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return synced(infer if mode == 'inference' else forward_backward, args)


def run(args: argparse.Namespace) -> str:
    """MA-Net against its plain backbone, inference and forward+backward: a Markdown table."""
    names, modes = (args.baseline, args.model), ('inference', 'forward+backward')
    memory = {(name, mode): isolated_peak_memory_mib(_model_step, (name, mode, args), args)
              for mode in modes for name in names}
    lines = [
        f'| case | {args.baseline} (ms) | {args.model} (ms) | ratio | target | peak MiB '
        f'({args.baseline} / {args.model}) |',
        '|---|---|---|---|---|---|',
    ]
    for mode in modes:
        seconds = interleaved_medians({name: _model_step(name, mode, args) for name in names}, args.min_run_time,
                                       args.min_rounds)
        ratio = seconds[args.model] / seconds[args.baseline]
        lines.append(
            f'| {mode} | {1e3 * seconds[args.baseline]:.1f} | {1e3 * seconds[args.model]:.1f} | {ratio:.3f}x | '
            f'<= {MODEL_TARGET:.2f}x ({meets_or_misses(ratio <= MODEL_TARGET)}) | '
            f'{memory[args.baseline, mode]:.0f} / {memory[args.model, mode]:.0f} |')
    return '\n'.join(lines)
