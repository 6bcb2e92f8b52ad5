"""The recipes (recipes/*.py are scripts, not modules of the package), loaded as modules for in-process tests."""
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

RECIPES = Path(__file__).resolve().parents[2] / 'recipes'
if str(RECIPES) not in sys.path:  # as when a recipe runs as a script: recipes/benchmarks/ imports as `benchmarks`
    sys.path.insert(0, str(RECIPES))


def load_recipe(name: str) -> ModuleType:
    """recipes/NAME.py as a fresh module (its main, its parser, its helpers)."""
    spec = importlib.util.spec_from_file_location(f'{name}_recipe', RECIPES / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_runner(name: str, capsys: Any) -> Callable[..., subprocess.CompletedProcess]:
    """A recipe's main run in this process (no interpreter start-up), as (exit code, stdout, stderr)."""
    recipe = load_recipe(name)

    def run(*args: Any) -> subprocess.CompletedProcess:
        code = recipe.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run
