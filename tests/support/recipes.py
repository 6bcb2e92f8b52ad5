"""The recipes (recipes/*.py are scripts, not modules of the package), loaded as modules for in-process tests."""
import importlib.util
from pathlib import Path
from types import ModuleType

RECIPES = Path(__file__).resolve().parents[2] / 'recipes'


def load_recipe(name: str) -> ModuleType:
    """recipes/NAME.py as a fresh module (its main, its parser, its helpers)."""
    spec = importlib.util.spec_from_file_location(f'{name}_recipe', RECIPES / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
