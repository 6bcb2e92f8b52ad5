"""The package as a timm plugin: importing it registers the models and loads nothing else heavy."""
import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest

import magsd_timm


def test_import_registers_the_models_without_opencv_datasets_matplotlib_or_the_hub_code():
    code = ('import sys, timm, magsd_timm; '
            'print(len(timm.list_models("magsd_*")), *sorted(m for m in ("cv2", "datasets", "matplotlib", '
            '"torchmetrics", "magsd_timm.data", "magsd_timm.hub", "magsd_timm.train") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ['12']


@pytest.mark.parametrize('imports', [
    'import magsd_timm, timm',  # the package first: it registers the moment timm is imported
    'import magsd_timm, importlib.util; importlib.util.find_spec("timm"); import timm',  # a check is not an import
    'import magsd_timm; from timm.models import create_model as c; import timm',
])
def test_the_models_are_registered_in_whichever_order_timm_and_the_package_are_imported(imports):
    code = (f'import sys; {imports}; print("torch" in sys.modules, len(timm.list_models("magsd_*")), '
            'timm.__spec__.loader.__class__.__name__)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ['True', '12', 'SourceFileLoader']  # and timm's own loader is left in its spec


def test_importing_the_package_alone_loads_no_torch():
    code = 'import sys, magsd_timm; print(magsd_timm.__version__, "torch" in sys.modules, "timm" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [magsd_timm.__version__, 'False', 'False']


def test_the_lazy_submodules_and_load_arrive_on_first_use():
    assert magsd_timm.hub.load is magsd_timm.load
    assert magsd_timm.data.open_dataset and magsd_timm.train.__name__ == 'magsd_timm.train'
    try:
        magsd_timm.no_such_thing
    except AttributeError as e:
        assert "no attribute 'no_such_thing'" in str(e)
    else:
        raise AssertionError('an unknown attribute must raise AttributeError')


def test_the_card_templates_ship_with_the_hub_code():
    hub = importlib.resources.files('magsd_timm.hub')
    assert '$evaluation' in hub.joinpath('model_card.md').read_text()
    assert '$split_table' in hub.joinpath('dataset_card.md').read_text()


def test_the_package_is_plain_files_so_it_installs_where_links_do_not():
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(['git', 'ls-files', '-s'], cwd=root, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip('not a git checkout')
    links = [line.split('\t')[1] for line in tracked.stdout.splitlines() if line.startswith('120000')]
    assert links == []  # a symbolic link checks out as a text file on Windows
