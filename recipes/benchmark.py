#!/usr/bin/env python3
"""Benchmarks of magsd-timm, reported as ratios measured in one run on one machine.

Each suite is a module of recipes/benchmarks/ (what it measures is below, and in its docstring);
this command picks the suites to run and writes one Markdown table per suite to --output-dir.

    python recipes/benchmark.py                      # CPU, fp32, batch 8, 224 px, 2 threads
    python recipes/benchmark.py --device cuda --dtype bfloat16 --batch-size 32
    python recipes/benchmark.py --suite cxr --data out/cxr --unseen-covid-source radiography
"""
import argparse
import sys
from pathlib import Path
from typing import List

import torch

from benchmarks import NAMED_ONLY, SUITES, cxr, throughput
from benchmarks.common import machine
from magsd_timm.cli.console import (
    EXIT_CODES,
    CommandParser,
    HelpFormatter,
    add_traceback_flag,
    add_version_flag,
    json_object,
)


def _description() -> str:
    """This docstring, then each suite's."""
    return '\n\n'.join([__doc__, *(suite.__doc__.strip() for suite in SUITES.values())])


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(description=_description(), epilog=EXIT_CODES, formatter_class=HelpFormatter)
    parser.add_argument('--suite', default='all',
                        choices=[*SUITES, 'all'],
                        help="'all': every speed suite (cxr, near-copies, predict and maps run only when named)")
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
    parser.add_argument('--attention-test-images', type=int, default=300, help='held-out images of the attention suite')
    parser.add_argument('--attention-seeds', type=int, nargs='+', default=[0, 1, 2],
                        help='attention: one training of each model per seed')
    parser.add_argument('--throughput-models', nargs='+', default=list(throughput.THROUGHPUT_MODELS),
                        help='throughput: the magsd_* models to train')
    parser.add_argument('--throughput-sizes', type=int, nargs='+', default=[64, 128, 224],
                        help='throughput: the image sizes')
    parser.add_argument('--throughput-freeze', type=int, nargs='+', default=[0, 3],
                        help='throughput: numbers of frozen backbone stages (recipes/train.py --freeze-stages)')
    parser.add_argument('--data', type=Path, default=None,
                        help='cxr, throughput, maps: a folder prepared by recipes/prepare_data.py')
    parser.add_argument('--boxes', type=Path, default=None, help='cxr, maps: COCO boxes (e.g. lungs) to score the maps by')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='cxr: one training run per seed')
    parser.add_argument('--cxr-model', default=cxr.CXR_DEFAULTS['model'],
                        help='cxr: the MA-Net (the baseline is its backbone)')
    parser.add_argument('--cxr-epochs', type=int, default=cxr.CXR_DEFAULTS['epochs'], help='cxr: epochs of every run')
    parser.add_argument('--cxr-img-size', type=int, default=cxr.CXR_DEFAULTS['img_size'], help='cxr: input side')
    parser.add_argument('--cxr-batch-size', type=int, default=cxr.CXR_DEFAULTS['batch_size'], help='cxr: batch size')
    parser.add_argument('--train-args', default=cxr.CXR_TRAIN_ARGS,
                        help='cxr: further recipes/train.py flags for both methods')
    parser.add_argument('--magsd-args', default='',
                        help="cxr: recipes/train.py flags for the MAG-SD runs alone (an attention option: "
                             "'--centre-loss 1'); give each such comparison its own --output-dir")
    parser.add_argument('--holdout-source', default=None, metavar='SOURCE',
                        help='cxr: leave this source out of training and validation and score every image of it')
    parser.add_argument('--unseen-covid-source', default=None, metavar='SOURCE',
                        help="cxr: leave this source's COVID-19 films (and the --probe films) out of training and "
                             'validation; score them against the normal films of the test split, at an operating '
                             'point chosen on validation')
    parser.add_argument('--probe', default=cxr.UNSEEN_PROBE, metavar='SOURCE:CLASS',
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
    parser.add_argument('--maps-models', nargs='+', default=['magsd_efficientnet_lite0.cxr_v1'],
                        help='maps: trained models to score every heat map of (run folders, published tags, Hub ids)')
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


def main(argv: List[str]) -> int:
    """Run the chosen suites, print their tables and write them to --output-dir; an error is one line and its code."""
    from magsd_timm.cli.console import run_command

    args = _parse_args(argv)
    return run_command('benchmark.py', lambda: _benchmark(args), args.traceback)


def _benchmark(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    header = (f'Machine: {machine(args)}. Setting: {args.device}, {args.dtype}, batch {args.batch_size}, '
              f'{args.img_size} px, {args.model} vs {args.baseline}.\n\n')
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, suite in SUITES.items():
        if args.suite != name and (args.suite != 'all' or name in NAMED_ONLY):
            continue
        table = (f'Machine: {machine(args)}.\n\n' if name in NAMED_ONLY else header) + suite.run(args) + '\n'
        print(table)
        written = args.output_dir / f"{cxr.table_name(args) if name == 'cxr' else name}.md"
        written.write_text(table)
        print(f'written to {written}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
