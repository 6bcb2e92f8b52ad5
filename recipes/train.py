#!/usr/bin/env python3
"""Train MA-Net with the MAG-SD objective (or a plain backbone with cross-entropy) using accelerate.

    accelerate launch recipes/train.py                          # magsd_resnet18 on the bundled sample, CPU ok
    accelerate launch recipes/train.py -c recipes/configs/paper.yaml --data out/cxr   # the authors' recipe
    accelerate launch recipes/train.py -c runs/RUN/args.yaml --output runs/again     # replay a run exactly
    accelerate launch recipes/train.py --output runs/RUN --resume   # continue from the last checkpoint

Without --output, each run gets a new folder runs/DATE-TIME-MODEL-SIZE (as timm's train.py names them).

The output folder (its layout: magsd_timm/run_records.py) holds resumable checkpoints, best/ and final/ in
timm's Hub format, the run's arguments, per-epoch summary and curves, the best checkpoint's validation
report, the images left out, and TensorBoard logs when tensorboard is installed. One training update
is magsd_timm.train.loop.train_step. Every image is decoded once before the first step; one run at a
time may write an output.
"""
import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from magsd_timm.cli.console import (
    EXIT_CODES,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_THREADS,
    MAX_WORKERS,
    CommandParser,
    HelpFormatter,
    add_config_flag,
    add_traceback_flag,
    add_version_flag,
    config_records,
    extras_needed,
    json_object,
    number,
    parse_with_config,
    run_command,
    spelled,
)

with extras_needed('train.py'):  # accelerate, opencv, datasets: pip install "magsd-timm[train]"
    import timm
    import timm.optim
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, is_tensorboard_available, set_seed
    from timm.utils import ModelEmaV3
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    import magsd_timm  # noqa: F401  (registers the magsd_* models)
    from magsd_timm.data.dataset import BalancedSampler, CXRDataset, open_dataset
    from magsd_timm.data.transforms import augment_spec, build_transforms, resolve_cxr_data_config
    from magsd_timm.errors import BadInputError, display
    from magsd_timm.hub.cards import render_model_card
    from magsd_timm.method.objective import MagSDObjective
    from magsd_timm.models import close_matches
    from magsd_timm.models.config import MAX_INPUT_SIDE, MIN_INPUT_SIDE, check_input_fits
    from magsd_timm.models.lung_detector import DETECTOR_WEIGHTS, LungDetector, load_detector
    from magsd_timm.models.offline_weights import create_pretrained
    from magsd_timm.run_records import BEST, FINAL, TrainingRun, read_args, setting_differences
    from magsd_timm.train.adversary import SourceAdversary, SourceLabelled, source_names
    from magsd_timm.train.centres import FeatureCentres
    from magsd_timm.train.checkpoint import TrainProgress, latest_checkpoint, save_checkpoint
    from magsd_timm.train.loop import TrainSetup, train_step, validate
    from magsd_timm.train.optim import (
        SCHEDULES,
        TIMM_SCHEDULES,
        create_optimizer,
        create_schedule,
        freeze_stages,
        optimizer_problem,
    )
    from magsd_timm.train.run_folder import RunFolder, new_run_path
    from magsd_timm.utils.digest import file_sha256, json_sha256
    from magsd_timm.utils.seeds import seeded_generator

BEST_METRICS = ('macro_f1', 'accuracy')
# what args.yaml records beside the settings: a config file may hold them and they set nothing, but a replay
# (-c RUN/args.yaml) must use the data and the lung detector whose digests it records (check_replay)
RECORD_ONLY = ('command', 'data_sha256', 'crop_lungs_sha256')
# the demo's last lines: what a run on the bundled sample (no --data) can and cannot show
SAMPLE_NOTE = ('The bundled sample is 16 films ({train} trained on, {validation} validated on): enough to show that '
               'training, checkpoints, reports and the model card work end to end, not to learn the disease. Its '
               'scores mean nothing, and its model may call every film one class. To train a real model, prepare '
               'public chest X-rays (docs/data.md) and pass --data.')
RUNS = Path('runs')  # where each run without --output gets a folder of its own


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(description=__doc__, epilog=EXIT_CODES, formatter_class=HelpFormatter)
    add_config_flag(parser, 'a YAML file of settings (keys as in a run\'s args.yaml), e.g. '
                            'recipes/configs/paper.yaml or RUN/args.yaml to replay a run; flags override it')
    group = parser.add_argument_group('model')
    group.add_argument('--model', default='magsd_resnet18', help='magsd_* model (or, with --method baseline, any)')
    group.add_argument('--method', default='magsd', choices=['magsd', 'baseline'],
                       help='baseline: the plain backbone with cross-entropy, for ablations')
    group.add_argument('--model-kwargs', type=json_object, default={}, help='JSON object of extra model arguments')
    group.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=False,
                       help='start from pretrained (backbone) weights')
    group.add_argument('--freeze-stages', type=number(int, 0, 100), default=0,
                       help='freeze the first N stages of the backbone (stem first; timm\'s group_matcher) '
                            'with their BatchNorm statistics: faster steps when fine-tuning pretrained weights')
    group = parser.add_argument_group('data')
    group.add_argument('--data', default=None,
                       help='prepared dataset folder, image folder, hf-hub:ORG/NAME (default: the bundled sample)')
    group.add_argument('--img-size', type=number(int, MIN_INPUT_SIDE, MAX_INPUT_SIDE), default=224,
                       help='input side in pixels (the film is resized whole, aspect not kept)')
    group.add_argument('--augment', default='mild', type=spelled(augment_spec),
                       help="training augmentation: 'published' is the paper's, 'mild' keeps the anatomy, 'none'; "
                            "then any of +intensity +blur +noise +jpeg +resample +geometry +border, or +hospital "
                            "for all (what differs between hospitals, docs/training.md), e.g. mild+hospital")
    group.add_argument('--balance', default='none', choices=['none', 'sampler', 'class-source', 'loss'],
                       help='class balance: draw classes equally often (class-source: and within a class its '
                            'sources equally often), or weight the cross-entropy')
    group.add_argument('--epoch-samples', type=number(int, 1, 10 ** 8), default=None, metavar='N',
                       help='with --balance sampler or class-source: N draws make an epoch (default: as many as '
                            'training images), so that an epoch costs the same on data of any size')
    group.add_argument('--exclude-sources', nargs='+', default=[], metavar='SOURCE[:CLASS]',
                       help='leave the images of these sources out of training and validation (leave one source '
                            'out: test on them); SOURCE:CLASS leaves out one class of a source (e.g. '
                            'ieee8023:COVID-19: test on COVID-19 films of a source never seen)')
    group.add_argument('--crop-lungs', type=Path, default=None, metavar='DETECTOR',
                       help='cut every film to its lungs first, with this lung detector (a folder of '
                            'recipes/train_lung_detector.py); best/ and final/ carry it, so that predict and '
                            'evaluate cut alike')
    group.add_argument('--batch-size', type=number(int, 1, MAX_BATCH_SIZE), default=8, help='images per step and process')
    group.add_argument('--workers', type=number(int, 0, MAX_WORKERS), default=0, help='data loader worker processes')
    group.add_argument('--cache-images', action=argparse.BooleanOptionalAction, default=True,
                       help='decode, resize and equalise each image once and keep it in memory for every '
                            'epoch (the same tensors, less work); --no-cache-images for data larger than memory')
    group = parser.add_argument_group('optimisation (the authors\' recipe: -c recipes/configs/paper.yaml)')
    group.add_argument('--epochs', type=number(int, 1, MAX_EPOCHS), default=4, help='passes over the training split')
    group.add_argument('--opt', default='adamw',
                       help="'paper' (the authors' SGD with Nesterov momentum, all parameters decayed) or any timm "
                            'optimizer name')
    group.add_argument('--lr', type=number(float, 0, low_open=True), default=3e-4, help='peak learning rate')
    group.add_argument('--momentum', type=number(float, 0, 1, high_open=True), default=0.9,
                       help='momentum of SGD-like optimizers')
    group.add_argument('--weight-decay', type=number(float, 0), default=0.05, help='weight decay')
    group.add_argument('--head-lr-scale', type=number(float, 0, low_open=True), default=1.,
                       help="multiplies the classifier's learning rate (MA-Net's x100-scaled head moves its logits "
                            'by about 1e4 x lr per step)')
    group.add_argument('--sched', default='cosine',
                       help="cosine, step (the paper's x0.1 at 50%% and 83%% of the run), constant, or timm:NAME for "
                            "timm's scheduler factory (timm:tanh, timm:poly, ...)")
    group.add_argument('--warmup-epochs', type=number(float, 0), default=1., help='linear learning-rate warmup')
    group.add_argument('--grad-accum', type=number(int, 1, MAX_BATCH_SIZE), default=1,
                       help='steps whose gradients make one update')
    group.add_argument('--clip-grad', type=number(float, 0, low_open=True), default=None,
                       help='clip the gradient norm to this value (> 0)')
    group.add_argument('--model-ema', type=number(float, 0, 1, low_open=True, high_open=True), default=None,
                       metavar='DECAY', help='keep an EMA of the weights (0 < DECAY < 1, e.g. 0.999); it is '
                                             'evaluated and exported')
    group.add_argument('--source-adversary', type=number(float, 0, 10), default=0., metavar='WEIGHT',
                       help='train against the source: a head predicts each film\'s source (given its class) from the '
                            'pooled features, behind a gradient reversal of this weight (domain-adversarial training; '
                            '0: off; docs/training.md)')
    group.add_argument('--attention-diversity', type=number(float, 0, 100), default=0., metavar='WEIGHT',
                       help="MAG-SD only: add WEIGHT times the overlap of each film's attention maps (their mean "
                            'cosine similarity two by two) to the loss, pushing the maps apart (0: off, the '
                            "authors' method; attention dropout is a model argument: --model-kwargs "
                            '\'{"attn_drop_rate": 0.25}\')')
    group.add_argument('--centre-loss', type=number(float, 0, 100), default=0., metavar='WEIGHT',
                       help="MAG-SD only: add WEIGHT times WS-DAN's feature-centre loss, the squared distance of each "
                            "film's pooled part features to a running centre of its class's, so that each attention "
                            "map pools the same part in every film (0: off, the authors' method)")
    group.add_argument('--label-smoothing', type=number(float, 0, 1, high_open=True), default=0.,
                       help='baseline cross-entropy only')
    group.add_argument('--seed', type=number(int, 0, 2 ** 32 - 1), default=0,
                       help='seeds the weights, the split of unsplit sources, the batches and the augmentation')
    group = parser.add_argument_group('run folder')
    group.add_argument('--output', type=Path, default=None,
                       help='the run folder (default: a new runs/DATE-TIME-MODEL-SIZE for each run)')
    group.add_argument('--resume', action='store_true', help='continue from the last checkpoint in --output')
    group.add_argument('--checkpoint-every', type=number(int, 0), default=0,
                       help='also checkpoint every N steps (0: at epoch ends only)')
    group.add_argument('--keep-checkpoints', type=number(int, 1, 1000), default=2,
                       help='resumable checkpoints kept while the run trains')
    group.add_argument('--keep-finished-checkpoints', action='store_true',
                       help='keep them once the run has finished too (removed by default: they hold the optimizer '
                            "state, about twice the model's size, and only a resume needs them)")
    group.add_argument('--best-metric', default='macro_f1', choices=BEST_METRICS,
                       help='the validation metric that chooses best/')
    group = parser.add_argument_group('hardware')
    group.add_argument('--cpu', action=argparse.BooleanOptionalAction, default=False,
                       help='train on the CPU (Accelerator(cpu=True))')
    group.add_argument('--mixed-precision', default=None, choices=['no', 'bf16', 'fp16'],
                       help="default: accelerate's config")
    group.add_argument('--threads', type=number(int, 0, MAX_THREADS), default=0,
                       help='CPU threads of each process training on the CPU; 0: the physical cores shared by the '
                            'processes of this machine (accelerate launch gives each one thread unless launched '
                            'with --cpu or --num_cpu_threads_per_process)')
    add_traceback_flag(parser)
    add_version_flag(parser)
    return parser


def _parse_args(argv: List[str]) -> argparse.Namespace:
    parser = _parser()
    args = parse_with_config(parser, argv, ignore=RECORD_ONLY)
    if args.sched not in SCHEDULES and args.sched.removeprefix('timm:') not in TIMM_SCHEDULES:
        parser.error(f"--sched {args.sched}: choose {', '.join(SCHEDULES)} or timm:NAME with NAME one of "
                     f"{', '.join(TIMM_SCHEDULES)}")
    if args.sched not in SCHEDULES and not args.sched.startswith('timm:'):
        parser.error(f'--sched {args.sched}: did you mean timm:{args.sched}?')
    problem = optimizer_problem(args.opt)
    if problem:
        known = args.opt.lower() in timm.optim.list_optimizers()
        parser.error(f'--opt {args.opt}: {problem}'
                     + ('' if known else close_matches(args.opt.lower(), timm.optim.list_optimizers())))
    if not timm.is_model(args.model.split('.')[0]):
        parser.error(f'--model {args.model}: unknown model.{close_matches(args.model, timm.list_models())}')
    if args.resume and args.output is None:
        parser.error('--resume continues a run: give its folder with --output')
    if args.epoch_samples is not None and args.balance not in ('sampler', 'class-source'):
        parser.error(f'--epoch-samples {args.epoch_samples}: sets the draws of balanced sampling; give --balance '
                     'sampler or class-source, or leave it out (an epoch is then one pass over the training split)')
    if args.attention_diversity and args.method != 'magsd':
        parser.error(f'--attention-diversity {args.attention_diversity:g}: the plain backbone (--method baseline) has '
                     'no attention maps to push apart')
    if args.centre_loss and args.method != 'magsd':
        parser.error(f'--centre-loss {args.centre_loss:g}: the plain backbone (--method baseline) pools no part '
                     'features for centres to gather')
    if args.method == 'magsd' and not args.model.startswith('magsd_'):
        parser.error(f"--model {args.model}: the MAG-SD method needs a magsd_* model (or use --method baseline)")
    return args


def recorded_args(args: argparse.Namespace, train_set: CXRDataset, val_set: CXRDataset) -> Dict[str, Any]:
    """The arguments as args.yaml records them (what resumes and benchmark reuses compare), with the fingerprint of
    the data the run trains and validates on, and the digest of the lung detector's weights when films are cut to
    their lungs: a run is continued, reused or replayed on the same data and detector, or not at all."""
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'traceback'}
    recorded['data_sha256'] = json_sha256({'train': train_set.fingerprint(), 'validation': val_set.fingerprint()})
    weights = args.crop_lungs / DETECTOR_WEIGHTS if args.crop_lungs else None
    if weights is not None:
        recorded['crop_lungs_sha256'] = file_sha256(weights) if weights.is_file() else None
    return recorded


def check_replay(recorded: Dict[str, Any], replayed: Dict[str, Any], config: Optional[str]) -> None:
    """Refuse a -c RUN/args.yaml replay whose data or lung detector is not the one the recorded run used."""
    what = {'data_sha256': ('data', '--data'), 'crop_lungs_sha256': ("lung detector's weights", '--crop-lungs')}
    for key, (thing, flag) in what.items():
        if replayed.get(key) is not None and replayed[key] != recorded.get(key):
            raise BadInputError(
                f'-c {display(config)}: the run it records used other {thing} than {flag} gives now ({key} '
                f'{str(replayed[key])[:12]}... then, {str(recorded.get(key))[:12]}... now); a replay repeats a run '
                f'on what it used: give that, or remove {key} from the file to train a new run.')


def training_splits(args: argparse.Namespace, data_config: Optional[Dict[str, Any]] = None,
                    crop: Optional[LungDetector] = None) -> Tuple[CXRDataset, CXRDataset]:
    """The train and validation splits a run of these arguments uses (sources excluded), no image read yet; with
    their transforms when data_config is given (films cut to the lungs by crop)."""
    train_transform, val_transform = (None, None) if data_config is None else (
        build_transforms(data_config, train=True, augment=args.augment, crop=crop), build_transforms(data_config, crop=crop))
    train_set = open_dataset(args.data, 'train', train_transform, seed=args.seed, augment_seed=args.seed)
    val_set = open_dataset(args.data, 'validation', val_transform, seed=args.seed)
    if args.exclude_sources:
        _check_exclusions(args, train_set, val_set)
        train_set, val_set = (split.without_sources(args.exclude_sources) for split in (train_set, val_set))
    return train_set, val_set


def _check_exclusions(args: argparse.Namespace, train_set: CXRDataset, val_set: CXRDataset) -> None:
    """Refuse an --exclude-sources name that takes no film: a source, or a source's class, the data does not hold."""
    held = {(source, train_set.class_names[k]) for split in (train_set, val_set)
            for source, k in zip(split.column('source'), split.labels()) if source is not None}
    known = sorted({source for source, _ in held})
    where = display(args.data or 'the bundled sample')
    for name in args.exclude_sources:
        source, _, label = name.partition(':')
        if source not in known:
            raise BadInputError(f"--exclude-sources {name}: no such source in {where} "
                                f"(it has {', '.join(known) or 'none'}).")
        if label and (source, label) not in held:
            classes = sorted(c for s, c in held if s == source)
            raise BadInputError(f"--exclude-sources {name}: {source} has no {label} film in the training or validation "
                                f"split of {where} (its classes there: {', '.join(classes)}).")


def _baseline_of(args: argparse.Namespace) -> Optional[torch.nn.Module]:
    """The MA-Net (structure only, on 'meta') whose plain backbone a --method baseline run of a magsd_* model trains."""
    if args.method == 'baseline' and args.model.startswith('magsd_'):
        return timm.create_model(args.model, device='meta', **args.model_kwargs)
    return None


def _create_model(args: argparse.Namespace, num_classes: int, meta: bool = False) -> torch.nn.Module:
    """The model to train; meta: only its structure and config (no weights, nothing downloaded)."""
    name, kwargs = args.model, dict(args.model_kwargs)
    manet = _baseline_of(args)
    if manet is not None:  # the MA-Net's own backbone, as it builds it
        name, kwargs = manet.backbone_name, dict(manet.backbone_kwargs)
    kwargs.update(num_classes=num_classes, in_chans=1)
    try:
        if meta:
            return timm.create_model(name, device='meta', **kwargs)
        if args.pretrained and not name.startswith('magsd_'):  # MA-Net builds its backbone the same way
            return create_pretrained(name, **kwargs)
        return timm.create_model(name, pretrained=args.pretrained, **kwargs)
    except TypeError as e:  # a plain timm model refusing an argument it does not take
        raise BadInputError(f'--model-kwargs {json.dumps(args.model_kwargs)} do not fit {name} ({e}).') from e


def _freeze(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """Freeze the first --freeze-stages stages; a baseline freezes what its MA-Net would (its stages by name)."""
    if not args.freeze_stages:
        return
    grouped_by = _baseline_of(args)
    prefix = grouped_by._timm_backbone()[1] if grouped_by is not None else ''
    try:
        freeze_stages(model, args.freeze_stages, grouped_by, prefix)
    except ValueError as e:
        raise BadInputError(str(e)) from e


def _score(metrics: Dict[str, Any], name: str) -> float:
    value = float(metrics[name])
    return value if math.isfinite(value) else float('-inf')


def _claim_output(accelerator: Accelerator, run: RunFolder, resume: bool, stack: contextlib.ExitStack) -> None:
    """The main process claims the run folder for the run; every process stops if it cannot."""
    error = None
    if accelerator.is_main_process:
        try:
            for note in run.claim(stack, resume):
                accelerator.print(f'train.py: {note}')
        except BadInputError as e:
            error = str(e)
    error = broadcast_object_list([error])[0]
    if error:
        raise BadInputError(error)


def _check_resume(args: argparse.Namespace, run: RunFolder, recorded: Dict[str, Any]) -> None:
    """Refuse to continue a run on other data, or with any setting that changes its result (epochs, seed, lr, ...)."""
    then = dict(read_args(run.path))
    data_then, data_now = then.pop('data_sha256', None), recorded['data_sha256']
    changed = setting_differences(then, {k: v for k, v in recorded.items() if k != 'data_sha256'})
    if data_then != data_now:
        changed.insert(0, f'the data: {display(args.data or "the bundled sample")} holds other films, labels, sources or '
                          f'splits than the run was trained on (data_sha256 {str(data_then)[:12]}... then, '
                          f'{data_now[:12]}... now)')
    if changed:
        raise BadInputError(f'--resume: {display(args.output)} was trained with other settings or data '
                            f'({"; ".join(changed)}); a resumed run continues the same training, so resume with the '
                            'same settings and data (to train longer or otherwise, start a new --output).')


def _checked_split(dataset: CXRDataset, split: str, accelerator: Accelerator, keep: bool) -> CXRDataset:
    """The split without the images that cannot be read or are too small (each said), before any step runs;
    keep: their deterministic preprocessing kept from this pass for every epoch."""
    dataset, problems = dataset.readable(keep=keep)
    for _, why in problems[:10]:
        accelerator.print(f'train.py: skipped from the {split} split: {display(why)}')
    if len(problems) > 10:
        accelerator.print(f'train.py: ... and {len(problems) - 10} more (all listed in skipped.json)')
    if not len(dataset):
        work = 'train' if split == 'train' else 'validate'
        raise BadInputError(f'the {split} split has no readable image: nothing to {work} on.')
    return dataset


def _checked_splits(args: argparse.Namespace, train_set: CXRDataset, val_set: CXRDataset,
                    accelerator: Accelerator) -> Tuple[CXRDataset, CXRDataset]:
    """The splits without their unreadable images, each said, and refused unless the training split holds two classes."""
    if not len(train_set) and args.exclude_sources:
        raise BadInputError(f"--exclude-sources {' '.join(args.exclude_sources)}: leaves no training image in "
                            f"{display(args.data or 'the bundled sample')}; leave out fewer sources.")
    train_set = _checked_split(train_set, 'train', accelerator, args.cache_images)
    val_set = _checked_split(val_set, 'validation', accelerator, args.cache_images)
    present = sorted({train_set.class_names[k] for k in train_set.labels()})
    if len(present) < 2:
        raise BadInputError(f"the train split of {display(args.data or 'the bundled sample')} holds one class "
                            f"({', '.join(present)}): a classifier needs images of at least two classes.")
    return train_set, val_set


def _loaders(args: argparse.Namespace, train_set: CXRDataset, val_set: CXRDataset):
    """The training loader (shuffled, or balanced draws; with each film's source index when trained against the
    source) and the validation loader."""
    sampler = None
    if args.balance == 'sampler':
        sampler = BalancedSampler(train_set.labels(), args.seed, args.epoch_samples)
    elif args.balance == 'class-source':
        sampler = BalancedSampler(list(zip(train_set.labels(), train_set.column('source'))), args.seed,
                                  args.epoch_samples)
    items = SourceLabelled(train_set, source_names(train_set)) if args.source_adversary else train_set
    train_loader = DataLoader(items, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=args.workers, generator=seeded_generator(args.seed))
    return train_loader, DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers)


def _adversary(args: argparse.Namespace, model: torch.nn.Module, train_set: CXRDataset) -> Optional[SourceAdversary]:
    """The source adversary of --source-adversary (None when 0): refused unless the films come from two sources."""
    if not args.source_adversary:
        return None
    sources = source_names(train_set)
    if sources is None or len(sources) < 2:
        raise BadInputError(f'--source-adversary {args.source_adversary:g}: the training films of '
                            f"{display(args.data or 'the bundled sample')} come from "
                            f"{'films without a recorded source' if sources is None else 'one source'}: there is no "
                            'source to train against (prepare the data with recipes/prepare_data.py from several).')
    return SourceAdversary(model.get_classifier().in_features, len(train_set.class_names), len(sources),
                           args.source_adversary)


def _class_weights(args: argparse.Namespace, train_set: CXRDataset) -> Optional[Tuple[float, ...]]:
    """Cross-entropy weights inverse to the class frequencies (--balance loss), else None."""
    if args.balance != 'loss':
        return None
    labels = train_set.labels()
    counts = [max(labels.count(k), 1) for k in range(len(train_set.class_names))]
    return tuple(len(labels) / (len(counts) * c) for c in counts)


def _training_record(args: argparse.Namespace, class_names: List[str], train_set: CXRDataset,
                     val_set: CXRDataset, epoch: int, pretrained_source: Optional[str], data_sha256: str
                     ) -> Dict[str, Any]:
    """What a checkpoint's classifier was trained on: it is what tells a trained checkpoint from an untrained one."""
    return dict(data=args.data or 'sample', data_sha256=data_sha256, classes=list(class_names), train_images=len(train_set),
                validation_images=len(val_set), epochs=args.epochs, epoch=epoch, img_size=args.img_size,
                method=args.method, model=args.model, pretrained=args.pretrained,
                pretrained_weights=pretrained_source, seed=args.seed, magsd_timm=magsd_timm.__version__)


def main(argv: Optional[List[str]] = None) -> int:
    """Train, validate every epoch, checkpoint, and export the best and final models; the exit code says how."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    return run_command('train.py', lambda: _train(args, argv), args.traceback)


def _output(args: argparse.Namespace) -> Path:
    """--output, or a new run folder named by the main process and the same in every process."""
    if args.output is not None:
        return args.output
    state = PartialState(cpu=args.cpu)  # what Accelerator sets up below, needed here to share the name
    name = [str(new_run_path(RUNS, args.model, args.img_size)) if state.is_main_process else None]
    return Path(broadcast_object_list(name)[0])


def _train(args: argparse.Namespace, argv: List[str]) -> int:
    args.output = _output(args)
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with='tensorboard' if is_tensorboard_available() else None, project_dir=str(args.output))
    run = RunFolder(args.output)
    with contextlib.ExitStack() as stack:
        if accelerator.device.type == 'cpu':
            stack.enter_context(_threads(cpu_threads(args.threads, accelerator.num_processes)))
        _claim_output(accelerator, run, args.resume, stack)
        return _run(accelerator, args, argv, run)


def cpu_threads(requested: int, processes: int) -> int:
    """Threads for one of `processes` processes training on the CPU: as requested, else the physical cores shared."""
    if requested:
        return requested
    import psutil  # accelerate's own dependency, which it uses to the same end for `accelerate launch --cpu`

    local = int(os.environ.get('LOCAL_WORLD_SIZE', processes))
    return max(1, (psutil.cpu_count(logical=False) or os.cpu_count() or 1) // max(local, 1))


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to count for the run, and given back after it (the recipe may run in-process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(accelerator: Accelerator, args: argparse.Namespace, argv: List[str], run: RunFolder) -> int:
    # set up: data, model, optimizer, schedule, EMA, objective
    set_seed(args.seed)
    command = 'accelerate launch recipes/train.py ' + shlex.join(argv)
    structure = _create_model(args, 1, meta=True)
    data_config = resolve_cxr_data_config(structure, img_size=args.img_size)
    check_input_fits(structure, data_config['input_size'], f'--model {args.model} --model-kwargs '
                     f'{json.dumps(args.model_kwargs)}', f'(--img-size {args.img_size})')
    crop = load_detector(args.crop_lungs) if args.crop_lungs else None  # no detector there: refused, said
    train_set, val_set = training_splits(args, data_config, crop)
    recorded = recorded_args(args, train_set, val_set)
    config, replayed = config_records(_parser(), argv, RECORD_ONLY)
    check_replay(recorded, replayed, config)
    resuming = args.resume and latest_checkpoint(run.checkpoints) is not None
    finished = args.resume and not resuming and (run.path / FINAL).exists()  # its checkpoints removed at its end
    if resuming or finished:
        _check_resume(args, run, recorded)
    if finished:  # the same settings and data: the run is done, as a resume from its last checkpoint would find it
        accelerator.print(f'--resume: {display(run.path)} finished (final/ is there): nothing to continue.')
        return 0
    train_set, val_set = _checked_splits(args, train_set, val_set, accelerator)
    class_names = train_set.class_names
    model = _create_model(args, len(class_names))
    pretrained_source = getattr(model, 'pretrained_source', None)  # prepare may wrap the model
    _freeze(args, model)
    model = model.to(memory_format=torch.channels_last)  # the fastest form in the step benchmark
    optimizer = create_optimizer(model, args.opt, args.lr, args.momentum, args.weight_decay, args.head_lr_scale)
    adversary = _adversary(args, model, train_set)
    if adversary is not None:  # one optimizer and schedule: the head learns at the network's rate, undecayed
        optimizer.add_param_group({'params': list(adversary.parameters()), 'weight_decay': 0.})
    ema = ModelEmaV3(model, decay=args.model_ema) if args.model_ema else None
    train_loader, val_loader = _loaders(args, train_set, val_set)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    if adversary is not None:  # prepared as a model: wrapped like it, and in every checkpoint
        adversary = accelerator.prepare(adversary)
    scheduler = create_schedule(optimizer, args.sched, args.epochs, math.ceil(len(train_loader) / args.grad_accum),
                                args.warmup_epochs)
    class_weights = _class_weights(args, train_set)
    centres = FeatureCentres(accelerator.unwrap_model(model).get_classifier().in_features, len(class_names),
                             args.centre_loss).to(accelerator.device) if args.centre_loss else None
    setup = TrainSetup(model, optimizer, scheduler, MagSDObjective(class_weights=class_weights,
                                                                   diversity=args.attention_diversity)
                       if args.method == 'magsd' else None, ema, args.clip_grad, args.label_smoothing,
                       class_weights, args.seed, adversary, len(train_loader) * args.epochs, centres)
    progress = TrainProgress(pretrained_source)
    # the centres are state, not parameters: checkpointed beside the model, so a resume continues them
    for state in (progress, scheduler, *([ema.to(accelerator.device)] if ema is not None else []),
                  *([centres] if centres is not None else [])):
        accelerator.register_for_checkpointing(state)
    summary_rows = _resume(accelerator, args, run, progress) if args.resume else []
    if accelerator.is_main_process:
        if not resuming:  # a resumed run keeps the record (and the command) of the run it continues
            run.write_args(recorded, command)
        # each split's opening dedups the whole source, so a duplicate is listed by both: once is enough
        dropped = [dict(file=f, reason=why) for f, why in dict.fromkeys(train_set.dropped + val_set.dropped)]
        if dropped:
            accelerator.print(f'train.py: left out {len(dropped)} image(s) (duplicates, label conflicts, unreadable '
                              f'files), listed in {display(run.write_skipped(dropped))}')
    accelerator.init_trackers('magsd', config={k: str(v) for k, v in recorded.items()})
    exported = ema.module if ema is not None else accelerator.unwrap_model(model)

    # the loop: train an epoch, validate, save the best, checkpoint
    # closed on an error too, so that its message starts a line of its own, not the bar's
    with tqdm(total=len(train_loader) * args.epochs, initial=progress.global_step, unit='batch',
              disable=not accelerator.is_local_main_process) as bar:
        while progress.epoch < args.epochs:
            model.train()
            train_loader.set_epoch(progress.epoch)
            train_set.set_epoch(progress.epoch)
            logged, clock = [], time.perf_counter()
            for images, labels, *sources in accelerator.skip_first_batches(train_loader, progress.step_in_epoch):
                images = images.contiguous(memory_format=torch.channels_last)
                parts = train_step(accelerator, setup, images, labels, progress, *sources)
                last, clock = clock, time.perf_counter()
                images_per_s = len(images) * accelerator.num_processes / max(clock - last, 1e-9)
                bar.update()
                bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                                img_s=f'{images_per_s:.1f}')
                accelerator.log({f'train/{k}': v for k, v in parts.items()} | {'train/images_per_s': images_per_s},
                                step=progress.global_step)
                logged.append(parts)
                due = args.checkpoint_every and progress.global_step % args.checkpoint_every == 0
                if due and accelerator.sync_gradients:
                    save_checkpoint(accelerator, run.checkpoints, progress.global_step, args.keep_checkpoints)
            metrics = validate(accelerator, ema.module if ema is not None else model, val_loader, class_names)
            row = {'epoch': progress.epoch, 'lr': optimizer.param_groups[0]['lr'],
                   **{f'train_{k}': sum(p[k] for p in logged) / len(logged) for k in (logged[0] if logged else {})},
                   **{f'val_{k}': metrics[k] for k in ('accuracy', 'macro_f1')}}
            summary_rows.append(row)
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            improved = progress.best_metric is None or _score(metrics, args.best_metric) > progress.best_metric
            if improved:
                progress.best_metric = _score(metrics, args.best_metric)
            accelerator.log({f'val/{k}': row[f'val_{k}'] for k in ('accuracy', 'macro_f1')}, step=progress.global_step)
            if accelerator.is_main_process:
                if improved:
                    training = _training_record(args, class_names, train_set, val_set, row['epoch'],
                                                progress.pretrained_source, recorded['data_sha256'])
                    run.save_model(BEST, exported, class_names, data_config, training,
                                   card=lambda folder, metrics=metrics, epoch=row['epoch']: render_model_card(
                                       exported, TrainingRun(folder, recorded, metrics, epoch, command), repo_id='ORG/NAME'),
                                   lung_crop=crop)
                    run.write_best_report(metrics, row['epoch'], class_names)
                run.write_summary(summary_rows)
            bar.write(f"epoch {row['epoch']}: " + ', '.join(f'{k} {v:.3g}' if k == 'lr' else f'{k} {v:.4f}'
                                                            for k, v in row.items() if k != 'epoch'))
            save_checkpoint(accelerator, run.checkpoints, progress.global_step, args.keep_checkpoints)

    # the end: every process agrees, the final model is saved
    _check_ranks_in_sync(accelerator, accelerator.unwrap_model(model))
    if accelerator.is_main_process:
        run.save_model(FINAL, exported, class_names, data_config,
                       _training_record(args, class_names, train_set, val_set, args.epochs - 1,
                                        progress.pretrained_source, recorded['data_sha256']), lung_crop=crop)
        if not args.keep_finished_checkpoints:
            run.remove_checkpoints()
        accelerator.print(f'done: {display(run.path)}. Push the best checkpoint to the Hub with:\n'
                          f'  magsd-hub push-model {display(run.path)} ORG/NAME')
        if args.data is None:
            accelerator.print(SAMPLE_NOTE.format(train=len(train_set), validation=len(val_set)))
    accelerator.end_training()
    return 0


def _resume(accelerator: Accelerator, args: argparse.Namespace, run: RunFolder, progress: TrainProgress
            ) -> List[Dict[str, Any]]:
    """Load the last checkpoint (if any) into the prepared state; the summary rows of the epochs it completed."""
    last = latest_checkpoint(run.checkpoints)
    if last is None:
        accelerator.print(f'--resume: no checkpoint in {display(run.checkpoints)}, starting afresh')
        return []
    try:
        accelerator.load_state(str(last))
    except (RuntimeError, KeyError, ValueError) as e:
        raise BadInputError(f'--resume: {display(last)} does not fit this run\'s model, optimizer or '
                            f'schedule ({" ".join(str(e).split())[:300]}).') from e
    accelerator.print(f'resumed from {display(last)} (epoch {progress.epoch}, step {progress.global_step})')
    return run.read_summary(progress.epoch)


def _check_ranks_in_sync(accelerator, model: torch.nn.Module) -> None:
    """Every process must end with the same weights; say so, or stop with an error."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    sums = accelerator.gather(checksum[None].to(accelerator.device))
    if not torch.all(sums == sums[0]):
        raise RuntimeError(f'processes ended with different weights (checksums {sums.tolist()})')
    accelerator.print(f'{accelerator.num_processes} process(es) in sync: weight checksum {float(sums[0]):.6f}')


if __name__ == '__main__':
    sys.exit(main())
