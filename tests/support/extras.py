"""A pytest plugin: a test module whose imports need an extra that is not installed is skipped at collection, with a
line that names the extra, instead of failing the whole run (`pytest -k docs` with the `train` extra alone)."""
import pytest

from magsd_timm.cli.console import EXTRAS

# the test-only modules of the dev extra, beside the library's optional ones
TEST_EXTRAS = {**EXTRAS, 'hypothesis': 'dev', 'sklearn': 'dev', 'pytest_timeout': 'dev', 'xdist': 'dev'}


class ExtrasModule(pytest.Module):
    """A test module that skips, naming the extra, when an optional module it imports is missing."""

    def _getobj(self):
        try:
            return super()._getobj()
        except self.CollectError as e:
            missing = e.__cause__
            name = getattr(missing, 'name', None) if isinstance(missing, ModuleNotFoundError) else None
            extra = TEST_EXTRAS.get((name or '').split('.')[0])
            if extra is None:
                raise
            raise pytest.skip.Exception(f'needs the {extra} extra ({name} is not installed): pip install -e '
                                        f'".[{extra}]"', allow_module_level=True) from None


def pytest_pycollect_makemodule(module_path, parent):
    """Every test module is collected as an ExtrasModule."""
    if module_path.name.startswith('test_'):
        return ExtrasModule.from_parent(parent, path=module_path)
    return None
