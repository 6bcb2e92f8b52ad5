"""Suite `predict`: films per second of `magsd predict` (read, decode, preprocess, the model, the output
file) with --predict-model on the films of --predict-images (default: the bundled sample), once the
model is loaded: the command on one film and on all of them, in this process, each the faster of two
runs after a first that warms up, the difference divided by the films added. Runs only when named.
"""
import argparse
import time

from magsd_timm.errors import BadInputError, display
from magsd_timm.utils.tables import markdown_table, shown_path

from .common import film_files, meets_or_misses

PREDICT_TARGET = 30.  # films per second of magsd predict with the published model on this CPU


def run(args: argparse.Namespace) -> str:
    """Films per second of magsd predict once its model is loaded: the command on one film and on all."""
    import tempfile

    from magsd_timm.cli.magsd import main as magsd

    if not args.predict_model:
        raise BadInputError('--suite predict needs --predict-model (a published tag, a run folder or a Hub id)')
    films = film_files(args.predict_images, '--predict-images')
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
             f'>= {PREDICT_TARGET:.0f} ({meets_or_misses(rate >= PREDICT_TARGET)})']])])
