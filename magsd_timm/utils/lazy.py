"""Package attributes that load on first use, so that importing a package (or printing --help) stays cheap."""
import importlib
import importlib.util
from typing import Any, Callable, Dict

__all__ = ['lazy_attributes']


def lazy_attributes(package: str, where: Dict[str, str], submodules: bool = False) -> Callable[[str], Any]:
    """A module __getattr__: each name in `where` imported from its module (relative to package) when first asked
    for; with submodules, any submodule of the package too."""
    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        if submodules and importlib.util.find_spec(f'{package}.{name}') is not None:
            return importlib.import_module(f'.{name}', package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
