"""magsd: predict, evaluate, export and describe MA-Net checkpoints, and push them to the Hub.

MODEL is a registered name (magsd_resnet50, or name.tag for published weights), a Hub id
(org/name, org/name@revision, hf-hub:org/name), or a local folder: a training output of
recipes/train.py (its best/ checkpoint is used) or a checkpoint folder (config.json, model.safetensors).
predict and evaluate refuse a model whose classifier was never trained (its config.json has no
training record, as a bare registered name) unless --allow-untrained is given. push-model and
push-dataset are magsd-hub's commands.
"""
import argparse
from typing import List, Optional

from .console import (
    EXIT_CODES,
    MAX_BATCH_SIZE,
    CommandParser,
    HelpFormatter,
    add_traceback_flag,
    add_version_flag,
    number,
    run_command,
)

__all__ = ['main']


def add_map_choice(command: argparse.ArgumentParser, needs: str) -> None:
    """The --map option of a command that draws heat maps when needs is given."""
    from ..evaluation.map_names import DEFAULT_MAP, MAPS

    command.add_argument('--map', choices=list(MAPS), default=None,
                         help=f'the heat map of {needs} (default: {DEFAULT_MAP}): '
                              + '; '.join(f'{name}: {what}' for name, what in MAPS.items())
                              + '. A model without attention maps gets grad-cam, and its overlays say so')


def _parser() -> argparse.ArgumentParser:
    from .magsd_hub import add_push_commands  # its parser only: the Hub code loads when a push runs

    parser = CommandParser(prog='magsd', description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=HelpFormatter)
    add_version_flag(parser)
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        # help is %-formatted by argparse and the description is not: one text, '%%' said once as '%'
        sub = commands.add_parser(name, help=help_text, description=help_text.replace('%%', '%'), epilog=EXIT_CODES,
                                  formatter_class=HelpFormatter)
        sub.add_argument('model', metavar='MODEL', help='registered name, Hub id or local folder (see magsd --help)')
        sub.add_argument('--allow-pickle', action='store_true',
                         help='load a checkpoint that only has pickle weights (only from a source you trust)')
        if name in ('predict', 'evaluate'):
            sub.add_argument('--allow-untrained', action='store_true',
                             help='run a model whose classifier was never trained (its outputs mean nothing)')
        add_traceback_flag(sub)
        return sub

    predict = command('predict', 'class probabilities of radiographs (PNG, JPEG, 16-bit, DICOM), with heat maps')
    predict.add_argument('inputs', metavar='INPUT', nargs='+', help='files, folders (searched recursively) or globs')
    predict.add_argument('--format', choices=['table', 'json', 'csv'], default=None,
                         help="output format (default: --output's extension, .json or .csv, else table)")
    predict.add_argument('--output', help='write the table/JSON/CSV here (default: standard output)')
    predict.add_argument('--heatmap', metavar='DIR', help='write a heat-map overlay PNG per image to DIR')
    add_map_choice(predict, '--heatmap')
    predict.add_argument('--tta', action='store_true', help='attention test-time augmentation (raw + attention crop)')
    predict.add_argument('--batch-size', type=number(int, 1, MAX_BATCH_SIZE), default=16, help='images per forward pass')
    predict.add_argument('--device', default='auto', help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")

    evaluate = command('evaluate', 'metrics with bootstrap 95%% CIs, calibration and plots on one data split')
    evaluate.add_argument('data', metavar='DATA', nargs='?', default=None,
                          help="data source: prepared folder, class folders, manifest, hf-hub:org/name "
                               "(default: the bundled sample)")
    evaluate.add_argument('--split', default='test', choices=['train', 'validation', 'test'],
                          help='the split to evaluate')
    evaluate.add_argument('--output', help='report folder (default: eval/SPLIT)')
    evaluate.add_argument('--bootstrap', type=number(int, 1, 1_000_000), default=1000,
                          help='bootstrap resamples (of patients) for the 95%% CIs')
    evaluate.add_argument('--seed', type=int, default=0, help='seed of the bootstrap (and of splits made on the fly)')
    evaluate.add_argument('--calibrate', action='store_true',
                          help="fit temperature scaling on --calibration-split and save it in the checkpoint's config")
    evaluate.add_argument('--calibration-split', default='validation', choices=['train', 'validation', 'test'],
                          help='the split temperature scaling is fitted on')
    evaluate.add_argument('--tta', action='store_true', help='attention test-time augmentation (raw + attention crop)')
    evaluate.add_argument('--batch-size', type=number(int, 1, MAX_BATCH_SIZE), default=16, help='images per forward pass')
    evaluate.add_argument('--device', default='auto', help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    evaluate.add_argument('--boxes', metavar='COCO_JSON',
                          help='score where the model looks against these boxes (e.g. lungs), matched by file name: '
                               'heat-map mass inside them and the pointing game; overlays in OUTPUT/overlays')
    evaluate.add_argument('--overlays', type=number(int, 0, 10_000), default=4, help='overlay PNGs to write with --boxes')
    add_map_choice(evaluate, '--boxes')

    export = command('export', 'ONNX or TorchScript file with a dynamic batch dimension, checked against eager')
    export.add_argument('--format', choices=['onnx', 'torchscript'], required=True, help='the file format')
    export.add_argument('--output', help='file to write (default: MODEL.onnx or MODEL.pt here)')

    info = command('info', 'architecture, parameters, GMACs, label names and data config of a model')
    info.add_argument('--json', action='store_true', help='print JSON instead of a table')

    zoo = commands.add_parser('zoo', help='the registered magsd_* models as a Markdown table (the README\'s)',
                              description='Every registered magsd_* model: backbone, parameters (4 classes, 1 '
                                          'channel, 32 maps) and what pretrained=True loads.',
                              epilog=EXIT_CODES, formatter_class=HelpFormatter)
    add_traceback_flag(zoo)

    add_push_commands(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one magsd command; the exit code says how it went (see --help)."""
    args = _parser().parse_args(argv)
    if args.command.startswith('push-'):
        from .magsd_hub import run_push

        return run_push(args, prog=f'magsd {args.command}')

    def run() -> int:
        from . import commands  # torch, timm and the models load here, once a command runs (Ctrl-C: one line)

        return getattr(commands, f'run_{args.command}')(args)
    return run_command(f'magsd {args.command}', run, args.traceback)
