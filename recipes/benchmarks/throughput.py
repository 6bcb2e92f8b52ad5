"""Suite `throughput`: images per second of MAG-SD training as the trainer runs it (its data path with
the preprocessing kept from the readability pass, accelerate, `train_step`, AdamW, channels_last),
per backbone, image size and number of frozen stages, on the train split of --data (or the bundled
sample); beside it the data path alone, with the preprocessing kept and with every film decoded and
resized again (what the trainer did before), so the share of the step that is not the network shows.
"""
import argparse
from typing import Any

import torch

from magsd_timm.utils.tables import markdown_table, shown_path

from .common import Step, create, interleaved_medians, meets_or_misses, synced

# images/s of the trainer's MAG-SD step on 2 CPU cores, batch 32, per (model, px, frozen stages): the documented
# 64 px ResNet-18 real-data command (from scratch: nothing frozen), and fine-tuning Lite0 at the paper's 224 px
THROUGHPUT_MODELS = ('magsd_resnet18', 'magsd_efficientnet_lite0')
THROUGHPUT_TARGETS = {('magsd_resnet18', 64, 0): 15., ('magsd_efficientnet_lite0', 224, 3): 4.}

def _endless_batches(args: argparse.Namespace, size: int, keep: bool) -> Any:
    """Training batches of the train split at one size, drawn with replacement for ever, as the trainer loads them."""
    from torch.utils.data import DataLoader, RandomSampler

    from magsd_timm.data.dataset import open_dataset
    from magsd_timm.data.transforms import build_transforms, resolve_cxr_data_config

    transform = build_transforms(resolve_cxr_data_config(input_size=(1, size, size)), train=True)
    dataset, _ = open_dataset(args.data and str(args.data), 'train', transform, augment_seed=0).readable(keep=keep)
    sampler = RandomSampler(dataset, replacement=True, num_samples=2 ** 31 - 1,
                            generator=torch.Generator().manual_seed(0))
    return iter(DataLoader(dataset, batch_size=args.batch_size, sampler=sampler))


def _trainer_step(args: argparse.Namespace, accelerator: Any, name: str, size: int, frozen: int) -> Step:
    """One batch through the trainer: its loader (preprocessing kept), accelerate's prepare and train_step."""
    from magsd_timm.method.objective import MagSDObjective
    from magsd_timm.train.checkpoint import TrainProgress
    from magsd_timm.train.loop import TrainSetup, train_step
    from magsd_timm.train.optim import create_optimizer, freeze_stages

    batches = _endless_batches(args, size, keep=True)
    model = create(name, args, channels_last=True)
    freeze_stages(model, frozen)
    model, optimizer = accelerator.prepare(model, create_optimizer(model, 'adamw', 3e-4, 0.9, 0.05))
    setup, progress = TrainSetup(model, optimizer, objective=MagSDObjective()), TrainProgress()
    model.train()

    def step() -> None:
        images, labels = next(batches)
        train_step(accelerator, setup, images.to(accelerator.device), labels.to(accelerator.device), progress)
    return synced(step, args)


def run(args: argparse.Namespace) -> str:
    """Images/s of the trainer's MAG-SD step per backbone, size and frozen stages, and of its data path alone."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == 'cpu', mixed_precision='bf16' if args.dtype == 'bfloat16' else 'no')
    cases = {(name, size, frozen): _trainer_step(args, accelerator, name, size, frozen)
             for name in args.throughput_models for size in args.throughput_sizes for frozen in args.throughput_freeze}
    data = {(size, keep): (lambda it: lambda: next(it))(_endless_batches(args, size, keep))
            for size in args.throughput_sizes for keep in (True, False)}
    seconds = interleaved_medians({**{str(k): v for k, v in cases.items()}, **{str(k): v for k, v in data.items()}},
                                   args.min_run_time, args.min_rounds)
    rate = {k: args.batch_size / seconds[str(k)] for k in [*cases, *data]}
    rows = []
    for key in cases:
        name, size, frozen = key
        target = THROUGHPUT_TARGETS.get(key)
        verdict = f'>= {target:g} ({meets_or_misses(rate[key] >= target)})' if target else ''
        not_network = seconds[str((size, True))] / seconds[str(key)]
        rows.append([f'`{name}`', size, frozen, f'{rate[key]:.1f}', f'{not_network:.0%}', verdict])
    for (size, keep) in data:
        rows.append([f"data path alone ({'preprocessing kept' if keep else 'every film decoded and resized again'})",
                     size, '', f'{rate[(size, keep)]:.1f}', '', ''])
    source = shown_path(args.data) if args.data else 'the bundled sample'
    return (f'MAG-SD training steps through the trainer (train split of {source}, batch {args.batch_size}, AdamW, '
            f'channels_last): images/s, and the share of the step its data path takes.\n\n'
            + markdown_table(['model', 'px', 'frozen stages', 'images/s', 'data path share', 'target'], rows))
