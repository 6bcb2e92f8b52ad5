"""magsd-timm: MAG-SD (multiscale attention guided network with soft distance regularisation) for timm.

Importing the package registers every ``magsd_*`` model in timm's registry: at once when timm is
already imported, else the moment timm is. So ``import magsd_timm`` then ``import timm`` (or the other
order) gives ``timm.create_model('magsd_resnet50')``, and a program that never loads timm, such as the
command line printing its --help, does not pay for torch. Every public name loads on first use.
"""
import importlib
import importlib.abc
import importlib.util
import sys
from typing import Optional

from .utils.lazy import lazy_attributes

__version__ = '0.1.0'
_WHERE = {
    'AttentionAugmentConfig': '.method.augment', 'AttentionViews': '.method.augment',
    'attention_crop': '.method.augment', 'attention_views': '.method.augment', 'magsd_loss': '.method.losses',
    'MagSDObjective': '.method.objective', 'ObjectiveOutput': '.method.objective', 'CXR_LABEL_NAMES': '.models',
    'MANet': '.models', 'bilinear_attention_pool': '.models', 'display_map': '.models', 'load': '.hub',
}
__all__ = sorted(_WHERE) + ['__version__']


__getattr__ = lazy_attributes(__name__, _WHERE, submodules=True)


class _RegisterAfterTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import magsd_timm.models (whose @register_model entrypoints fill timm's registry) as soon as timm is imported.

    timm has no plugin discovery: its registry only knows names whose module was imported. This finder
    wraps the loading of the top-level ``timm`` module and, once it has run, imports the models. Only an
    import runs it (an availability check with importlib.util.find_spec does not), and it leaves
    ``sys.meta_path`` and timm's spec as they were.
    """

    def __init__(self) -> None:
        self.loader: Optional[importlib.abc.Loader] = None

    def find_spec(self, fullname, path, target=None):
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)  # find timm's own spec, then stand in for its loader
        try:
            spec = importlib.util.find_spec('timm')
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.loader.exec_module(module)
        importlib.import_module('.models', __name__)


if 'timm' in sys.modules:
    from . import models  # noqa: F401  (registers the magsd_* models)
else:
    sys.meta_path.insert(0, _RegisterAfterTimm())
