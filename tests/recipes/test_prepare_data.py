"""recipes/prepare_data.py: the bundled sample by default, named sources, and clear refusals."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.files import outputs_in
from support.recipes import recipe_runner

RECIPE = Path(__file__).resolve().parents[2] / 'recipes' / 'prepare_data.py'


def _run(*args):
    return subprocess.run([sys.executable, str(RECIPE), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def run_here(capsys):
    """recipes/prepare_data.py's main in this process: (exit code, stdout, stderr)."""
    return recipe_runner('prepare_data', capsys)


@pytest.mark.subprocess
def test_default_is_the_bundled_sample_and_an_existing_output_is_kept(tmp_path, run_here):
    out = tmp_path / 'k16'
    proc = _run(out, '--seed', 3, '--folds', 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index('{'):])
    assert summary['seed'] == 3 and sum(summary['counts'].values()) == 16
    assert (out / 'README.md').exists() and (out / 'data' / 'dataset_dict.json').exists()
    again = run_here(out)
    assert again.returncode == 2 and 'exists: choose another output, or replace it (--overwrite)' in again.stderr
    assert 'overwrite=True' not in again.stderr  # a command-line user is told the flag, not the function's argument


@pytest.mark.parametrize('args, message', [
    (['--folds', '1'], '--folds'), (['--covidx', '.'], '--covidx-labels'), (['--seed', '-1'], 'argument --seed'),
    (['--fractions', '0.5', '0.5', 'nan'], 'argument --fractions'),
])
def test_bad_arguments_are_refused_by_name(tmp_path, run_here, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        run_here(tmp_path / 'x', *args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def _tree(root: Path) -> Path:
    """Class folders holding copies of the bundled radiographs."""
    import shutil

    from magsd_timm.data import sample_records

    for n, record in enumerate(sample_records()):
        (root / record['label']).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record['path'], root / record['label'] / f'{n}.jpeg')
    return root


def test_odd_names_bombs_and_label_conflicts_are_handled_and_listed(tmp_path, run_here):
    import os
    import shutil

    from PIL import Image

    from support.image_files import bomb_png, distinct_film

    root = _tree(tmp_path / 'src')
    Image.fromarray(distinct_film(0)).save(os.fsencode(str(root / 'normal')) + b'/odd_\xff.png')  # non-UTF-8 name
    bomb_png(root / 'normal' / 'bomb.png')
    shutil.copyfile(root / 'normal' / '1.jpeg', root / 'bacterial pneumonia' / 'also_normal.jpeg')  # one file, two labels
    out = tmp_path / 'out'
    proc = run_here(out, '--folder', root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index('{'):])
    assert summary['conflicts'] == 2 and summary['skipped'] == 1 and sum(summary['counts'].values()) == 16
    skipped = {Path(s['path']).name: s['reason'] for s in json.loads((out / 'skipped.json').read_text())}
    assert 'bomb' in skipped['bomb.png']
    assert skipped['1.jpeg'].startswith('label conflict') and skipped['also_normal.jpeg'].startswith('label conflict')
    from magsd_timm.data.build import load_prepared
    names = [n for split in load_prepared(out).values() for n in split['file_name']]
    assert 'odd_\\xff.png' in names and '1.jpeg' not in names
    assert '2 such copies were left out' in (out / 'README.md').read_text().replace('\n  ', ' ')


def test_a_second_build_into_the_same_output_is_refused(tmp_path, run_here):
    from magsd_timm.utils.outputs import exclusive_lock

    out = tmp_path / 'out'
    with exclusive_lock(out, 'prepare_data build'):  # another build is writing it
        proc = run_here(out)
    assert proc.returncode == 2 and 'being written by another prepare_data build' in proc.stderr
    assert not out.exists()


def test_leftovers_of_a_killed_build_are_recovered_or_removed(tmp_path, run_here, caplog):
    out = tmp_path / 'out'
    assert run_here(out).returncode == 0
    (tmp_path / '.out.old').mkdir()  # killed while replacing: a stale retired copy and a staging folder
    (tmp_path / '.out.staging-x1').mkdir()
    proc = run_here(out, '--overwrite', '--seed', 1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert outputs_in(tmp_path) == ['out'] and 'left by an interrupted run' in caplog.text
    out.rename(tmp_path / '.out.old')  # killed after retiring the output, before the new one moved in
    proc = run_here(out)
    assert proc.returncode == 2 and 'restored' in caplog.text and 'exists' in proc.stderr
    assert (out / 'data' / 'dataset_dict.json').exists() and outputs_in(tmp_path) == ['out']


@pytest.mark.parametrize('make, message', [
    (lambda d: d / 'missing', 'missing: no such folder'),
    (lambda d: (d / 'm.csv').write_text('path,label,split\na.png,normal,train\nb.png,,train\n') and d / 'm.csv',
     'row 2 (b.png): empty label'),
    (lambda d: (d / 'm.csv').write_text('path,label,split\na.png,normal,tst\n') and d / 'm.csv',
     "row 1 (a.png): unknown split 'tst'"),
    (lambda d: (d / 'm.csv').write_text('file,label\na.png,normal\n') and d / 'm.csv', 'lacks the column(s) path'),
])
def test_source_errors_are_one_line_and_exit_2(tmp_path, make, message, run_here):
    source = make(tmp_path)
    flag = '--manifest' if source.suffix == '.csv' else '--folder'
    proc = run_here(tmp_path / 'out', flag, source)
    assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr


def test_fractions_that_do_not_sum_to_one_are_refused(tmp_path, run_here, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_here(tmp_path / 'x', '--fractions', '0.7', '0.7', '0.1')
    assert exit_.value.code == 2 and 'must sum to 1' in capsys.readouterr().err


def test_a_named_source_that_yields_no_image_is_an_error(tmp_path, run_here):
    from PIL import Image

    root = tmp_path / 'covid-chestxray-dataset'
    (root / 'images').mkdir(parents=True)
    Image.new('L', (64, 64)).save(root / 'images' / 'a.jpg')
    (root / 'metadata.csv').write_text('patientid,finding,view,modality,filename\n1,COVID-19,L,X-ray,a.jpg\n')
    proc = run_here(tmp_path / 'out', '--ieee8023', root)
    assert proc.returncode == 2 and f'--ieee8023 {root} yields no image' in proc.stderr
    assert "view 'L' is not frontal" in proc.stderr and not (tmp_path / 'out').exists()


@pytest.mark.parametrize('where', ['the source itself', 'a folder holding the source', 'inside the source'])
def test_an_output_that_overlaps_a_source_is_refused_and_the_source_kept(tmp_path, run_here, where):
    from magsd_timm.data.sample import sample_records

    source = tmp_path / 'site' / 'images'
    for record in sample_records():
        (source / record['label']).mkdir(parents=True, exist_ok=True)
        (source / record['label'] / Path(record['path']).name).write_bytes(Path(record['path']).read_bytes())
    before = sorted(p.relative_to(tmp_path) for p in source.rglob('*'))
    output = {'the source itself': source, 'a folder holding the source': tmp_path / 'site',
              'inside the source': source / 'normal' / 'prepared'}[where]
    proc = run_here(output, '--folder', source, '--overwrite')
    assert proc.returncode == 2 and 'choose an output outside every input' in proc.stderr, proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in source.rglob('*')) == before


def test_a_manifests_split_column_is_never_silently_re_split(tmp_path, run_here):
    from magsd_timm.data.sample import sample_records

    manifest = tmp_path / 'm.csv'
    manifest.write_text('path,label,split\n' + ''.join(f"{r['path']},{r['label']},train\n" for r in sample_records()))
    proc = run_here(tmp_path / 'out', '--manifest', manifest)  # every row says train: honoured, so refused
    assert proc.returncode == 2 and 'the validation split is empty' in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('prepare_data.py: ') and not (tmp_path / 'out').exists()
