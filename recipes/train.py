#!/usr/bin/env python3
"""Train MA-Net with the MAG-SD objective (or a plain backbone with cross-entropy) using accelerate.

    accelerate launch recipes/train.py                          # magsd_resnet18 on the bundled sample, CPU ok
    accelerate launch recipes/train.py --model magsd_resnet50 --data out/cxr --epochs 150 --pretrained
    accelerate launch recipes/train.py --output runs/magsd --resume   # continue from the last checkpoint

Output folder: checkpoints/step_* (accelerate state, atomic), best/ and final/ (timm Hub format:
model.safetensors + config.json with label names, the trained input size and a training record;
best/ also a model card draft, README.md), args.yaml, summary.csv, eval_best.json and eval_best.md
(the best checkpoint's validation report), curves.png, confusion_matrix.png, skipped.json (images
left out: duplicates, label conflicts, unreadable files), and TensorBoard logs when tensorboard is
installed. Every image is decoded once before the first step; one run at a time may write an output.
"""
import argparse
import contextlib
import csv
import io
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import timm
import timm.optim
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, is_tensorboard_available, set_seed
from timm.models import save_for_hf
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import magsd_timm  # noqa: F401  (registers the magsd_* models)
from magsd_timm.console import (
    EXIT_CODES, BadInputError, add_traceback_flag, display, json_object, number, run_command,
)
from magsd_timm.data.dataset import BalancedSampler, CXRDataset, open_dataset
from magsd_timm.data.transforms import AUGMENTATIONS, build_transforms, resolve_cxr_data_config
from magsd_timm.models import close_matches
from magsd_timm.models.config import MAX_INPUT_SIDE, MIN_INPUT_SIDE
from magsd_timm.objective import MagSDObjective
from magsd_timm.outputs import atomic_folder, exclusive_lock, recover_folder, strict_json, write_text_atomic
from magsd_timm.train.checkpoint import TrainProgress, latest_checkpoint, remove_partial_checkpoints, save_checkpoint
from magsd_timm.train.loop import evaluate, lr_factor, train_one_epoch
from magsd_timm.hub.cards import TrainingRun, render_model_card
from magsd_timm.metrics import metrics_markdown
from magsd_timm.plots import plot_confusion_matrix, plot_curves

BEST_METRICS = ('macro_f1', 'accuracy')
SCHEDULES = ('step', 'cosine', 'constant')
TIMM_SCHEDULES = ('cosine', 'tanh', 'step', 'multistep', 'plateau', 'poly', 'rsqrt', 'constant')
# what a resumed run must share with the run that wrote its checkpoints: they shape the saved state
RESUME_KEYS = ('model', 'model_kwargs', 'method', 'data', 'img_size', 'opt', 'sched', 'model_ema')


def _parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='magsd_resnet18', help='magsd_* model (or, with --method baseline, any)')
    parser.add_argument('--method', default='magsd', choices=['magsd', 'baseline'],
                        help='baseline: the plain backbone with cross-entropy, for ablations')
    parser.add_argument('--model-kwargs', type=json_object, default={}, help='JSON object of extra model arguments')
    parser.add_argument('--pretrained', action='store_true', help='start from pretrained (backbone) weights')
    parser.add_argument('--data', default=None, help='data source (default: the bundled sample)')
    parser.add_argument('--img-size', type=number(int, MIN_INPUT_SIDE, MAX_INPUT_SIDE), default=224)
    parser.add_argument('--augment', default='mild', choices=AUGMENTATIONS)
    parser.add_argument('--batch-size', type=number(int, 1), default=8)
    parser.add_argument('--epochs', type=number(int, 1), default=4)
    parser.add_argument('--opt', default='paper', help="'paper' (SGD Nesterov) or any timm optimizer name (adamw, ...)")
    parser.add_argument('--lr', type=number(float, 0, low_open=True), default=1e-3)
    parser.add_argument('--momentum', type=number(float, 0, 1, high_open=True), default=0.9)
    parser.add_argument('--weight-decay', type=number(float, 0), default=5e-4)
    parser.add_argument('--sched', default='step',
                        help="step (the paper's x0.1 at 50%% and 83%% of the run), cosine, constant, "
                             "or timm:NAME for timm's scheduler factory (timm:cosine, timm:tanh, timm:poly, ...)")
    parser.add_argument('--warmup-epochs', type=number(float, 0), default=0., help='linear learning-rate warmup')
    parser.add_argument('--clip-grad', type=number(float, 0, low_open=True), default=None,
                        help='clip the gradient norm to this value (> 0)')
    parser.add_argument('--model-ema', type=number(float, 0, 1, low_open=True, high_open=True), default=None,
                        metavar='DECAY', help='keep an EMA of the weights (0 < DECAY < 1, e.g. 0.999); it is '
                                              'evaluated and exported')
    parser.add_argument('--label-smoothing', type=number(float, 0, 1, high_open=True), default=0.,
                        help='baseline cross-entropy only')
    parser.add_argument('--balance', default='none', choices=['none', 'sampler', 'loss'],
                        help='class balance: draw classes equally often, or weight the cross-entropy')
    parser.add_argument('--grad-accum', type=number(int, 1), default=1)
    parser.add_argument('--seed', type=number(int, 0, 2 ** 32 - 1), default=0)
    parser.add_argument('--workers', type=number(int, 0), default=0)
    parser.add_argument('--output', type=Path, default=Path('runs/magsd'))
    parser.add_argument('--resume', action='store_true', help='continue from the last checkpoint in --output')
    parser.add_argument('--checkpoint-every', type=number(int, 0), default=0,
                        help='also checkpoint every N steps (0: at epoch ends only)')
    parser.add_argument('--keep-checkpoints', type=number(int, 1), default=2)
    parser.add_argument('--best-metric', default='macro_f1', choices=BEST_METRICS)
    parser.add_argument('--cpu', action='store_true', help='train on the CPU (Accelerator(cpu=True))')
    parser.add_argument('--mixed-precision', default=None, choices=['no', 'bf16', 'fp16'],
                        help="default: accelerate's config")
    add_traceback_flag(parser)
    args = parser.parse_args(argv)
    if args.sched not in SCHEDULES and args.sched.removeprefix('timm:') not in TIMM_SCHEDULES:
        parser.error(f"--sched {args.sched}: choose {', '.join(SCHEDULES)} or timm:NAME with NAME one of "
                     f"{', '.join(TIMM_SCHEDULES)}")
    if args.sched not in SCHEDULES and not args.sched.startswith('timm:'):
        parser.error(f'--sched {args.sched}: did you mean timm:{args.sched}?')
    if args.opt != 'paper' and args.opt.lower() not in timm.optim.list_optimizers():
        parser.error(f"--opt {args.opt}: not 'paper' nor a timm optimizer."
                     f"{close_matches(args.opt.lower(), timm.optim.list_optimizers())}")
    if not timm.is_model(args.model.split('.')[0]):
        parser.error(f'--model {args.model}: unknown model.{close_matches(args.model, timm.list_models())}')
    if args.method == 'magsd' and not args.model.startswith('magsd_'):
        parser.error(f"--model {args.model}: the MAG-SD method needs a magsd_* model (or use --method baseline)")
    return args


def _create_model(args: argparse.Namespace, num_classes: int, meta: bool = False) -> torch.nn.Module:
    """The model to train; meta: only its structure and config (no weights, nothing downloaded)."""
    name = args.model
    if args.method == 'baseline' and name.startswith('magsd_'):
        name = timm.create_model(name, device='meta').backbone_name  # the MA-Net's own backbone
    kwargs = dict(args.model_kwargs, num_classes=num_classes, in_chans=1)
    try:
        if meta:
            return timm.create_model(name, device='meta', **kwargs)
        return timm.create_model(name, pretrained=args.pretrained, **kwargs)
    except TypeError as e:  # a plain timm model refusing an argument it does not take
        raise BadInputError(f'--model-kwargs {json.dumps(args.model_kwargs)} do not fit {name} ({e}).') from e


def _write_summary(path: Path, rows: List[Dict[str, Any]]) -> None:
    buffer = io.StringIO()
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k != 'epoch', k))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue(), 'run summary')


def _score(metrics: Dict[str, Any], name: str) -> float:
    value = float(metrics[name])
    return value if math.isfinite(value) else float('-inf')


def _claim_output(accelerator: Accelerator, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    """Hold the output's lock for the run (the main process), refuse a used output, clean what killed runs left."""
    error = None
    if accelerator.is_main_process:
        try:
            stack.enter_context(exclusive_lock(args.output, 'training run'))
            if args.output.exists() and any(args.output.iterdir()) and not args.resume:
                raise BadInputError(f'--output {display(args.output)} is not empty: pass --resume to continue it, or '
                                    'choose another folder.')
            notes = [*recover_folder(args.output / 'best'), *recover_folder(args.output / 'final')]
            notes += [f'removed {display(p)}, left by an interrupted run'
                      for p in remove_partial_checkpoints(args.output / 'checkpoints')]
            for note in notes:
                accelerator.print(f'train: {note}')
        except BadInputError as e:
            error = str(e)
    error = broadcast_object_list([error])[0]  # every process stops when the main one cannot have the output
    if error:
        raise BadInputError(error)


def _check_resume(args: argparse.Namespace, recorded: Dict[str, Any]) -> None:
    """Refuse to resume a run whose checkpoints another model, data or optimizer wrote."""
    path = args.output / 'args.yaml'
    if not path.is_file():
        return
    before = yaml.safe_load(path.read_text()) or {}
    changed = [f'{key}: {before.get(key)!r} then, {recorded.get(key)!r} now' for key in RESUME_KEYS
               if key in before and before.get(key) != recorded.get(key)]
    if changed:
        raise BadInputError(f'--resume: {display(args.output)} was trained with other settings ({"; ".join(changed)}); '
                            'resume with the same ones, or start a new --output.')


def _checked_split(dataset: CXRDataset, split: str, accelerator: Accelerator) -> CXRDataset:
    """The split without the images that cannot be read or are too small (each said), before any step runs."""
    problems = dataset.check_images()
    for _, why in problems[:10]:
        accelerator.print(f'train: skipped from the {split} split: {display(why)}')
    if len(problems) > 10:
        accelerator.print(f'train: ... and {len(problems) - 10} more (all listed in skipped.json)')
    dataset = dataset.without(problems) if problems else dataset
    if not len(dataset):
        raise BadInputError(f'the {split} split has no readable image: nothing to {"train" if split == "train" else "validate"} on.')
    return dataset


def _open_data(args: argparse.Namespace, data_config: Dict[str, Any], accelerator: Accelerator):
    """The checked train and validation splits: readable images, at least two classes to learn."""
    train_set = open_dataset(args.data, 'train', build_transforms(data_config, train=True, augment=args.augment),
                             seed=args.seed, augment_seed=args.seed)
    val_set = open_dataset(args.data, 'validation', build_transforms(data_config), seed=args.seed)
    train_set, val_set = _checked_split(train_set, 'train', accelerator), _checked_split(val_set, 'validation',
                                                                                         accelerator)
    present = sorted({train_set.class_names[k] for k in train_set.labels()})
    if len(present) < 2:
        raise BadInputError(f"the train split of {display(args.data or 'the bundled sample')} holds one class "
                            f"({', '.join(present)}): a classifier needs images of at least two classes.")
    return train_set, val_set


def _training_record(args: argparse.Namespace, class_names: List[str], train_set: CXRDataset,
                     val_set: CXRDataset, epoch: int) -> Dict[str, Any]:
    """What a checkpoint's classifier was trained on: it is what tells a trained checkpoint from an untrained one."""
    return dict(data=args.data or 'sample', classes=list(class_names), train_images=len(train_set),
                validation_images=len(val_set), epochs=args.epochs, epoch=epoch, img_size=args.img_size,
                method=args.method, model=args.model, pretrained=args.pretrained, seed=args.seed,
                magsd_timm=magsd_timm.__version__)


def _save_model(model: torch.nn.Module, folder: Path, class_names: List[str], data_config: Dict[str, Any],
                training: Dict[str, Any], card: Optional[Callable[[Path], str]] = None) -> None:
    """A checkpoint folder in timm's Hub format, with the trained input size and the training record, atomically."""
    with atomic_folder(folder, 'checkpoint') as staging:
        save_for_hf(model, staging, safe_serialization=True,
                    model_config={'label_names': list(class_names), 'training': training},
                    data_config={k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')})
        if card is not None:
            (staging / 'README.md').write_text(card(staging))


def main(argv: Optional[List[str]] = None) -> int:
    """Train, evaluate every epoch, checkpoint, and export the best and final models; the exit code says how."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    return run_command('train', lambda: _train(args, argv), args.traceback)


def _train(args: argparse.Namespace, argv: List[str]) -> int:
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with='tensorboard' if is_tensorboard_available() else None, project_dir=str(args.output))
    with contextlib.ExitStack() as stack:
        _claim_output(accelerator, args, stack)
        return _run(accelerator, args, argv)


def _run(accelerator: Accelerator, args: argparse.Namespace, argv: List[str]) -> int:
    set_seed(args.seed)
    command = 'accelerate launch recipes/train.py ' + shlex.join(argv)
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'traceback'}
    if args.resume:
        _check_resume(args, recorded)

    data_config = resolve_cxr_data_config(_create_model(args, 1, meta=True), img_size=args.img_size)
    train_set, val_set = _open_data(args, data_config, accelerator)
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
            accelerator.print(f'--resume: no checkpoint in {display(checkpoints)}, starting afresh')
        else:
            try:
                accelerator.load_state(str(last))
            except (RuntimeError, KeyError, ValueError) as e:
                raise BadInputError(f'--resume: {display(last)} does not fit this run\'s model, optimizer or '
                                    f'schedule ({" ".join(str(e).split())[:300]}).') from e
            accelerator.print(f'resumed from {display(last)} (epoch {progress.epoch}, step {progress.global_step})')
        if (output / 'summary.json').exists():
            summary_rows = [r for r in json.loads((output / 'summary.json').read_text()) if r['epoch'] < progress.epoch]
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output / 'args.yaml', yaml.safe_dump(dict(recorded, command=command), sort_keys=False))
        # each split's opening dedups the whole source, so a duplicate is listed by both: once is enough
        dropped = [dict(file=f, reason=why) for f, why in dict.fromkeys(train_set.dropped + val_set.dropped)]
        if dropped:
            write_text_atomic(output / 'skipped.json', strict_json(dropped))
            accelerator.print(f'train: left out {len(dropped)} image(s) (duplicates, label conflicts, unreadable '
                              f'files), listed in {display(output / "skipped.json")}')

    accelerator.init_trackers('magsd', config={k: str(v) for k, v in recorded.items()})
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
                training = _training_record(args, class_names, train_set, val_set, row['epoch'])
                _export_best(output, exported, metrics, row['epoch'], class_names, recorded, command, data_config,
                             training)
            write_text_atomic(output / 'summary.json', strict_json(summary_rows), 'run summary')
            _write_summary(output / 'summary.csv', summary_rows)
            plot_curves(summary_rows, output / 'curves.png')
        bar.write(f"epoch {row['epoch']}: " + ', '.join(f'{k} {v:.4f}' for k, v in row.items() if k != 'epoch'))
        save_checkpoint(accelerator, checkpoints, progress.global_step, args.keep_checkpoints)
    bar.close()
    _check_ranks_in_sync(accelerator, unwrapped)
    if accelerator.is_main_process:
        _save_model(exported, output / 'final', class_names, data_config,
                    _training_record(args, class_names, train_set, val_set, args.epochs - 1))
        accelerator.print(f'done: {display(output)}. Push the best checkpoint to the Hub with:\n'
                          f'  magsd-hub push-model {display(output)} ORG/NAME')
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
                 class_names: List[str], args: Dict[str, Any], command: str, data_config: Dict[str, Any],
                 training: Dict[str, Any]) -> None:
    """The best checkpoint in timm's Hub format with a model card draft, and its evaluation report."""
    _save_model(model, output / 'best', class_names, data_config, training, card=lambda folder: render_model_card(
        model, TrainingRun(folder, args, metrics, epoch, command), repo_id='ORG/NAME'))
    write_text_atomic(output / 'eval_best.json', strict_json(dict(metrics, epoch=epoch)), 'evaluation report')
    overall, per_class = metrics_markdown(metrics, class_names)
    write_text_atomic(output / 'eval_best.md', f'# Validation report, best epoch {epoch}\n\n| metric | value |\n'
                                               f'|---|---|\n{overall}\n\n{per_class}\n', 'evaluation report')
    plot_confusion_matrix(metrics['confusion_matrix'], class_names, output / 'confusion_matrix.png')


if __name__ == '__main__':
    sys.exit(main())
