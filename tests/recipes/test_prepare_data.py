"""recipes/prepare_data.py: the bundled sample by default, named sources, and clear refusals."""
import json
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / 'recipes' / 'prepare_data.py'


def _run(*args):
    return subprocess.run([sys.executable, str(RECIPE), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_default_is_the_bundled_sample_and_an_existing_output_is_kept(tmp_path):
    out = tmp_path / 'k16'
    proc = _run(out, '--seed', 3, '--folds', 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index('{'):])
    assert summary['seed'] == 3 and sum(summary['counts'].values()) == 16
    assert (out / 'README.md').exists() and (out / 'data' / 'dataset_dict.json').exists()
    again = _run(out)
    assert again.returncode == 2 and 'exists' in again.stderr


def test_bad_arguments_are_refused_by_name(tmp_path):
    proc = _run(tmp_path / 'x', '--folds', 1)
    assert proc.returncode == 2 and '--folds' in proc.stderr
    proc = _run(tmp_path / 'x', '--covidx', tmp_path)
    assert proc.returncode == 2 and '--covidx-labels' in proc.stderr
