#!/usr/bin/env python3
"""Benchmarks of magsd-timm, reported as ratios measured in one run on one machine.

Every suite times its cases in alternating rounds in one process (median seconds per step), so that
drift of a shared machine hits all cases alike.

Peak memory is measured for each case in a fresh process: what two steps add to the memory of the
built model and batch (CPU: the peak resident set, reset once they are built; CUDA: peak allocated).

Suite `model`: MA-Net inference and one forward+backward against the plain timm backbone with its
own classifier, same input, same threads.

Suite `step`: one full MAG-SD training step (raw pass, three attention-guided views, soft distance
loss, backward, SGD) against one plain training step of the backbone (eager, contiguous, in the same
precision: --dtype is the autocast of both), in the forms that may make it faster: channels_last, the
three views fused into one batch, back-propagation pass by pass (MagSDObjective.backward),
torch.compile (with --compile; it compiles for minutes on a CPU). The augmentations plus the loss are
also timed alone, as a share of the step.

Suite `data`: one data-loader worker (one thread) reading radiographs of 1024-2048 px (8-bit JPEG,
16-bit PNG) and preprocessing them to the input size with the published augmentation, against the
images per second one MAG-SD training step consumes.

Suite `trainer`: one epoch of the bundled sample through the trainer's loop (accelerate, gradient
accumulation context, NaN guard, logging hooks) against a bare loop of the same objective.

Suite `throughput`: images per second of MAG-SD training as the trainer runs it (its data path with
the preprocessing kept from the readability pass, accelerate, `train_step`, AdamW, channels_last),
per backbone, image size and number of frozen stages, on the train split of --data (or the bundled
sample); beside it the data path alone, with the preprocessing kept and with every film decoded and
resized again (what the trainer did before), so the share of the step that is not the network shows.

Suite `near-copies`: how well prepare_data's near-copy search finds one film saved twice, and how long
it takes. Films drawn (seeded) from --near-copy-images (default: the bundled sample) are copied in
every way of magsd_timm.data.near_copies.COPY_KINDS (resize, JPEG, crops, contrast); the copies are
searched among --near-copy-total images in all (the drawn films, their copies and further films of the
folders). Recall per kind of copy; precision over the pairs found that hold a made copy; the pairs found
among the folders' own files (real copies, or false matches: listed for a look); the time per image
and of the search. Runs only when named.

Suite `predict`: films per second of `magsd predict` (read, decode, preprocess, the model, the output
file) with --predict-model on the films of --predict-images (default: the bundled sample), once the
model is loaded: the command on one film and on all of them, in this process, each the faster of two
runs after a first that warms up, the difference divided by the films added. Runs only when named.

Suite `cli`: how long `--help` of the installed commands takes against starting Python (`python -c
pass`), each in a fresh process: magsd and magsd-hub load neither torch nor timm for it.

Suite `attention`: where the display map points. Synthetic images whose class is a small lesion
pattern at a random place (magsd_timm.data.synthetic); a tiny MAG-SD model and the plain backbone
(global pooling + linear, cross-entropy) are trained the same way on CPU, and the pointing game (the
map's maximum inside the lesion box) is scored on held-out images: MA-Net's display map against
Grad-CAM of the plain backbone at the same feature level.

    python recipes/benchmark.py                      # CPU, fp32, batch 8, 224 px, 2 threads
    python recipes/benchmark.py --device cuda --dtype bfloat16 --batch-size 32
"""
import argparse
import math
import multiprocessing as mp
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from magsd_timm.cli.console import (
    EXIT_CODES,
    CommandParser,
    HelpFormatter,
    add_traceback_flag,
    add_version_flag,
    json_object,
)
from magsd_timm.errors import BadInputError, display
from magsd_timm.utils.outputs import strict_json, write_text_atomic
from magsd_timm.utils.tables import markdown_table, shown_path

# the recommended recipe (docs/results.md): pretrained EfficientNet-Lite0, 3 stages frozen, 128 px, sized for 2 CPU
# cores; sampling balanced over class and source, which lifted the left-out source's AUROC (cutting films to the
# lungs did not, so it is not a default)
CXR_DEFAULTS = dict(model='magsd_efficientnet_lite0', epochs=8, img_size=128, batch_size=32)
CXR_TRAIN_ARGS = '--pretrained --freeze-stages 3 --balance class-source --epoch-samples 2000'  # the recommended recipe
MODEL_TARGET = 1.10  # MA-Net over the plain backbone, for inference and for forward+backward
STEP_TARGET = 2.6  # a MAG-SD training step over one plain eager contiguous step in the same precision
AUGMENT_LOSS_TARGET = 0.05  # share of the MAG-SD step spent in the augmentations and the loss
# images/s of the trainer's MAG-SD step on 2 CPU cores, batch 32, per (model, px, frozen stages): the documented
# 64 px ResNet-18 real-data command (from scratch: nothing frozen), and fine-tuning Lite0 at the paper's 224 px
THROUGHPUT_MODELS = ('magsd_resnet18', 'magsd_efficientnet_lite0')
THROUGHPUT_TARGETS = {('magsd_resnet18', 64, 0): 15., ('magsd_efficientnet_lite0', 224, 3): 4.}

Step = Callable[[], None]


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(description=__doc__, epilog=EXIT_CODES, formatter_class=HelpFormatter)
    parser.add_argument('--suite', default='all',
                        choices=['model', 'step', 'data', 'trainer', 'throughput', 'attention', 'cli', 'cxr', 'near-copies',
                                 'predict', 'all'],
                        help="'all': every speed suite (cxr, near-copies and predict run only when named)")
    parser.add_argument('--model', default='magsd_resnet50', help='magsd_* model to time')
    parser.add_argument('--model-kwargs', type=json_object, default={},
                        help='JSON object of its extra arguments, e.g. \'{"backbone": "convnext_tiny"}\' for magsd_custom')
    parser.add_argument('--baseline', default='resnet50', help='plain timm model to compare with')
    parser.add_argument('--batch-size', type=int, default=8, help='images per timed step')
    parser.add_argument('--img-size', type=int, default=224, help='input side of the timed cases')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads for torch')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='where the speed suites run')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                        help='autocast of the model, step and throughput suites, MA-Net and plain alike (float32: none)')
    parser.add_argument('--compile', action='store_true', help='add a torch.compile case to the step suite')
    parser.add_argument('--min-run-time', type=float, default=20., help='seconds of timing per suite part')
    parser.add_argument('--min-rounds', type=int, default=5,
                        help='timed rounds per case at least, whatever --min-run-time (1 for a quick smoke run)')
    parser.add_argument('--attention-images', type=int, default=1200, help='training images of the attention suite')
    parser.add_argument('--attention-epochs', type=int, default=6, help='training epochs of the attention suite')
    parser.add_argument('--throughput-models', nargs='+', default=list(THROUGHPUT_MODELS),
                        help='throughput: the magsd_* models to train')
    parser.add_argument('--throughput-sizes', type=int, nargs='+', default=[64, 128, 224],
                        help='throughput: the image sizes')
    parser.add_argument('--throughput-freeze', type=int, nargs='+', default=[0, 3],
                        help='throughput: numbers of frozen backbone stages (recipes/train.py --freeze-stages)')
    parser.add_argument('--data', type=Path, default=None,
                        help='cxr, throughput: a folder prepared by recipes/prepare_data.py')
    parser.add_argument('--boxes', type=Path, default=None, help='cxr: COCO boxes (e.g. lungs) to score the maps by')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='cxr: one training run per seed')
    parser.add_argument('--cxr-model', default=CXR_DEFAULTS['model'], help='cxr: the MA-Net (the baseline is its backbone)')
    parser.add_argument('--cxr-epochs', type=int, default=CXR_DEFAULTS['epochs'], help='cxr: epochs of every run')
    parser.add_argument('--cxr-img-size', type=int, default=CXR_DEFAULTS['img_size'], help='cxr: input side')
    parser.add_argument('--cxr-batch-size', type=int, default=CXR_DEFAULTS['batch_size'], help='cxr: batch size')
    parser.add_argument('--train-args', default=CXR_TRAIN_ARGS, help='cxr: further recipes/train.py flags for both methods')
    parser.add_argument('--holdout-source', default=None, metavar='SOURCE',
                        help='cxr: leave this source out of training and validation and score every image of it')
    parser.add_argument('--unseen-covid-source', default=None, metavar='SOURCE',
                        help="cxr: leave this source's COVID-19 films (and the --probe films) out of training and "
                             'validation; score them against the normal films of the test split, at an operating '
                             'point chosen on validation')
    parser.add_argument('--probe', default=UNSEEN_PROBE, metavar='SOURCE:CLASS',
                        help='cxr, with --unseen-covid-source: normal films held out entirely and scored for '
                             "specificity ('none': no probe)")
    parser.add_argument('--bootstrap', type=int, default=1000, help='cxr: bootstrap resamples of the intervals')
    parser.add_argument('--near-copy-images', type=Path, nargs='+', default=[],
                        help='near-copies: folders of films (searched recursively; default: the bundled sample)')
    parser.add_argument('--near-copy-films', type=int, default=300, help='near-copies: films drawn and copied')
    parser.add_argument('--near-copy-total', type=int, default=10_000,
                        help='near-copies: images searched in all (every film of the folders if they hold fewer)')
    parser.add_argument('--predict-model', default=None,
                        help='predict: the model magsd predict runs (a published tag, a run folder, a Hub id)')
    parser.add_argument('--predict-images', type=Path, nargs='+', default=[],
                        help='predict: folders of films (searched recursively; default: the bundled sample)')
    parser.add_argument('--output-dir', type=Path, default=Path('benchmark_results'),
                        help='folder for the Markdown tables (one per suite)')
    add_traceback_flag(parser)
    add_version_flag(parser)
    return parser


def _parse_args(argv: List[str]) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)  # what a summary records as the command that made it
    if args.batch_size < 1 or args.img_size < 32 or args.threads < 1 or args.min_run_time <= 0 or args.min_rounds < 1:
        parser.error('--batch-size, --threads and --min-rounds must be >= 1, --img-size >= 32, --min-run-time > 0')
    if args.holdout_source and args.unseen_covid_source:
        parser.error('--holdout-source and --unseen-covid-source are two tests: give one')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available here')
    return args


def _batch(args: argparse.Namespace, channels_last: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 1, args.img_size, args.img_size, generator=g).to(args.device)
    y = torch.randint(0, 4, (args.batch_size,), generator=g).to(args.device)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def _create(name: str, args: argparse.Namespace, channels_last: bool = False) -> torch.nn.Module:
    import timm

    import magsd_timm  # noqa: F401  (registers magsd_* models)

    torch.manual_seed(0)
    kwargs = args.model_kwargs if name == args.model else {}
    model = timm.create_model(name, in_chans=1, num_classes=4, **kwargs).to(args.device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _autocast(args: argparse.Namespace, enabled: bool = True) -> torch.autocast:
    return torch.autocast(args.device, dtype=torch.bfloat16, enabled=enabled and args.dtype == 'bfloat16')


def _synced(step: Step, args: argparse.Namespace) -> Step:
    if args.device != 'cuda':
        return step

    def synced() -> None:
        step()
        torch.cuda.synchronize()
    return synced


def _interleaved_medians(steps: Dict[str, Step], min_run_time: float, min_rounds: int) -> Dict[str, float]:
    """Median seconds per step, alternating the steps round by round so that drift hits all alike."""
    for step in steps.values():
        step(), step()  # warm-up: allocator, kernel selection, gradient buffers, compilation
    times: Dict[str, List[float]] = {k: [] for k in steps}
    start = time.perf_counter()
    while time.perf_counter() - start < min_run_time or min(len(v) for v in times.values()) < min_rounds:
        for key, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ---- suite `model`: MA-Net against its plain backbone -------------------------------------------

def _model_step(name: str, mode: str, args: argparse.Namespace) -> Step:
    """One inference or one forward+backward of a model."""
    model = _create(name, args).train(mode != 'inference')
    x, y = _batch(args)

    def infer() -> None:
        with torch.inference_mode(), _autocast(args):
            model(x)

    def forward_backward() -> None:
        with _autocast(args):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return _synced(infer if mode == 'inference' else forward_backward, args)


def _status_kib(field: str) -> int:
    return int(re.search(rf'{field}:\s+(\d+)', Path('/proc/self/status').read_text()).group(1))


def _peak_memory_mib(make_step: Callable[..., Step], step_args: tuple, args: argparse.Namespace) -> float:
    """Peak memory that two steps add over the built model and batch, measured in this (fresh) process."""
    torch.set_num_threads(args.threads)
    step = make_step(*step_args)
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path('/proc/self/clear_refs').write_text('5')  # Linux: reset the peak resident set to the current one
        before = _status_kib('VmRSS') * 1024
    for _ in range(2):
        step()
    peak = torch.cuda.max_memory_allocated() if args.device == 'cuda' else _status_kib('VmHWM') * 1024
    return (peak - before) / 2 ** 20


def _isolated_peak_memory_mib(make_step: Callable[..., Step], step_args: tuple, args: argparse.Namespace) -> float:
    """_peak_memory_mib in a fresh process, forked from a server that imported torch and timm (but ran nothing)."""
    context = mp.get_context('forkserver')
    context.set_forkserver_preload(['torch', 'timm', 'magsd_timm'])
    with context.Pool(1) as pool:
        return pool.apply(_peak_memory_mib, (make_step, step_args, args))


def run_model_suite(args: argparse.Namespace) -> str:
    """MA-Net against its plain backbone, inference and forward+backward: a Markdown table."""
    names, modes = (args.baseline, args.model), ('inference', 'forward+backward')
    memory = {(name, mode): _isolated_peak_memory_mib(_model_step, (name, mode, args), args)
              for mode in modes for name in names}
    lines = [
        f'| case | {args.baseline} (ms) | {args.model} (ms) | ratio | target | peak MiB '
        f'({args.baseline} / {args.model}) |',
        '|---|---|---|---|---|---|',
    ]
    for mode in modes:
        seconds = _interleaved_medians({name: _model_step(name, mode, args) for name in names}, args.min_run_time,
                                       args.min_rounds)
        ratio = seconds[args.model] / seconds[args.baseline]
        lines.append(
            f'| {mode} | {1e3 * seconds[args.baseline]:.1f} | {1e3 * seconds[args.model]:.1f} | {ratio:.3f}x | '
            f'<= {MODEL_TARGET:.2f}x ({_verdict(ratio <= MODEL_TARGET)}) | '
            f'{memory[args.baseline, mode]:.0f} / {memory[args.model, mode]:.0f} |')
    return '\n'.join(lines)


# ---- suite `step`: a MAG-SD training step against a plain one -----------------------------------

def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The paper's optimizer."""
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _plain_train_step(args: argparse.Namespace, channels_last: bool) -> Step:
    """One cross-entropy training step of the plain backbone, under the same autocast as the MAG-SD steps."""
    model = _create(args.baseline, args, channels_last).train()
    optimizer = _sgd(model)
    x, y = _batch(args, channels_last)

    def step() -> None:
        with _autocast(args):  # a ratio of steps in one precision: bf16 speeds both, not only MAG-SD
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return _synced(step, args)


def _magsd_train_step(args: argparse.Namespace, channels_last: bool, fused: bool, form: str) -> Step:
    """One MAG-SD training step, objective then SGD; form: 'joint', 'pass-by-pass' or 'compiled'."""
    from magsd_timm.method.augment import draw_uniforms
    from magsd_timm.method.objective import MagSDObjective

    model = _create(args.model, args, channels_last).train()
    optimizer = _sgd(model)
    x, y = _batch(args, channels_last)
    objective = MagSDObjective(fused_views=fused)
    loss_of = torch.compile(objective.from_uniforms) if form == 'compiled' else objective.from_uniforms
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if form == 'pass-by-pass':
            with _autocast(args):
                objective.backward(model, x, y, generator)
        else:
            uniforms = draw_uniforms(x.shape[0], generator, x.device)
            with _autocast(args):
                loss = loss_of(model, x, y, uniforms).loss
            loss.backward()
        optimizer.step()
    return _synced(step, args)


def _augment_and_loss(args: argparse.Namespace) -> Step:
    """The augmentations and the loss alone, on the attention and logits of a real raw pass."""
    from magsd_timm.method.augment import attention_views_from_uniforms, draw_uniforms
    from magsd_timm.method.losses import magsd_loss

    model = _create(args.model, args).train()
    x, y = _batch(args)
    with torch.no_grad(), _autocast(args):
        logits, attention = model.forward_with_attention(x)
    view_logits = [logits.clone().requires_grad_() for _ in range(3)]
    logits.requires_grad_()
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        attention_views_from_uniforms(x, attention, draw_uniforms(x.shape[0], generator, x.device))
        magsd_loss(logits, view_logits, y)[0].backward()
    return _synced(step, args)


def run_step_suite(args: argparse.Namespace) -> str:
    """A MAG-SD training step in several forms against one plain step in the same precision: a Markdown table."""
    reference = f"plain, eager, contiguous {'bf16' if args.dtype == 'bfloat16' else 'fp32'}"
    cases = {
        reference: (_plain_train_step, (args, False)),
        'plain, channels_last': (_plain_train_step, (args, True)),
        'MAG-SD, eager, contiguous': (_magsd_train_step, (args, False, False, 'joint')),
        'MAG-SD, channels_last': (_magsd_train_step, (args, True, False, 'joint')),
        'MAG-SD, channels_last, fused views': (_magsd_train_step, (args, True, True, 'joint')),
        'MAG-SD, channels_last, pass-by-pass backward': (_magsd_train_step, (args, True, False, 'pass-by-pass')),
    }
    if args.compile:
        cases['MAG-SD, channels_last, torch.compile'] = (_magsd_train_step, (args, True, False, 'compiled'))
    memory = {name: _isolated_peak_memory_mib(make, step_args, args)
              for name, (make, step_args) in cases.items() if not name.endswith('torch.compile')}
    seconds = _interleaved_medians({name: make(*step_args) for name, (make, step_args) in cases.items()},
                                   args.min_run_time, args.min_rounds)
    extra = _interleaved_medians({'augment+loss': _augment_and_loss(args)}, max(1., args.min_run_time / 10),
                                 args.min_rounds)
    magsd = {k: v for k, v in seconds.items() if k.startswith('MAG-SD')}
    best = min(magsd, key=magsd.get)
    lines = ['| step | ms | ratio to the reference | target | peak MiB |', '|---|---|---|---|---|']
    for name, value in seconds.items():
        ratio = value / seconds[reference]
        target = f'<= {STEP_TARGET}x ({_verdict(ratio <= STEP_TARGET)})' if name == best else ''
        peak = f'{memory[name]:.0f}' if name in memory else ''
        lines.append(f'| {name} | {1e3 * value:.1f} | {ratio:.3f}x | {target} | {peak} |')
    share = extra['augment+loss'] / seconds[best]
    lines.append(
        f"| augmentations + loss alone | {1e3 * extra['augment+loss']:.1f} | {share:.1%} of the fastest "
        f'MAG-SD step | <= {AUGMENT_LOSS_TARGET:.0%} ({_verdict(share <= AUGMENT_LOSS_TARGET)}) | |')
    return '\n'.join(lines)


# ---- suite `data`: decoding and preprocessing against what training consumes --------------------

DATA_TARGET = 4.0  # one loader worker feeds at least this many times what a CPU MAG-SD step consumes


def _source_images(folder: Path) -> Dict[str, List[Path]]:
    """The bundled radiographs enlarged to 1024-2048 px, as 8-bit JPEG and 16-bit PNG files."""
    import numpy as np
    from PIL import Image

    from magsd_timm.data.sample import sample_records

    files: Dict[str, List[Path]] = {'8-bit JPEG': [], '16-bit PNG': []}
    for i, record in enumerate(sample_records()[:6]):
        side = (1024, 1536, 2048)[i % 3]
        image = Image.open(record['path']).convert('L').resize((side, int(side * 0.85)), Image.BILINEAR)
        jpeg, png = folder / f'{i}.jpeg', folder / f'{i}.png'
        image.save(jpeg, quality=95)
        Image.fromarray(np.asarray(image, dtype=np.uint16) * 257).save(png)
        files['8-bit JPEG'].append(jpeg)
        files['16-bit PNG'].append(png)
    return files


def run_data_suite(args: argparse.Namespace) -> str:
    """Images/s of one loader worker (1 thread: read, resize, CLAHE, published augmentation, normalise)."""
    import tempfile

    import cv2

    from magsd_timm.data.reader import read_image
    from magsd_timm.data.transforms import build_transforms, resolve_cxr_data_config

    transform = build_transforms(
        resolve_cxr_data_config(input_size=(1, args.img_size, args.img_size)), train=True, augment='published')
    with tempfile.TemporaryDirectory() as folder:
        files = _source_images(Path(folder))
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        loaders = {kind: (lambda paths=paths: [transform(read_image(p)) for p in paths]) for kind, paths in files.items()}
        seconds = _interleaved_medians(loaders, max(1., args.min_run_time / 4), args.min_rounds)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(-1)
    step = _interleaved_medians({'step': _magsd_train_step(args, True, False, 'joint')}, 1., args.min_rounds)['step']
    consumed = args.batch_size / step
    lines = ['| source (1024-2048 px) | ms per image | images/s per worker | x what training consumes | target |',
             '|---|---|---|---|---|']
    for kind, value in seconds.items():
        per_image = value / len(files[kind])
        ratio = 1 / per_image / consumed
        lines.append(f'| {kind} | {1e3 * per_image:.1f} | {1 / per_image:.1f} | {ratio:.1f}x | '
                     f'>= {DATA_TARGET:.0f}x ({_verdict(ratio >= DATA_TARGET)}) |')
    lines.append(f'| one MAG-SD training step ({args.threads} threads, channels_last) | {1e3 * step:.0f} per batch | '
                 f'{consumed:.1f} consumed | | |')
    return '\n'.join(lines)


# ---- suite `trainer`: the trainer's loop against a bare objective loop --------------------------

TRAINER_TARGET = 0.95  # trainer images/s over bare-loop images/s


def run_trainer_suite(args: argparse.Namespace) -> str:
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
        model = _create(args.model, args, channels_last=True).train()
        optimizer, generator = _sgd(model), torch.Generator().manual_seed(0)
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
        model = _create(args.model, args, channels_last=True)
        optimizer = _sgd(model)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        setup, progress = TrainSetup(model, optimizer, objective=objective), TrainProgress()

        def epoch() -> None:
            model.train()
            for images, labels in loader:
                train_step(accelerator, setup, images, labels, progress)
        return epoch

    seconds = _interleaved_medians({'bare objective loop': bare(), 'magsd_timm trainer loop': trainer()},
                                   args.min_run_time, args.min_rounds)
    per_second = {k: len(dataset) / v for k, v in seconds.items()}
    ratio = per_second['magsd_timm trainer loop'] / per_second['bare objective loop']
    lines = ['| loop (one epoch of the bundled sample) | images/s | ratio | target |', '|---|---|---|---|']
    for name, value in per_second.items():
        target = f'>= {TRAINER_TARGET}x ({_verdict(ratio >= TRAINER_TARGET)})' if 'trainer' in name else ''
        lines.append(f"| {name} | {value:.2f} | {value / per_second['bare objective loop']:.3f}x | {target} |")
    return '\n'.join(lines)


# ---- suite `throughput`: the trainer's MAG-SD images/s per backbone, size and frozen stages ------

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
    model = _create(name, args, channels_last=True)
    freeze_stages(model, frozen)
    model, optimizer = accelerator.prepare(model, create_optimizer(model, 'adamw', 3e-4, 0.9, 0.05))
    setup, progress = TrainSetup(model, optimizer, objective=MagSDObjective()), TrainProgress()
    model.train()

    def step() -> None:
        images, labels = next(batches)
        train_step(accelerator, setup, images.to(accelerator.device), labels.to(accelerator.device), progress)
    return _synced(step, args)


def run_throughput_suite(args: argparse.Namespace) -> str:
    """Images/s of the trainer's MAG-SD step per backbone, size and frozen stages, and of its data path alone."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == 'cpu', mixed_precision='bf16' if args.dtype == 'bfloat16' else 'no')
    cases = {(name, size, frozen): _trainer_step(args, accelerator, name, size, frozen)
             for name in args.throughput_models for size in args.throughput_sizes for frozen in args.throughput_freeze}
    data = {(size, keep): (lambda it: lambda: next(it))(_endless_batches(args, size, keep))
            for size in args.throughput_sizes for keep in (True, False)}
    seconds = _interleaved_medians({**{str(k): v for k, v in cases.items()}, **{str(k): v for k, v in data.items()}},
                                   args.min_run_time, args.min_rounds)
    rate = {k: args.batch_size / seconds[str(k)] for k in [*cases, *data]}
    rows = []
    for key in cases:
        name, size, frozen = key
        target = THROUGHPUT_TARGETS.get(key)
        verdict = f'>= {target:g} ({_verdict(rate[key] >= target)})' if target else ''
        not_network = seconds[str((size, True))] / seconds[str(key)]
        rows.append([f'`{name}`', size, frozen, f'{rate[key]:.1f}', f'{not_network:.0%}', verdict])
    for (size, keep) in data:
        rows.append([f"data path alone ({'preprocessing kept' if keep else 'every film decoded and resized again'})",
                     size, '', f'{rate[(size, keep)]:.1f}', '', ''])
    source = shown_path(args.data) if args.data else 'the bundled sample'
    return (f'MAG-SD training steps through the trainer (train split of {source}, batch {args.batch_size}, AdamW, '
            f'channels_last): images/s, and the share of the step its data path takes.\n\n'
            + markdown_table(['model', 'px', 'frozen stages', 'images/s', 'data path share', 'target'], rows))


# ---- suite `attention`: the pointing game on synthetic lesions ------------------------------------

POINTING_TARGET = 0.9  # hit rate of MA-Net's display map, and at least Grad-CAM's on the plain backbone
ATTENTION_BACKBONE, ATTENTION_LEVELS = 'test_resnet', (1, 2)  # top feature level at stride 8


class _PlainBackbone(torch.nn.Module):
    """The same truncated backbone with global average pooling and a linear classifier."""

    def __init__(self, num_classes: int):
        super().__init__()
        import timm

        self.backbone = timm.create_model(ATTENTION_BACKBONE, features_only=True, in_chans=1,
                                          out_indices=ATTENTION_LEVELS)
        self.top = torch.nn.Identity()  # Grad-CAM hooks here: the top feature level
        self.fc = torch.nn.Linear(self.backbone.feature_info.channels()[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.top(self.backbone(x)[-1]).mean(dim=(2, 3)))


def _fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, magsd: bool) -> None:
    from magsd_timm.method.objective import MagSDObjective

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    objective, order = MagSDObjective(), torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=order).split(32):
            optimizer.zero_grad(set_to_none=True)
            if magsd:
                objective.backward(model, images[batch], labels[batch], order)
            else:
                F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()


def run_attention_suite(args: argparse.Namespace) -> str:
    """Pointing-game hit rates of MA-Net's display map and of Grad-CAM on the plain backbone, same training."""
    import timm

    from magsd_timm.data.synthetic import lesion_images
    from magsd_timm.evaluation.explain import attention_heatmap, grad_cam, pointing_game

    num_classes, size = 3, 96
    train_x, train_y, _ = lesion_images(args.attention_images, size, num_classes, seed=0)
    test_x, test_y, test_boxes = lesion_images(300, size, num_classes, seed=1)
    normalise = lambda x: (x - 0.45) / 0.2  # noqa: E731 - the synthetic images' mean and std
    train_x, test_x = normalise(train_x), normalise(test_x)
    rows = {}
    started = time.perf_counter()
    magsd = timm.create_model('magsd_custom', backbone=ATTENTION_BACKBONE, num_classes=num_classes, num_maps=8,
                              backbone_kwargs={'out_indices': ATTENTION_LEVELS})
    _fit(magsd, train_x, train_y, args.attention_epochs, magsd=True)
    logits, heat = attention_heatmap(magsd, test_x)
    rows['MA-Net display map (MAG-SD)'] = (logits, heat, time.perf_counter() - started)
    started = time.perf_counter()
    plain = _PlainBackbone(num_classes)
    _fit(plain, train_x, train_y, args.attention_epochs, magsd=False)
    logits, cam = grad_cam(plain, plain.top, test_x)
    rows['Grad-CAM, plain backbone (cross-entropy)'] = (logits, cam, time.perf_counter() - started)
    hits = {name: pointing_game(maps, test_boxes).float().mean().item() for name, (_, maps, _) in rows.items()}
    magsd_hits, cam_hits = hits.values()
    lines = [f'{args.attention_images} training images x {args.attention_epochs} epochs, 300 test images, '
             f'{size} px, {num_classes} lesion classes, `{ATTENTION_BACKBONE}` to stride 8.', '',
             '| map | test accuracy | pointing-game hit rate | target | training s |', '|---|---|---|---|---|']
    for name, (logits, _, seconds) in rows.items():
        accuracy = (logits.argmax(dim=-1) == test_y).float().mean().item()
        met = magsd_hits >= POINTING_TARGET and magsd_hits >= cam_hits
        target = (f'>= {POINTING_TARGET} and >= Grad-CAM ({_verdict(met)})'
                  if 'MA-Net' in name else '')
        lines.append(f'| {name} | {accuracy:.3f} | {hits[name]:.3f} | {target} | {seconds:.0f} |')
    return '\n'.join(lines)


# ---- suite `cli`: --help of every command against starting Python ------------------------------------

CLI_TARGET = 1.0  # seconds of `magsd --help` and `magsd-hub --help` on a quiet machine


def run_cli_suite(args: argparse.Namespace) -> str:
    """Median seconds of each command's --help in a fresh process, against `python -c pass`."""
    import subprocess

    commands = {
        'python -c pass': [sys.executable, '-c', 'pass'],
        'magsd --help': [sys.executable, '-m', 'magsd_timm', '--help'],
        'magsd-hub --help': [sys.executable, '-m', 'magsd_timm.hub', '--help'],
        'magsd predict --help': [sys.executable, '-m', 'magsd_timm', 'predict', '--help'],
    }
    runs = {name: (lambda argv=argv: subprocess.run(argv, stdout=subprocess.DEVNULL, check=True))
            for name, argv in commands.items()}
    seconds = _interleaved_medians(runs, max(1., args.min_run_time / 4), args.min_rounds)
    python = seconds['python -c pass']
    lines = ['| command | seconds | x python -c pass | target |', '|---|---|---|---|']
    for name, value in seconds.items():
        target = (f'< {CLI_TARGET:.0f} s ({_verdict(value < CLI_TARGET)})' if name.startswith('magsd') else '')
        lines.append(f'| `{name}` | {value:.2f} | {value / python:.1f}x | {target} |')
    return '\n'.join(lines)


# ---- suite `predict`: films per second of `magsd predict` ------------------------------------------

PREDICT_TARGET = 30.  # films per second of magsd predict with the published model on this CPU


def run_predict_suite(args: argparse.Namespace) -> str:
    """Films per second of magsd predict once its model is loaded: the command on one film and on all."""
    import tempfile

    from magsd_timm.cli.magsd import main as magsd

    if not args.predict_model:
        raise BadInputError('--suite predict needs --predict-model (a published tag, a run folder or a Hub id)')
    films = _film_files(args.predict_images, '--predict-images')
    seconds = []
    with tempfile.TemporaryDirectory(prefix='magsd-predict-') as tmp:
        for count in (1, 1, len(films), 1, len(films)):  # the first run warms the imports up and is not counted
            start = time.perf_counter()
            code = magsd(['predict', args.predict_model, *map(str, films[:count]), '--output', f'{tmp}/{count}.csv'])
            seconds.append(time.perf_counter() - start)
            if code:
                raise BadInputError(f'predict: magsd predict exited {code} (its message is above)')
    seconds = [min(seconds[1], seconds[3]), min(seconds[2], seconds[4])]  # the faster of two runs of each
    if seconds[1] <= seconds[0]:
        raise BadInputError(f'predict: {len(films)} films took no longer than one ({seconds[1]:.2f} s against '
                            f'{seconds[0]:.2f} s): give more films (--predict-images) to measure a rate')
    rate = (len(films) - 1) / (seconds[1] - seconds[0])
    return '\n'.join([
        f'`magsd predict {display(args.predict_model)}` on {len(films)} films of '
        f"{', '.join(display(shown_path(f)) for f in args.predict_images) or 'the bundled sample'} "
        f'({args.threads} threads):', '',
        markdown_table(['films', 'seconds (model loading included)', 'films per second once loaded', 'target'], [
            [1, f'{seconds[0]:.2f}', '', ''],
            [len(films), f'{seconds[1]:.2f}', f'{rate:.1f}',
             f'>= {PREDICT_TARGET:.0f} ({_verdict(rate >= PREDICT_TARGET)})']])])


# ---- report ----------------------------------------------------------------------------------------

def _verdict(ok: bool) -> str:
    return 'meets' if ok else 'MISSES'


def _machine(args: argparse.Namespace) -> str:
    if args.device == 'cuda':
        return f'{torch.cuda.get_device_name()}, torch {torch.__version__}'
    cpuinfo = Path('/proc/cpuinfo')
    names = [line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith('model name')] if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f'{cpu}, {args.threads} threads, torch {torch.__version__}'


# ---- suite `cxr`: MAG-SD against its plain backbone on real chest X-rays ---------------------------

CXR_TARGET = 0.02  # MAG-SD macro F1 over the baseline's, on the test split, mean over seeds
LOSO_TARGET = 0.80  # COVID-19 vs normal AUROC on a source left out of training, mean over seeds
MAP_TARGET = 0.7  # share of MA-Net's display map inside the lung boxes
UNSEEN_TARGET = 0.85  # COVID-19 vs normal AUROC on a source's COVID-19 films never seen, mean over seeds
SPECIFICITY_TARGET = 0.80  # adult normal films called normal at the operating point
OPERATING_SENSITIVITY = 0.90  # the operating point: this share of validation's COVID-19 films called COVID-19
UNSEEN_PROBE = 'ieee8023:normal'  # frontal adult 'No Finding' films of many hospitals, held out entirely
OPERATING = 'validation'  # the scored set that chooses the operating point (scored, not reported)


def _train_recipe():
    """recipes/train.py as a module: its parser and its record of arguments tell what a run would record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('magsd_train_recipe', Path(__file__).resolve().parent / 'train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _die_with_parent() -> None:
    """In a child process: be killed when the benchmark dies (SIGKILL too), so no run goes on holding its folder."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # no prctl on this system: the child outlives a killed benchmark
        pass


def _table_name(args: argparse.Namespace) -> str:
    """The name of the cxr suite's table (and summary): cxr, or with the source it tests unseen."""
    return f'cxr-unseen-{args.unseen_covid_source}' if args.unseen_covid_source else 'cxr'


def _held_out(args: argparse.Namespace) -> List[str]:
    """What every run of the invocation leaves out of training and validation (train.py --exclude-sources)."""
    if args.holdout_source:
        return [args.holdout_source]
    if args.unseen_covid_source:
        return [f'{args.unseen_covid_source}:COVID-19', *([args.probe] if _probe(args) else [])]
    return []


def _probe(args: argparse.Namespace) -> Optional[str]:
    """The probe films' SOURCE:CLASS, or None (no unseen-source test, --probe none, or no such film in the data:
    run_cxr_suite looks once, with _probe_in_data)."""
    return args.probe if args.unseen_covid_source and args.probe != 'none' else None


def _probe_in_data(args: argparse.Namespace) -> str:
    """--probe as the data holds it: 'none' when no film of the data is the probe's."""
    from magsd_timm.data import open_dataset

    if _probe(args) is None:
        return 'none'
    found = any(any(open_dataset(str(args.data), split).held_by([args.probe])) for split in ('train', 'validation', 'test'))
    return args.probe if found else 'none'


def _train_run(args: argparse.Namespace, method: str, seed: int) -> Path:
    """One training run of the cxr suite: reused only if its record has exactly these settings, else run (or resumed)."""
    import shlex
    import subprocess

    from magsd_timm.run_records import setting_differences
    from magsd_timm.train.run_folder import RunFolder

    without = (f'-without-{args.holdout_source}' if args.holdout_source else
               f'-unseen-{args.unseen_covid_source}' if args.unseen_covid_source else '')
    output = args.output_dir / 'cxr' / f'{method}{without}-seed{seed}'
    held = _held_out(args)
    train_args = ['--data', str(args.data), '--model', args.cxr_model, '--method', method, '--img-size',
                  str(args.cxr_img_size), '--epochs', str(args.cxr_epochs), '--batch-size', str(args.cxr_batch_size),
                  '--seed', str(seed), '--output', str(output), *(['--cpu'] if args.device == 'cpu' else []),
                  *(['--exclude-sources', *held] if held else []),
                  *shlex.split(args.train_args)]
    folder = RunFolder(output)
    if folder.has_results():  # train.py's own parser tells what the requested run would record
        recipe = _train_recipe()
        requested = recipe._parse_args(train_args)  # and the data it would train on, fingerprinted
        recorded = recipe.recorded_args(requested, *recipe.training_splits(requested))
        changed = setting_differences(folder.read_args(), recorded)
        if changed:
            raise BadInputError(f"{output} holds a run with other settings ({'; '.join(changed)}): remove it, or choose "
                                'another --output-dir; its results are not those of this comparison.')
        if (output / 'final' / 'config.json').is_file():
            return output
    command = [sys.executable, str(Path(__file__).resolve().parent / 'train.py'), *train_args,
               *(['--resume'] if folder.has_results() else [])]
    print(f'cxr: {shlex.join(command)}', flush=True)
    if subprocess.run(command, preexec_fn=_die_with_parent).returncode:
        raise RuntimeError(f'the cxr training run into {output} failed (its message is above); rerunning the suite '
                           'continues from its last checkpoint.')
    return output


def _scored_sets(model: torch.nn.Module, crop: Any, args: argparse.Namespace) -> Dict[str, Any]:
    """What the runs are scored on (films cut by crop, the run's lung detector, when it has one): the test split;
    leaving a source out, the test split without it ('in distribution') and every image of the held-out source,
    from all splits ('held out'); with an unseen COVID-19 source, the test split without what was held out, that
    source's COVID-19 films with the normal films of the test split, the probe, and the validation split that
    chooses the operating point."""
    from magsd_timm.data import open_dataset
    from magsd_timm.data.dataset import CXRDataset
    from magsd_timm.data.transforms import build_transforms, resolve_cxr_data_config

    transform = build_transforms(resolve_cxr_data_config(model), crop=crop)
    splits = {split: open_dataset(str(args.data), split, transform) for split in ('train', 'validation', 'test')}
    held = _held_out(args)
    if not held:
        return {'test': splits['test']}
    if args.holdout_source:
        return {'in distribution': splits['test'].without_sources(held),
                'held out': CXRDataset.joined([split.of_sources(held) for split in splits.values()])}
    probe = _probe(args)
    normals = [f'{source}:normal' for source in sorted({s for s in splits['test'].column('source') if s})
               if f'{source}:normal' != probe]
    sets = {'in distribution': splits['test'].without_sources(held),
            'unseen COVID-19': CXRDataset.joined([split.of_sources(held[:1]) for split in splits.values()]
                                                 + [splits['test'].of_sources(normals)])}
    if probe:
        sets['probe'] = CXRDataset.joined([split.of_sources([probe]) for split in splits.values()])
    sets[OPERATING] = splits['validation'].without_sources(held)
    return sets


def _run_probabilities(run: Path, args: argparse.Namespace) -> Tuple[Dict[str, Any], torch.nn.Module]:
    """The best checkpoint's probabilities (data class order), labels and images on each scored set, and the model."""
    from magsd_timm.evaluation.inference import probabilities
    from magsd_timm.evaluation.report import align_labels, predict_dataset
    from magsd_timm.hub import checkpoint_config, load, load_lung_crop

    best = f'local-dir:{run / "best"}'
    config = checkpoint_config(best)
    model = load(best, config=config).to(args.device)
    scored = {}
    for name, dataset in _scored_sets(model, load_lung_crop(best, config), args).items():
        dataset, unreadable = dataset.readable()
        for _, why in unreadable[:10]:  # both methods are scored on the same readable images, and it is said
            print(f'cxr: left out of the {name} images: {why}', flush=True)
        if not len(dataset):
            raise BadInputError(f'cxr: no readable {name} image in {display(shown_path(args.data))}.')
        logits, labels = predict_dataset(model, dataset, batch_size=32)
        order = align_labels(list(model.pretrained_cfg['label_names']), dataset.class_names)
        scored[name] = (probabilities(logits)[:, order], labels, dataset)
    return scored, model


def _mean_std(values: List[float]) -> str:
    """Mean ± standard deviation of the defined values ('n/a' when none is)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return 'n/a'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.:.3f}'


def _seed_scores(results: Dict[str, Any], methods: Sequence[str], value: Callable[[Dict[str, Any]], float],
                 scored: str) -> List[str]:
    """Mean ± sd over seeds of value(metrics) on a scored set, per method."""
    return [_mean_std([value(m) for m in results[name][scored]['per_seed']]) for name in methods]


def _covid_vs_normal(labels: torch.Tensor, class_names: Sequence[str]) -> Optional[torch.Tensor]:
    """The indices of the images labelled COVID-19 or normal, or None when either class is missing."""
    if not {'COVID-19', 'normal'} <= set(class_names):
        return None
    pair = [class_names.index('COVID-19'), class_names.index('normal')]
    if not all((labels == k).any() for k in pair):
        return None
    return torch.isin(labels, torch.tensor(pair)).nonzero()[:, 0]


def _method_results(runs: List[Tuple[Dict[str, Any], torch.nn.Module]], args: argparse.Namespace,
                    boxes: Any) -> Dict[str, Any]:
    """Per scored set: each seed's metrics, the seed mean's intervals, COVID-19 vs normal, and the hiding reports."""
    from magsd_timm.evaluation.metrics import bootstrap_intervals, classification_metrics
    from magsd_timm.evaluation.shortcuts import hiding_report

    out: Dict[str, Any] = {'models': [model for _, model in runs]}
    for scored in runs[0][0]:
        probs = [run[scored][0] for run, _ in runs]
        labels, dataset = runs[0][0][scored][1], runs[0][0][scored][2]
        names, groups = dataset.class_names, dataset.patient_groups()[0]
        if scored == OPERATING:  # it chooses the operating point: probabilities only
            out[scored] = dict(probs=probs, labels=labels, dataset=dataset, class_names=names)
            continue
        present = [names[k] for k in sorted(set(labels.tolist()))]
        kept = _covid_vs_normal(labels, names)
        out[scored] = dict(
            probs=probs, labels=labels, dataset=dataset, class_names=names,
            per_seed=[classification_metrics(p, labels, names, probabilities=True, present=present) for p in probs],
            intervals=bootstrap_intervals(probs, labels, names, groups, args.bootstrap, 0, present=present),
            hiding=[hiding_report(model, dataset, names, boxes) for _, model in runs])
        if kept is not None:
            two = ['COVID-19', 'normal']
            out[scored]['pair'] = dict(
                auroc=[classification_metrics(p[kept], labels[kept], names, True, present=two)['auroc']['COVID-19']
                       for p in probs],
                interval=bootstrap_intervals([p[kept] for p in probs], labels[kept], names,
                                             [groups[i] for i in kept.tolist()], args.bootstrap, 0,
                                             present=two)['auroc']['COVID-19'],
                num_images=len(kept))
    return out


def _reported(results: Dict[str, Any]) -> List[str]:
    """The scored sets a method's results report (not its models, not the set that only chooses the operating point)."""
    return [name for name in results if name not in ('models', OPERATING)]


def _operating_point(result: Dict[str, Any]) -> List[float]:
    """Per run, the P(COVID-19) at or above which OPERATING_SENSITIVITY of the set's COVID-19 films lie."""
    from magsd_timm.evaluation.operating_point import threshold_at_sensitivity

    covid = result['class_names'].index('COVID-19')
    try:
        return [threshold_at_sensitivity(p, result['labels'], covid, OPERATING_SENSITIVITY) for p in result['probs']]
    except ValueError:
        raise BadInputError('cxr: the validation split holds no COVID-19 film outside the unseen source: no '
                            'operating point can be chosen') from None


def _rate(hits: List[torch.Tensor], groups: Sequence[Any], args: argparse.Namespace) -> Dict[str, Any]:
    """A rate (the share of True in each seed's hits): per seed, and the 95% bootstrap interval of the seed mean
    over patients."""
    from magsd_timm.evaluation.metrics import group_resamples, percentile_interval

    rates = torch.stack([h.double() for h in hits])  # (seeds, films)
    draws = [float(rates[:, picked].mean()) for picked in group_resamples(groups, args.bootstrap, 0)]
    return dict(per_seed=rates.mean(dim=1).tolist(), interval=percentile_interval(torch.tensor(draws), 0.95),
                films=rates.shape[1])


def _with_interval(values: List[float], interval: Sequence[float]) -> str:
    return f'{_mean_std(values)} [{interval[0]:.3f}, {interval[1]:.3f}]'


def unseen_summary(results: Dict[str, Any], methods: Sequence[str], args: argparse.Namespace) -> Dict[str, Any]:
    """What the unseen-source test measured, per method: the COVID-19 vs normal AUROC on the unseen source's films,
    the operating point chosen on validation, and there the sensitivity on the unseen films and the specificity on
    each source's normal films of the test split and on the probe (per seed, with intervals over patients)."""
    from magsd_timm.evaluation.operating_point import groups_of, rate_at

    first = results[methods[0]]['unseen COVID-19']
    names = first['class_names']
    covid = names.index('COVID-19')
    groups = groups_of(first['labels'].tolist(), first['dataset'].column('source'), covid, names.index('normal'))
    unseen = groups.pop('positive')
    summary: Dict[str, Any] = dict(source=args.unseen_covid_source, unseen_films=len(unseen), probe=_probe(args),
                                   normal_films={src: len(ix) for src, ix in groups.items()},
                                   operating_sensitivity=OPERATING_SENSITIVITY, methods={})
    for m in methods:
        cut = _operating_point(results[m][OPERATING])

        def at_point(scored: str, index: List[int], positive: bool, m: str = m, cut: List[float] = cut
                     ) -> Dict[str, Any]:
            result = results[m][scored]
            patients = [result['dataset'].patient_groups()[0][i] for i in index]
            return _rate([rate_at(p, index, covid, t, positive) for p, t in zip(result['probs'], cut)], patients, args)

        pair = results[m]['unseen COVID-19'].get('pair')
        summary['methods'][m] = dict(
            auroc=pair and dict(per_seed=pair['auroc'], interval=list(pair['interval']), films=pair['num_images']),
            operating_point=cut, sensitivity=at_point('unseen COVID-19', unseen, True),
            specificity={src: at_point('unseen COVID-19', ix, False) for src, ix in groups.items()},
            probe_specificity=at_point('probe', list(range(len(results[m]['probe']['labels']))), False)
            if 'probe' in results[m] else None)
    return summary


def _unseen_lines(summary: Dict[str, Any], methods: Sequence[str]) -> List[str]:
    """The unseen-source test as a table with its verdicts."""
    by = summary['methods']
    lines = [f"Unseen COVID-19 source: `{summary['source']}`'s {summary['unseen_films']} COVID-19 films (every split) "
             'were never trained or validated on; they are scored against the normal films of the test split '
             f"({', '.join(f'{src} {n}' for src, n in summary['normal_films'].items())}). The operating point is the "
             f"P(COVID-19) at which {summary['operating_sensitivity']:.2f} of the validation split's COVID-19 films are "
             'called COVID-19 (chosen per run).', '']
    if by[methods[0]]['auroc'] is None:
        return lines + ['The set does not hold both COVID-19 and normal films: no AUROC.']
    rows = [[f"COVID-19 vs normal AUROC ({by[methods[0]]['auroc']['films']} films)",
             *(_with_interval(by[m]['auroc']['per_seed'], by[m]['auroc']['interval']) for m in methods)],
            ['operating point: P(COVID-19) at least', *(_mean_std(by[m]['operating_point']) for m in methods)],
            [f"COVID-19 sensitivity, unseen films ({summary['unseen_films']})",
             *(_with_interval(by[m]['sensitivity']['per_seed'], by[m]['sensitivity']['interval']) for m in methods)]]
    for src, n in summary['normal_films'].items():
        rows.append([f'specificity, {src} normal films of the test split ({n})',
                     *(_with_interval(by[m]['specificity'][src]['per_seed'], by[m]['specificity'][src]['interval'])
                       for m in methods)])
    if by[methods[0]]['probe_specificity'] is not None:
        rows.append([f"specificity, probe: {summary['probe']} ({by[methods[0]]['probe_specificity']['films']} films, "
                     'held out entirely)', *(_with_interval(by[m]['probe_specificity']['per_seed'],
                                                            by[m]['probe_specificity']['interval']) for m in methods)])
    lines.append(markdown_table(['unseen source', *methods], rows))
    auroc = {m: statistics.mean(by[m]['auroc']['per_seed']) for m in methods}
    lines += ['', *(f'{m}: AUROC on the unseen COVID-19 source {auroc[m]:.3f} (target >= {UNSEEN_TARGET:.2f}: '
                    f'{_verdict(auroc[m] >= UNSEEN_TARGET)}).' for m in methods)]
    if len(methods) > 1:
        gain = auroc[methods[0]] - auroc[methods[1]]
        lines.append(f'{methods[0]} minus {methods[1]}: {gain:+.3f} (target >= +{CXR_TARGET:.2f}: '
                     f'{_verdict(gain >= CXR_TARGET)}).')
    return lines


def _holdout_lines(results: Dict[str, Any], methods: Sequence[str], args: argparse.Namespace) -> List[str]:
    """The held-out source: COVID-19 vs normal AUROC against the target, COVID-19 sensitivity and specificity."""
    held = results[methods[0]]['held out']
    lines = [f'Left out: `{args.holdout_source}`, {len(held["labels"])} images never trained or validated on '
             '(every split of it):', '']
    if 'pair' not in held:
        return lines + ['It does not hold both COVID-19 and normal images: no COVID-19 vs normal AUROC.']
    rows = [['COVID-19 vs normal AUROC (' + str(held['pair']['num_images']) + ' images)',
             *(f"{_mean_std(results[m]['held out']['pair']['auroc'])} "
               f"[{results[m]['held out']['pair']['interval'][0]:.3f}, {results[m]['held out']['pair']['interval'][1]:.3f}]"
               for m in methods)]]
    for metric in ('sensitivity', 'specificity'):
        rows.append([f'COVID-19 {metric}', *_seed_scores(results, methods, lambda m, k=metric: m[k]['COVID-19'],
                                                         'held out')])
    rows.append(['accuracy', *_seed_scores(results, methods, lambda m: m['accuracy'], 'held out')])
    lines.append(markdown_table(['held out', *methods], rows))
    for m in methods:
        auroc = statistics.mean(results[m]['held out']['pair']['auroc'])
        lines += ['', f'{m}: COVID-19 vs normal AUROC on the left-out source {auroc:.3f} (target >= '
                      f'{LOSO_TARGET:.2f}: {_verdict(auroc >= LOSO_TARGET)}).']
    return lines


def _shortcut_lines(results: Dict[str, Any], methods: Sequence[str]) -> List[str]:
    """Per class the accuracy on each source's images, and what hiding the lungs or the border does (seed means)."""
    from magsd_timm.evaluation.shortcuts import class_source_accuracy

    tables = {}
    for m in methods:
        sets = [results[m][s] for s in _reported(results[m])]
        sources = [src for r in sets for src in r['dataset'].column('source')]
        labels = torch.cat([r['labels'] for r in sets])
        names = sets[0]['class_names']
        tables[m] = [class_source_accuracy(torch.cat([r['probs'][i] for r in sets]).argmax(dim=1), labels, sources,
                                           names) for i in range(len(sets[0]['probs']))]
    first = tables[methods[0]][0]
    rows = [[c, src, by[src]['num_images'], *(_mean_std([t[c][src]['accuracy'] for t in tables[m]]) for m in methods)]
            for c, by in first.items() for src in by]
    lines = ['Shortcuts. Per class, the share of each source\'s images of it recognised (all scored images): a class '
             'recognised in one source and missed in another is recognised by its source.', '',
             markdown_table(['class', 'source', 'images', *methods], rows), '',
             'Hiding the lungs (lung boxes where the box file has them, else the central region) or the border '
             '(the outer eighth of each side, lungs excluded), mean ± sd over seeds:', '']
    rows = []
    for scored in _reported(results[methods[0]]):
        for condition in ('lungs', 'border'):
            cells = [f'{scored}: {condition} hidden']
            for m in methods:
                reports = results[m][scored]['hiding']
                kept = [r[condition]['focus_kept'] for r in reports if r[condition]['focus_kept'] is not None]
                cells += [_mean_std([r[condition]['answers_changed'] for r in reports]),
                          _mean_std(kept) if kept else 'n/a']
            rows.append(cells)
    lines.append(markdown_table(['images', *(f'{m} {what}' for m in methods
                                             for what in ('answers changed', 'COVID-19 answers kept'))], rows))
    return lines


def run_cxr_suite(args: argparse.Namespace) -> str:
    """MAG-SD and the plain backbone, same data, budget and recipe, over seeds: test metrics with spreads and CIs;
    leaving a source out, its scores too; and the shortcut measures."""
    from magsd_timm.evaluation.localization import load_boxes, localization_report
    from magsd_timm.evaluation.metrics import defined_mean
    from magsd_timm.evaluation.report import per_source_metrics
    from magsd_timm.train.run_folder import RunFolder

    if args.data is None:
        raise BadInputError('--suite cxr needs --data PREPARED (recipes/prepare_data.py)')
    args.probe = _probe_in_data(args)  # once: every run and every scored set use what it finds
    methods = {'MAG-SD': 'magsd', 'baseline': 'baseline'}
    boxes = load_boxes(args.boxes) if args.boxes else None  # read once, for the hiding and the maps
    results: Dict[str, Dict[str, Any]] = {}
    records: List[Dict[str, Any]] = []
    start = time.perf_counter()
    for name, method in methods.items():
        folders = [_train_run(args, method, seed) for seed in args.seeds]
        records += [RunFolder(folder).read_args() for folder in folders]
        results[name] = _method_results([_run_probabilities(folder, args) for folder in folders], args, boxes)
    minutes = (time.perf_counter() - start) / 60
    main = 'in distribution' if _held_out(args) else 'test'
    class_names = results['MAG-SD'][main]['class_names']
    names = list(methods)

    def ci(name: str, key: str, cls: Optional[str] = None) -> str:
        bounds = results[name][main]['intervals'][key]
        low, high = bounds[cls] if cls else bounds
        return f'[{low:.3f}, {high:.3f}]'

    # what the runs' records say, not what this invocation asked (a reused run was checked to match)
    shared = {k: v for k, v in records[0].items()
              if k not in ('method', 'seed', 'output', 'command', 'resume') and all(r.get(k) == v for r in records)}
    held = ' '.join(f'`{name}`' for name in _held_out(args))
    scored = (f"the test split of `{display(shown_path(args.data))}` without {held}, which was left out of training "
              'and validation' if held else f'the test split of `{display(shown_path(args.data))}`')
    lines = [f"MAG-SD ({shared.get('model')}) against its plain backbone, trained alike ({shared.get('epochs')} "
             f"epochs, {shared.get('img_size')} px, batch {shared.get('batch_size')}, optimizer {shared.get('opt')} "
             f"lr {shared.get('lr')}, schedule {shared.get('sched')}, pretrained {shared.get('pretrained')}, "
             f"{shared.get('freeze_stages')} stages frozen, balance {shared.get('balance')}, "
             f"{shared.get('epoch_samples') or 'all'} draws an epoch, augment {shared.get('augment')}, source "
             f"adversary {shared.get('source_adversary')}, films cut to the lungs by "
             f"{display(shown_path(shared['crop_lungs'])) if shared.get('crop_lungs') else 'no detector'}, as the runs' "
             f"args.yaml record), seeds {', '.join(map(str, sorted({r.get('seed') for r in records})))}, on {scored} "
             f"({len(results['MAG-SD'][main]['labels'])} images): mean ± standard deviation over seeds, and the 95% "
             f"bootstrap interval (over patients) of the seed mean. {minutes:.0f} minutes for this invocation "
             '(training runs found complete are reused).', '']
    table = []
    for key in ('accuracy', 'macro_f1'):
        cells = _seed_scores(results, names, lambda m, key=key: m[key], main)
        table.append([key, *(f'{c} {ci(n, key)}' for c, n in zip(cells, names))])
    table.append(['macro AUROC', *_seed_scores(results, names, lambda m: defined_mean(list(m['auroc'].values())),
                                               main)])
    for metric in ('sensitivity', 'specificity', 'auroc'):
        for c in class_names:
            cells = _seed_scores(results, names, lambda m, metric=metric, c=c: m[metric][c], main)
            table.append([f'{metric}: {c}', *(f'{v} {ci(n, metric, c)}' for v, n in zip(cells, names))])
    lines.append(markdown_table(['metric', *names], table))
    gain = (statistics.mean(m['macro_f1'] for m in results['MAG-SD'][main]['per_seed'])
            - statistics.mean(m['macro_f1'] for m in results['baseline'][main]['per_seed']))
    lines += ['', f'Macro F1, MAG-SD minus baseline: {gain:+.3f} (target >= +{CXR_TARGET:.2f}: '
                  f'{_verdict(gain >= CXR_TARGET)}).', '']
    if args.holdout_source:
        lines += _holdout_lines(results, names, args) + ['']
    if args.unseen_covid_source:
        summary = unseen_summary(results, names, args)
        summary['in_distribution'] = {n: dict(macro_f1=[m['macro_f1'] for m in results[n][main]['per_seed']],
                                              macro_f1_interval=list(results[n][main]['intervals']['macro_f1']))
                                      for n in names}
        summary['runs'] = records  # each run's args.yaml: the settings, the data's SHA-256, the command
        summary['command'] = 'python recipes/benchmark.py ' + shlex.join(args.argv)
        write_text_atomic(args.output_dir / f'{_table_name(args)}.json', strict_json(summary), 'cxr summary')
        lines += _unseen_lines(summary, names) + ['']
    covid = 'COVID-19' in class_names
    source_rows = []
    for scored_set in _reported(results['MAG-SD']):
        by_run = {n: [per_source_metrics(p, results[n][scored_set]['labels'],
                                         results[n][scored_set]['dataset'].column('source'), class_names)
                      for p in results[n][scored_set]['probs']] for n in names}
        for source, (count, _, _) in by_run['MAG-SD'][0].items():
            cells = [source, scored_set, count]
            for n in names:
                scores = [run[source][2] for run in by_run[n]]
                cells += [_mean_std([m['accuracy'] for m in scores]), _mean_std([m['macro_f1'] for m in scores])]
                cells += [_mean_std([m[k]['COVID-19'] for m in scores]) for k in ('sensitivity', 'specificity')] \
                    if covid else []
            source_rows.append(cells)
    columns = ['accuracy', 'macro F1', *(['COVID-19 sensitivity', 'COVID-19 specificity'] if covid else [])]
    lines += ['Per source (macro F1 over the classes each source holds):', '',
              markdown_table(['source', 'scored', 'images', *(f'{n} {c}' for n in names for c in columns)], source_rows), '']
    lines += _shortcut_lines(results, names)
    if args.boxes:
        where = {n: [localization_report(model, results[n][main]['dataset'], boxes, replicates=args.bootstrap)
                     for model in results[n]['models']] for n in names}
        with torch.no_grad():  # the side of MA-Net's attention maps at this input size
            image = results['MAG-SD'][main]['dataset'][0][0][None].to(args.device)
            side = int(results['MAG-SD']['models'][0].forward_with_attention(image)[1].shape[-1])
        mass = {n: statistics.mean(w['mass_in_boxes'] for w in where[n]) for n in names}
        lines += ['', f'Where they look, on the {main} images with boxes in `{display(shown_path(args.boxes))}` '
                      '(mean ± sd over seeds):', '',
                  markdown_table(['heat map', 'share inside the boxes', 'pointing game'], [
                      [where[n][0]['method'], _mean_std([w['mass_in_boxes'] for w in where[n]]),
                       _mean_std([w['pointing_hit_rate'] for w in where[n]])] for n in names]),
                  '', f"The boxes cover {where['MAG-SD'][0]['box_area_share']:.3f} of the image: a uniform map would "
                      "put that share inside them. MA-Net's display map: "
                      f"{mass['MAG-SD']:.3f} inside (target >= {MAP_TARGET:.1f} with maps of at least 7 x 7, here "
                      f"about {side} x {side}, and above Grad-CAM's {mass['baseline']:.3f}: "
                      f"{_verdict(mass['MAG-SD'] >= MAP_TARGET and side >= 7 and mass['MAG-SD'] > mass['baseline'])})."]
    return '\n'.join(lines)


# ---- suite `near-copies`: made copies found among real films, and the time it takes ------------------

def _film_files(folders: Sequence[Path], flag: str) -> List[Path]:
    """The films of the folders a flag gives (every image file below them), or the bundled sample."""
    from magsd_timm.data.sample import sample_records
    from magsd_timm.data.sources import IMAGE_SUFFIXES

    if not folders:
        return [Path(r['path']) for r in sample_records()]
    files = sorted(p for folder in folders for p in Path(folder).rglob('*')
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"{flag} {' '.join(map(shown_path, folders))}: no image files.")
    return files


def run_near_copy_suite(args: argparse.Namespace) -> str:
    """Recall per kind of made copy, precision, pairs among the folders' own files, and the time."""
    import json
    import random
    import resource

    from PIL import Image

    from magsd_timm.data.near_copies import COPY_KINDS, fingerprint, near_copy_groups, near_copy_pairs
    from magsd_timm.data.reader import image_to_array, read_image

    files = _film_files(args.near_copy_images, '--near-copy-images')
    rng = random.Random(args.seeds[0])
    drawn = rng.sample(files, min(args.near_copy_films, len(files)))
    others = [p for p in files if p not in set(drawn)]
    rng.shuffle(others)
    own = drawn + others[:max(0, args.near_copy_total - len(drawn) * (1 + len(COPY_KINDS)))]
    start = time.perf_counter()
    prints = [fingerprint(read_image(p)) for p in own]
    per_file = (time.perf_counter() - start) / len(own)
    made = []  # (index of its film in own, kind)
    for i, path in enumerate(drawn):
        film = Image.fromarray((read_image(path) * 255).round().astype('uint8'))
        for kind, copy in COPY_KINDS.items():
            prints.append(fingerprint(image_to_array(copy(film))))
            made.append((i, kind))
    kept = sum(p.whole.nbytes + p.equalised.nbytes for p in prints)
    start = time.perf_counter()
    pairs = near_copy_pairs(prints)
    search = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    film_of = {len(own) + m: i for m, (i, _) in enumerate(made)}  # a made copy's film; own files are their own
    group = {i: n for n, g in enumerate(near_copy_groups(len(prints), list(pairs))) for i in g}
    lines = [f'{len(prints)} images searched: {len(own)} files of {len(files)} in '
             f"{', '.join(shown_path(f) for f in args.near_copy_images) or 'the bundled sample'}, and "
             f'{len(made)} copies made of {len(drawn)} of them (seed {args.seeds[0]}).', '',
             '| copy made | found with its film (recall) |', '|---|---|']
    for kind in COPY_KINDS:
        found = [group.get(len(own) + m, -1) == group.get(i, -2) for m, (i, k) in enumerate(made) if k == kind]
        lines.append(f'| {kind} | {sum(found)} / {len(found)} = {sum(found) / len(found):.3f} |')
    with_copy = [(i, j) for i, j in pairs if j >= len(own)]  # i < j: a made copy is always j
    own_pairs = sorted((i, j) for i, j in pairs if j < len(own))
    right = sum(film_of.get(i, i) == film_of[j] for i, j in with_copy)
    copies_of = {i: {j for pair in own_pairs if i in pair for j in pair} for i in range(len(drawn))}
    also = sum(film_of.get(i, i) != film_of[j] and i in copies_of[film_of[j]] for i, j in with_copy)
    lines += ['', f'Precision over the {len(with_copy)} pairs found that hold a made copy: {right} join it to its own '
                  f'film or its other copies = {right / max(1, len(with_copy)):.4f}; {also} more join it to a file '
                  f'found to be a copy of its film (a real copy in the collection, listed below), and with them '
                  f'{(right + also) / max(1, len(with_copy)):.4f}.',
              f'Pairs found among the files themselves: {len(own_pairs)} (real copies in the collection, or false '
              'matches: listed in near-copies-found.json to look at).',
              f'Time: {1e3 * per_file:.1f} ms per file (read and fingerprint, one process); the search of all '
              f'{len(prints)} images {search:.1f} s.',
              f'Memory: {kept / len(prints) / 1024:.1f} KB kept per image for the search (its fingerprint); the '
              f'process peaked at {peak / 2 ** 20:.0f} MiB resident.']
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / 'near-copies-found.json').write_text(json.dumps(
        [dict(a=display(own[i]), b=display(own[j]), score=round(pairs[i, j], 4)) for i, j in own_pairs], indent=1))
    return '\n'.join(lines)


SUITES = {'model': run_model_suite, 'step': run_step_suite, 'data': run_data_suite, 'trainer': run_trainer_suite,
          'throughput': run_throughput_suite, 'attention': run_attention_suite, 'cli': run_cli_suite,
          'cxr': run_cxr_suite, 'near-copies': run_near_copy_suite, 'predict': run_predict_suite}
NAMED_ONLY = ('cxr', 'near-copies', 'predict')  # they read real data or a trained model: run only when named


def main(argv: List[str]) -> int:
    """Run the chosen suites, print their tables and write them to --output-dir; an error is one line and its code."""
    from magsd_timm.cli.console import run_command

    args = _parse_args(argv)
    return run_command('benchmark.py', lambda: _benchmark(args), args.traceback)


def _benchmark(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    header = (f'Machine: {_machine(args)}. Setting: {args.device}, {args.dtype}, batch {args.batch_size}, '
              f'{args.img_size} px, {args.model} vs {args.baseline}.\n\n')
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, run in SUITES.items():
        if args.suite != name and (args.suite != 'all' or name in NAMED_ONLY):
            continue
        table = (f'Machine: {_machine(args)}.\n\n' if name in NAMED_ONLY else header) + run(args) + '\n'
        print(table)
        written = args.output_dir / f"{_table_name(args) if name == 'cxr' else name}.md"
        written.write_text(table)
        print(f'written to {written}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
