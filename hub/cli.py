"""magsd-hub: push trained checkpoints and prepared datasets to the Hugging Face Hub.

Exit codes:
  0  pushed (or staged, with --dry-run)
  1  the Hub refused or failed the push, or could not be reached (nothing was committed; run it again)
  2  bad arguments or local input: missing, invalid or untrusted checkpoint (pickle-only, NaN or
     non-float weights, an invalid temperature, weights that do not fit their config), not a prepared
     dataset, a non-empty --dry-run folder
An error prints one line; --traceback (or MAGSD_TRACEBACK=1) prints its traceback as well.
"""
import argparse
from typing import List, Optional

from huggingface_hub import get_token

from ..console import add_traceback_flag, add_version_flag, run_command

from ..errors import display
from .push import push_dataset, push_model

__all__ = ['main']


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('repo_id', help='Hub repo to push to, as ORG/NAME (created if missing)')
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument('--private', dest='private', action='store_true', default=None,
                            help='create the repo private (an existing repo keeps its visibility)')
    visibility.add_argument('--public', dest='private', action='store_false', help='create the repo public')
    parser.add_argument('--revision', default=None, help='branch to commit to (created from main if missing)')
    parser.add_argument('--commit-message', default=None)
    parser.add_argument('--dry-run', metavar='DIR', default=None,
                        help='write the exact folder that would be uploaded to DIR (new or empty) and stop')
    parser.add_argument('--token', default=None,
                        help='Hub token (default: HF_TOKEN or the saved login; never printed)')
    add_traceback_flag(parser)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='magsd-hub', description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(parser)
    commands = parser.add_subparsers(dest='command', required=True)
    model = commands.add_parser(
        'push-model', help='push a trained checkpoint as a timm model repo with its model card',
        description='Push model.safetensors, config.json and a generated model card (README.md) in one commit.')
    model.add_argument('output_dir', help='training output folder (recipes/train.py --output; its best/ is '
                                          'pushed) or a checkpoint folder with config.json and model.safetensors')
    _common(model)
    model.add_argument('--license', default='apache-2.0', help='licence of the weights in the card (default apache-2.0)')
    model.add_argument('--dataset-id', default=None, help='Hub id of the training data, for the card')
    dataset = commands.add_parser(
        'push-dataset', help='push a prepared dataset (recipes/prepare_data.py) with its dataset card',
        description='Push parquet shards per split, the dataset card, splits.json and skipped.json in one commit; '
                    'data shards of an earlier push are replaced.')
    dataset.add_argument('prepared_dir', help='folder written by recipes/prepare_data.py')
    _common(dataset)
    return parser


def _push(args: argparse.Namespace) -> int:
    common = dict(private=args.private, revision=args.revision, commit_message=args.commit_message,
                  dry_run=args.dry_run, token=args.token)
    if args.command == 'push-model':
        result = push_model(args.output_dir, args.repo_id, license=args.license, dataset_id=args.dataset_id, **common)
    else:
        result = push_dataset(args.prepared_dir, args.repo_id, **common)
    print(f'staged for {args.repo_id} in {display(result)}' if args.dry_run else f'pushed: {result}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run one magsd-hub command; the exit code says what happened (see --help)."""
    args = _parser().parse_args(argv)
    # a token must never reach the terminal, whatever an error message carries
    return run_command('magsd-hub', lambda: _push(args), args.traceback, redact=(args.token, get_token()))
