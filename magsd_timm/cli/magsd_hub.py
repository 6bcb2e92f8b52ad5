"""magsd-hub: push trained checkpoints and prepared datasets to the Hugging Face Hub (also magsd push-model, ...)."""
import argparse
from pathlib import Path
from typing import List, Optional

from ..errors import display
from .console import EXIT_CODES, CommandParser, HelpFormatter, add_traceback_flag, add_version_flag, run_command

__all__ = ['add_push_commands', 'main', 'run_push']


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('repo_id', help='Hub repo to push to, as ORG/NAME (created if missing)')
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument('--private', dest='private', action='store_true', default=None,
                            help='create the repo private (an existing repo keeps its visibility)')
    visibility.add_argument('--public', dest='private', action='store_false', help='create the repo public')
    parser.add_argument('--revision', default=None, help='branch to commit to (default: main; created if missing)')
    parser.add_argument('--commit-message', default=None, help='the commit message (default: says what is pushed)')
    parser.add_argument('--dry-run', metavar='DIR', default=None,
                        help='write the exact folder that would be uploaded to DIR (new or empty) and stop')
    parser.add_argument('--token', default=None,
                        help='Hub token (default: HF_TOKEN or the saved login; never printed)')
    add_traceback_flag(parser)


def add_push_commands(commands: 'argparse._SubParsersAction') -> None:
    """The push-model and push-dataset sub-commands, for magsd-hub and magsd alike."""
    model = commands.add_parser(
        'push-model', help='push a trained checkpoint as a timm model repo with its model card',
        description='Push model.safetensors, config.json and a generated model card (README.md) in one commit.',
        epilog=EXIT_CODES, formatter_class=HelpFormatter)
    model.add_argument('output_dir', help='training output folder (recipes/train.py --output; its best/ is '
                                          'pushed) or a checkpoint folder with config.json and model.safetensors')
    _common(model)
    model.add_argument('--license', default='apache-2.0', help='licence of the weights in the card')
    model.add_argument('--dataset-id', default=None, help='Hub id of the training data, for the card')
    model.add_argument('--tag', default=None, metavar='MAGSD_ARCH.TAG',
                       help='publish as this timm tag: the card leads with --unseen-results and the operating point '
                            'chosen on validation, the test report is added, and the HUB_WEIGHTS entry is printed')
    model.add_argument('--unseen-results', nargs='+', type=Path, default=[], metavar='JSON',
                       help="with --tag: the cxr suite's cxr-unseen-SOURCE.json of the run's recipe, one per source")
    dataset = commands.add_parser(
        'push-dataset', help='push a prepared dataset (recipes/prepare_data.py) with its dataset card',
        description='Push parquet shards per split, the dataset card, splits.json and skipped.json in one commit; '
                    'data shards of an earlier push are replaced.', epilog=EXIT_CODES, formatter_class=HelpFormatter)
    dataset.add_argument('prepared_dir', help='folder written by recipes/prepare_data.py')
    _common(dataset)


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog='magsd-hub', description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=HelpFormatter)
    add_version_flag(parser)
    add_push_commands(parser.add_subparsers(dest='command', required=True, metavar='COMMAND'))
    return parser


def _push(args: argparse.Namespace) -> int:
    from ..hub.push import push_dataset, push_model  # the Hub code loads when a push runs, not for --help

    common = dict(private=args.private, revision=args.revision, commit_message=args.commit_message,
                  dry_run=args.dry_run, token=args.token)
    if args.command == 'push-model':
        result = push_model(args.output_dir, args.repo_id, license=args.license, dataset_id=args.dataset_id,
                            tag=args.tag, unseen_results=args.unseen_results, **common)
    else:
        result = push_dataset(args.prepared_dir, args.repo_id, **common)
    print(f'staged for {args.repo_id} in {display(result)}' if args.dry_run else f'pushed: {result}')
    if args.command == 'push-model' and args.tag and args.dry_run:
        from ..hub.publish import hub_weights_entry

        print(f"its HUB_WEIGHTS entry (magsd_timm/models/magsd.py):\n    '{args.tag}': "
              f'{hub_weights_entry(Path(result), args.repo_id, args.license)!r},')
    return 0


def run_push(args: argparse.Namespace, prog: str = 'magsd-hub') -> int:
    """Run a parsed push command; a token never reaches the terminal, whatever an error message carries."""
    from huggingface_hub import get_token

    return run_command(prog, lambda: _push(args), args.traceback, redact=(args.token, get_token()))


def main(argv: Optional[List[str]] = None) -> int:
    """Run one magsd-hub command; the exit code says what happened (see --help)."""
    return run_push(_parser().parse_args(argv))
