"""Suite `trainer`: one epoch of the bundled sample through the trainer's loop (accelerate, gradient
accumulation context, NaN guard, logging hooks) against a bare loop of the same objective.
"""
import argparse

import torch

from .common import Step, create, interleaved_medians, meets_or_misses
from .step import sgd

TRAINER_TARGET = 0.95  # trainer images/s over bare-loop images/s


def run(args: argparse.Namespace) -> str:
    """Images/s of an epoch of magsd_timm.train's train_step (accelerate) against a bare loop, same data and model."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from magsd_timm.data.dataset import open_dataset
    from magsd_timm.data.transforms import build_transforms, resolve_cxr_data_config
    from magsd_timm.method.objective import MagSDObjective
    from magsd_timm.train.checkpoint import TrainProgress
    from magsd_timm.train.loop import TrainSetup, train_step

    torch.set_num_threads(args.threads)
    transform = build_transforms(resolve_cxr_data_config(input_size=(1, args.img_size, args.img_size)), train=True)
    dataset = open_dataset(None, 'train', transform, augment_seed=0)
    objective = MagSDObjective()

    def bare() -> Step:
        model = create(args.model, args, channels_last=True).train()
        optimizer, generator = sgd(model), torch.Generator().manual_seed(0)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)

        def epoch() -> None:
            for images, labels in loader:
                images = images.to(args.device).contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                objective.backward(model, images, labels.to(args.device), generator)
                optimizer.step()
        return epoch

    def trainer() -> Step:
        accelerator = Accelerator(cpu=args.device == 'cpu')
        model = create(args.model, args, channels_last=True)
        optimizer = sgd(model)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        setup, progress = TrainSetup(model, optimizer, objective=objective), TrainProgress()

        def epoch() -> None:
            model.train()
            for images, labels in loader:
                train_step(accelerator, setup, images, labels, progress)
        return epoch

    seconds = interleaved_medians({'bare objective loop': bare(), 'magsd_timm trainer loop': trainer()},
                                   args.min_run_time, args.min_rounds)
    per_second = {k: len(dataset) / v for k, v in seconds.items()}
    ratio = per_second['magsd_timm trainer loop'] / per_second['bare objective loop']
    lines = ['| loop (one epoch of the bundled sample) | images/s | ratio | target |', '|---|---|---|---|']
    for name, value in per_second.items():
        target = f'>= {TRAINER_TARGET}x ({meets_or_misses(ratio >= TRAINER_TARGET)})' if 'trainer' in name else ''
        lines.append(f"| {name} | {value:.2f} | {value / per_second['bare objective loop']:.3f}x | {target} |")
    return '\n'.join(lines)
