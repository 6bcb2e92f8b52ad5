#!/usr/bin/env python3
"""Train MA-Net with the MAG-SD objective (or a plain backbone with cross-entropy) using accelerate.

    accelerate launch recipes/train.py                          # magsd_resnet18 on the bundled sample, CPU ok
    accelerate launch recipes/train.py --model magsd_resnet50 --data out/cxr --epochs 150 --pretrained
    accelerate launch recipes/train.py --resume runs/magsd      # continue from the last checkpoint

Output folder: checkpoints/step_* (accelerate state, atomic), best/ and final/ (timm Hub format:
model.safetensors + config.json with label names; best/ also a model card draft, README.md),
args.yaml, summary.csv, eval_best.json and eval_best.md (the best checkpoint's validation report),
curves.png, confusion_matrix.png, and TensorBoard logs when tensorboard is installed.
"""
import argparse
import csv
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, is_tensorboard_available, set_seed
from timm.models import save_for_hf
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import magsd_timm  # noqa: F401  (registers the magsd_* models)
from magsd_timm.data.dataset import BalancedSampler, open_dataset
from magsd_timm.data.transforms import AUGMENTATIONS, build_transforms, resolve_cxr_data_config
from magsd_timm.objective import MagSDObjective
from magsd_timm.train.checkpoint import TrainProgress, latest_checkpoint, save_checkpoint
from magsd_timm.train.loop import NonFiniteLossError, evaluate, lr_factor, train_one_epoch
from magsd_timm.hub.cards import TrainingRun, render_model_card
from magsd_timm.metrics import metrics_markdown
from magsd_timm.plots import plot_confusion_matrix, plot_curves

BEST_METRICS = ('macro_f1', 'accuracy')


def _parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='magsd_resnet18', help='magsd_* model (or, with --method baseline, any)')
    parser.add_argument('--method', default='magsd', choices=['magsd', 'baseline'],
                        help='baseline: the plain backbone with cross-entropy, for ablations')
    parser.add_argument('--model-kwargs', type=json.loads, default={}, help='JSON of extra model arguments')
    parser.add_argument('--pretrained', action='store_true', help='start from pretrained (backbone) weights')
    parser.add_argument('--data', default=None, help='data source (default: the bundled sample)')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--augment', default='mild', choices=AUGMENTATIONS)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--opt', default='paper', help="'paper' (SGD Nesterov) or any timm optimizer name (adamw, ...)")
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--momentum', type=float, default=0.9)
    parser.add_argument('--weight-decay', type=float, default=5e-4)
    parser.add_argument('--sched', default='step',
                        help="step (the paper's x0.1 at 50%% and 83%% of the run), cosine, constant, "
                             "or timm:NAME for timm's scheduler factory (timm:cosine, timm:tanh, timm:poly, ...)")
    parser.add_argument('--warmup-epochs', type=float, default=0., help='linear learning-rate warmup')
    parser.add_argument('--clip-grad', type=float, default=None, help='clip the gradient norm to this value')
    parser.add_argument('--model-ema', type=float, default=None, metavar='DECAY',
                        help='keep an EMA of the weights (e.g. 0.999); it is evaluated and exported')
    parser.add_argument('--label-smoothing', type=float, default=0., help='baseline cross-entropy only')
    parser.add_argument('--balance', default='none', choices=['none', 'sampler', 'loss'],
                        help='class balance: draw classes equally often, or weight the cross-entropy')
    parser.add_argument('--grad-accum', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=0)
    parser.add_argument('--output', type=Path, default=Path('runs/magsd'))
    parser.add_argument('--resume', action='store_true', help='continue from the last checkpoint in --output')
    parser.add_argument('--checkpoint-every', type=int, default=0, help='also checkpoint every N steps')
    parser.add_argument('--keep-checkpoints', type=int, default=2)
    parser.add_argument('--best-metric', default='macro_f1', choices=BEST_METRICS)
    parser.add_argument('--cpu', action='store_true', help='train on the CPU (Accelerator(cpu=True))')
    parser.add_argument('--mixed-precision', default=None, choices=['no', 'bf16', 'fp16'],
                        help="default: accelerate's config")
    args = parser.parse_args(argv)
    for name in ('batch_size', 'epochs', 'img_size', 'grad_accum', 'keep_checkpoints'):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0:
        parser.error('--lr must be > 0')
    if args.sched not in ('step', 'cosine', 'constant') and not args.sched.startswith('timm:'):
        parser.error(f"--sched {args.sched}: choose step, cosine, constant or timm:NAME")
    if args.method == 'magsd' and not args.model.startswith('magsd_'):
        parser.error(f"--model {args.model}: the MAG-SD method needs a magsd_* model (or use --method baseline)")
    if args.output.exists() and any(args.output.iterdir()) and not args.resume:
        parser.error(f'--output {args.output} is not empty: pass --resume to continue it, or choose another folder')
    return args


def _create_model(args: argparse.Namespace, num_classes: int, meta: bool = False) -> torch.nn.Module:
    """The model to train; meta: only its structure and config (no weights, nothing downloaded)."""
    name = args.model
    if args.method == 'baseline' and name.startswith('magsd_'):
        name = timm.create_model(name, device='meta').backbone_name  # the MA-Net's own backbone
    kwargs = dict(args.model_kwargs, num_classes=num_classes, in_chans=1)
    if meta:
        return timm.create_model(name, device='meta', **kwargs)
    return timm.create_model(name, pretrained=args.pretrained, **kwargs)


def _write_summary(path: Path, rows: List[Dict[str, Any]]) -> None:
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k != 'epoch', k))
    with path.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _score(metrics: Dict[str, Any], name: str) -> float:
    value = float(metrics[name])
    return value if math.isfinite(value) else float('-inf')


def main(argv: Optional[List[str]] = None) -> int:
    """Train, evaluate every epoch, checkpoint, and export the best and final models."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with='tensorboard' if is_tensorboard_available() else None, project_dir=str(args.output))
    set_seed(args.seed)
    command = 'accelerate launch recipes/train.py ' + shlex.join(sys.argv[1:] if argv is None else argv)

    data_config = resolve_cxr_data_config(_create_model(args, 1, meta=True), img_size=args.img_size)
    train_set = open_dataset(args.data, 'train', build_transforms(data_config, train=True, augment=args.augment),
                             seed=args.seed, augment_seed=args.seed)
    val_set = open_dataset(args.data, 'validation', build_transforms(data_config), seed=args.seed)
    class_names = train_set.class_names
    model = _create_model(args, len(class_names))
    if args.opt == 'paper':
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                                    weight_decay=args.weight_decay)
    else:
        optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                        momentum=args.momentum)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size / args.grad_accum)  # over all processes
    if args.sched.startswith('timm:'):  # timm's factory, stepped per update
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=args.sched[len('timm:'):], num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
            step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(
            args.sched, steps_per_epoch * args.epochs, round(args.warmup_epochs * steps_per_epoch)))
    ema = ModelEmaV3(model, decay=args.model_ema) if args.model_ema else None
    labels = train_set.labels()
    counts = [max(labels.count(k), 1) for k in range(len(class_names))]
    class_weights = tuple(len(labels) / (len(counts) * c) for c in counts) if args.balance == 'loss' else None
    sampler = BalancedSampler(labels, args.seed) if args.balance == 'sampler' else None
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers)
    timm_scheduler = args.sched.startswith('timm:')
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    progress = TrainProgress()
    accelerator.register_for_checkpointing(progress)
    if timm_scheduler:
        accelerator.register_for_checkpointing(scheduler)
    else:
        scheduler = accelerator.prepare(scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    objective = MagSDObjective(class_weights=class_weights) if args.method == 'magsd' else None

    output = args.output
    checkpoints = output / 'checkpoints'
    summary_rows: List[Dict[str, Any]] = []
    if args.resume:
        last = latest_checkpoint(checkpoints)
        if last is None:
            accelerator.print(f'--resume: no checkpoint in {checkpoints}, starting afresh')
        else:
            accelerator.load_state(str(last))
            accelerator.print(f'resumed from {last} (epoch {progress.epoch}, step {progress.global_step})')
        if (output / 'summary.json').exists():
            summary_rows = [r for r in json.loads((output / 'summary.json').read_text()) if r['epoch'] < progress.epoch]
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / 'args.yaml').write_text(yaml.safe_dump(dict(recorded, command=command), sort_keys=False))

    accelerator.init_trackers('magsd', config={k: str(v) for k, v in vars(args).items()})
    bar = tqdm(total=len(train_loader) * args.epochs, initial=progress.global_step, unit='batch',
               disable=not accelerator.is_local_main_process)
    clock = [time.perf_counter()]

    def on_step(parts: Dict[str, float]) -> None:
        if ema is not None:
            ema.update(unwrapped, step=progress.global_step)
        now = time.perf_counter()
        images_per_s = args.batch_size * args.grad_accum * accelerator.num_processes / max(now - clock[0], 1e-9)
        clock[0] = now
        bar.update()
        bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                        img_s=f'{images_per_s:.1f}')
        accelerator.log({f'train/{k}': v for k, v in parts.items()} | {'train/images_per_s': images_per_s},
                        step=progress.global_step)
        if timm_scheduler:
            # global optimizer updates, the unit of steps_per_epoch (accelerate counts the LambdaLR alike)
            scheduler.step_update(progress.global_step * accelerator.num_processes // args.grad_accum)
        else:
            scheduler.step()  # accelerate's wrapper only steps when the optimizer did
        if args.checkpoint_every and progress.global_step % args.checkpoint_every == 0 and accelerator.sync_gradients:
            save_checkpoint(accelerator, checkpoints, progress.global_step, args.keep_checkpoints)

    unwrapped = accelerator.unwrap_model(model)
    exported = ema.module if ema is not None else unwrapped
    try:
        while progress.epoch < args.epochs:
            train_loader.set_epoch(progress.epoch)
            train_set.set_epoch(progress.epoch)
            loader = accelerator.skip_first_batches(train_loader, progress.step_in_epoch)
            logged = train_one_epoch(accelerator, model, loader, optimizer, progress, objective, args.seed, on_step,
                                     args.label_smoothing, args.clip_grad, class_weights)
            metrics = evaluate(accelerator, ema.module if ema is not None else model, val_loader, class_names)
            row = {'epoch': progress.epoch, 'lr': optimizer.param_groups[0]['lr'],
                   **{f'train_{k}': sum(float(p[k]) for p in logged) / max(len(logged), 1) for k in (logged[0] if logged else {})},
                   **{f'val_{k}': metrics[k] for k in ('accuracy', 'macro_f1')}}
            summary_rows.append(row)
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            improved = progress.best_metric is None or _score(metrics, args.best_metric) > progress.best_metric
            if improved:
                progress.best_metric = _score(metrics, args.best_metric)
            accelerator.log({f'val/{k}': row[f'val_{k}'] for k in ('accuracy', 'macro_f1')}, step=progress.global_step)
            if accelerator.is_main_process:
                if improved:
                    _export_best(output, exported, metrics, row['epoch'], class_names, recorded, command)
                (output / 'summary.json').write_text(json.dumps(summary_rows, indent=2))
                _write_summary(output / 'summary.csv', summary_rows)
                plot_curves(summary_rows, output / 'curves.png')
            bar.write(f"epoch {row['epoch']}: " + ', '.join(f'{k} {v:.4f}' for k, v in row.items() if k != 'epoch'))
            save_checkpoint(accelerator, checkpoints, progress.global_step, args.keep_checkpoints)
    except NonFiniteLossError as e:
        accelerator.print(f'train: {e}')
        return 3
    bar.close()
    _check_ranks_in_sync(accelerator, unwrapped)
    if accelerator.is_main_process:
        save_for_hf(exported, output / 'final', safe_serialization=True, model_config={'label_names': list(class_names)})
        accelerator.print(f'done: {output}. Push the best checkpoint to the Hub with:\n'
                          f'  magsd-hub push-model {output} ORG/NAME')
    accelerator.end_training()
    return 0


def _check_ranks_in_sync(accelerator, model: torch.nn.Module) -> None:
    """Every process must end with the same weights; say so, or stop with an error."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    sums = accelerator.gather(checksum[None].to(accelerator.device))
    if not torch.all(sums == sums[0]):
        raise RuntimeError(f'processes ended with different weights (checksums {sums.tolist()})')
    accelerator.print(f'{accelerator.num_processes} process(es) in sync: weight checksum {float(sums[0]):.6f}')


def _export_best(output: Path, model: torch.nn.Module, metrics: Dict[str, Any], epoch: int,
                 class_names: List[str], args: Dict[str, Any], command: str) -> None:
    """The best checkpoint in timm's Hub format with a model card draft, and its evaluation report."""
    best = output / 'best'
    save_for_hf(model, best, safe_serialization=True, model_config={'label_names': list(class_names)})
    (best / 'README.md').write_text(
        render_model_card(model, TrainingRun(best, args, metrics, epoch, command), repo_id='ORG/NAME'))
    (output / 'eval_best.json').write_text(json.dumps(dict(metrics, epoch=epoch), indent=2))
    overall, per_class = metrics_markdown(metrics, class_names)
    (output / 'eval_best.md').write_text(
        f'# Validation report, best epoch {epoch}\n\n| metric | value |\n|---|---|\n{overall}\n\n{per_class}\n')
    plot_confusion_matrix(metrics['confusion_matrix'], class_names, output / 'confusion_matrix.png')


if __name__ == '__main__':
    sys.exit(main())
