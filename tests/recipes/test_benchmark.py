"""recipes/benchmark.py runs end to end and writes the table the README shows (timings are not judged)."""
import re
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / 'recipes' / 'benchmark.py'


def test_model_suite_writes_a_ratio_table(tmp_path):
    out = tmp_path / 'model.md'
    proc = subprocess.run(
        [sys.executable, str(RECIPE), '--model', 'magsd_resnet18', '--baseline', 'resnet18',
         '--batch-size', '2', '--img-size', '64', '--min-run-time', '0.2', '--output', str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert table in proc.stdout
    rows = [line for line in table.splitlines() if re.match(r'\| (inference|forward\+backward) \|', line)]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        base, ours, ratio = float(cells[1]), float(cells[2]), float(cells[3].rstrip('x'))
        assert abs(ratio - ours / base) < 0.02 * ratio
        assert re.fullmatch(r'\d+ / \d+', cells[5])


def test_bad_arguments_are_refused_by_name():
    proc = subprocess.run([sys.executable, str(RECIPE), '--batch-size', '0'], capture_output=True, text=True)
    assert proc.returncode == 2
    assert '--batch-size' in proc.stderr
