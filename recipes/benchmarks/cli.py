"""Suite `cli`: how long `--help` of the installed commands takes against starting Python (`python -c
pass`), each in a fresh process: magsd and magsd-hub load neither torch nor timm for it.
"""
import argparse
import sys

from .common import interleaved_medians, meets_or_misses

CLI_TARGET = 1.0  # seconds of `magsd --help` and `magsd-hub --help` on a quiet machine


def run(args: argparse.Namespace) -> str:
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
    seconds = interleaved_medians(runs, max(1., args.min_run_time / 4), args.min_rounds)
    python = seconds['python -c pass']
    lines = ['| command | seconds | x python -c pass | target |', '|---|---|---|---|']
    for name, value in seconds.items():
        target = (f'< {CLI_TARGET:.0f} s ({meets_or_misses(value < CLI_TARGET)})' if name.startswith('magsd') else '')
        lines.append(f'| `{name}` | {value:.2f} | {value / python:.1f}x | {target} |')
    return '\n'.join(lines)
