#!/usr/bin/env python3
"""Prepare chest X-rays as a Hugging Face DatasetDict with patient-level splits and a dataset card.

    python recipes/prepare_data.py out/kermany16                       # the bundled sample
    python recipes/prepare_data.py out/cxr --kermany chest_xray --ieee8023 covid-chestxray-dataset   # the paper's 4 classes
    python recipes/prepare_data.py out/loso --folder siteA --folder siteB --holdout-source siteB

Sources can be combined; exact duplicate files and near-copies (one film resized, re-encoded, cropped
or with other contrast) across and within them are kept once, and copies with different labels are
left out. Unreadable files are skipped and listed (skipped.json), as are the rows a source
does not take (ieee8023: lateral or unknown views, 'todo' findings, findings outside the task, images
listed but missing; by default only its COVID-19 films, as in the paper's task). The output is written to
a staging folder and moved into place; one build at a time may write an output.
"""
import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import List, Tuple

from magsd_timm.cli.console import (
    EXIT_CODES,
    CommandParser,
    HelpFormatter,
    add_traceback_flag,
    add_version_flag,
    extras_needed,
    number,
    run_command,
)
from magsd_timm.errors import BadInputError, display

with extras_needed('prepare_data.py'):  # opencv, datasets: pip install "magsd-timm[data]"
    from magsd_timm import CXR_LABEL_NAMES
    from magsd_timm.data.build import build_dataset
    from magsd_timm.data.sample import sample_records
    from magsd_timm.data.sources import (
        covid_radiography_records,
        covidx_records,
        folder_records,
        ieee8023_records,
        kermany_records,
        manifest_records,
    )
    from magsd_timm.utils.outputs import check_no_overlap


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(description=__doc__, epilog=EXIT_CODES, formatter_class=HelpFormatter)
    parser.add_argument('output', type=Path, help='folder to write (data/, README.md, splits.json, skipped.json)')
    parser.add_argument('--folder', action='append', default=[], type=Path, help='class-per-folder tree')
    parser.add_argument('--manifest', action='append', default=[], type=Path, help='CSV or Parquet manifest')
    parser.add_argument('--kermany', type=Path, help="Kermany 'chest_xray' folder")
    parser.add_argument('--ieee8023', type=Path, help='ieee8023 covid-chestxray-dataset folder')
    parser.add_argument('--ieee8023-classes', nargs='+', default=['COVID-19'], metavar='CLASS',
                        help="classes to take from ieee8023 (COVID-19 alone, as the paper's four-class task does, "
                             "with the other three from Kermany); 'all' takes every class its findings name")
    parser.add_argument('--covid-radiography', type=Path, help='COVID-19 Radiography Database folder')
    parser.add_argument('--covidx', type=Path, help='COVIDx image folder (with train/ and test/)')
    parser.add_argument('--covidx-labels', nargs='+', default=[], metavar='SPLIT=FILE',
                        help='COVIDx label files, e.g. train=train.txt test=test.txt')
    parser.add_argument('--seed', type=number(int, 0, 2 ** 32 - 1), default=0,
                        help='seeds the patient split, the folds and the --max-per-class draw')
    parser.add_argument('--fractions', type=number(float, 0, 1), nargs=3, default=(0.7, 0.15, 0.15),
                        metavar=('TRAIN', 'VAL', 'TEST'), help='shares of the patients per split')
    parser.add_argument('--max-per-class', type=number(int, 1), default=None, metavar='N',
                        help='keep at most N images of each class, whole patients drawn with --seed (a subset for '
                             'quick runs; what was not drawn is not listed)')
    parser.add_argument('--holdout-source', help='leave this source out as the test split')
    parser.add_argument('--folds', type=number(int, 0, 1000), default=0, help='also assign K folds by patient (K >= 2)')
    parser.add_argument('--name', default='Chest X-rays for MAG-SD', help='pretty name in the card')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
    add_traceback_flag(parser)
    add_version_flag(parser)
    return parser


def _parse_args(argv: List[str]) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [c for c in args.ieee8023_classes if c not in ('all', *CXR_LABEL_NAMES)]
    if unknown:
        parser.error(f"--ieee8023-classes {' '.join(unknown)}: choose among {', '.join(CXR_LABEL_NAMES)}, or all")
    if args.covidx and not args.covidx_labels:
        parser.error('--covidx needs --covidx-labels SPLIT=FILE ...')
    if args.folds == 1:
        parser.error('--folds must be 0 (none) or at least 2')
    if abs(sum(args.fractions) - 1) > 1e-6:
        parser.error(f'--fractions {" ".join(map(str, args.fractions))} must sum to 1')
    if any('=' not in item for item in args.covidx_labels):
        parser.error('--covidx-labels takes SPLIT=FILE items')
    return args


def _named_sources(args: argparse.Namespace) -> List[Tuple[str, Path, list]]:
    """Each source named on the command line: its flag, its path, and its records."""
    sources = [*(('--folder', p, folder_records(p)) for p in args.folder),
               *(('--manifest', p, manifest_records(p)) for p in args.manifest)]
    if args.kermany:
        sources.append(('--kermany', args.kermany, kermany_records(args.kermany)))
    if args.ieee8023:
        classes = None if args.ieee8023_classes == ['all'] else args.ieee8023_classes
        sources.append(('--ieee8023', args.ieee8023, ieee8023_records(args.ieee8023, classes=classes)))
    if args.covid_radiography:
        sources.append(('--covid-radiography', args.covid_radiography,
                        covid_radiography_records(args.covid_radiography)))
    if args.covidx:
        sources.append(('--covidx', args.covidx,
                        covidx_records(args.covidx, dict(item.split('=', 1) for item in args.covidx_labels))))
    for flag, path, records in sources:
        if not records:  # a source that silently gives nothing would build another data set than the one asked for
            reasons = Counter(why for _, why in getattr(records, 'left_out', []))
            said = '; '.join(f'{why} ({n})' for why, n in reasons.most_common(3))
            raise BadInputError(f'{flag} {display(path)} yields no image' + (f': {said}' if said else '') + '.')
    return sources


def _prepare(args: argparse.Namespace) -> int:
    """Gather the records of every named source (the bundled sample if none) and build the dataset."""
    check_no_overlap(args.output, [*args.folder, *args.manifest,
                                   *filter(None, (args.kermany, args.ieee8023, args.covid_radiography, args.covidx))])
    sources = _named_sources(args)
    records = [record for _, _, source in sources for record in source] or sample_records()
    left_out = [row for _, _, source in sources for row in getattr(source, 'left_out', [])]
    # a manifest's split column is the user's own assignment: honoured (or refused, said), never silently re-split
    given = any(r.get('split') for flag, _, source in sources if flag == '--manifest' for r in source)
    summary = build_dataset(
        records, args.output, seed=args.seed, fractions=args.fractions, holdout_source=args.holdout_source,
        folds=args.folds, pretty_name=args.name, overwrite=args.overwrite, left_out=left_out,
        max_per_class=args.max_per_class, given_splits=given)
    print(json.dumps({k: summary[k] for k in ('output', 'counts', 'left_out', 'skipped', 'duplicates', 'near_copies',
                                              'conflicts', 'seed')}, indent=2))
    return 0


def main(argv: List[str]) -> int:
    """Build the dataset; the exit code says how it went (see --help)."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = _parse_args(argv)
    return run_command('prepare_data.py', lambda: _prepare(args), args.traceback)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
