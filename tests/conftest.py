"""Every test talks to a Hugging Face Hub on 127.0.0.1, never to huggingface.co.

huggingface_hub and datasets read their endpoint, cache and token when they are imported, so the
environment is set here, before any test module imports them; subprocesses inherit it. The server
runs from here on, so that a request no test planned gets a quick 404 instead of hanging.
"""
import os
import shutil
import sys
import tempfile

import pytest

from support.hub_server import LoopbackHub
from support.recipes import RECIPES  # noqa: F401  (puts recipes/ on sys.path: the benchmark suites import as `benchmarks`)

pytest_plugins = ['support.extras']  # a test module needing a missing extra is skipped, naming it

if 'huggingface_hub' in sys.modules:  # its constants are already read: the tests could reach huggingface.co
    raise RuntimeError('huggingface_hub was imported before tests/conftest.py set the Hub environment')

HUB = LoopbackHub().start()
HF_HOME = tempfile.mkdtemp(prefix='magsd-hf-home-')
# a fake token with a recognisable shape: tests check it never shows up in output, cards or errors
TOKEN = 'hf_loopbackSECRETtoken0123456789'
os.environ.update(
    HF_ENDPOINT=HUB.url, HF_HUB_DISABLE_XET='1', HF_HOME=HF_HOME, HF_TOKEN=TOKEN,
    HF_HUB_DISABLE_TELEMETRY='1', HF_HUB_DISABLE_PROGRESS_BARS='1',
)
os.environ.pop('HF_HUB_OFFLINE', None)

if os.environ.get('PYTEST_XDIST_WORKER'):  # `-n 2`: the workers share the cores, one thread each (and their children)
    os.environ['OMP_NUM_THREADS'] = '1'
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """A test that needs a trained run or runs a recipe end to end is slow: `-m "not slow"` leaves it out."""
    for item in items:
        if 'trained_run' in getattr(item, 'fixturenames', ()) or item.path.parent.name == 'recipes':
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope='session')
def hub() -> LoopbackHub:
    """The loopback Hub server, running for the whole session."""
    return HUB


def pytest_unconfigure(config):
    HUB.stop()
    shutil.rmtree(HF_HOME, ignore_errors=True)


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
    """A training output of recipes/train.py (run in this process): a tiny MA-Net (timm's test_resnet), one epoch
    on the sample; its checkpoints kept, so that tests can resume it."""
    from support.recipes import load_recipe

    output = tmp_path_factory.mktemp('trained') / 'run'
    code = load_recipe('train').main(['--output', str(output), '--model', 'magsd_custom', '--model-kwargs',
                                      '{"backbone": "test_resnet", "num_maps": 4}', '--epochs', '1', '--img-size', '64',
                                      '--batch-size', '4', '--cpu', '--keep-finished-checkpoints'])
    assert code == 0
    return output
