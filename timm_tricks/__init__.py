"""timm_tricks: Bag-of-tricks model variants, training components and recipes for timm.

Importing the package registers the ``*_tricks`` models with timm, so ``timm.create_model('resnet50d_tricks')``
works after ``import timm_tricks``, whichever of the two is imported first. The package itself stays light (no
torch, no timm): if timm is already imported the models are registered at once, otherwise an import hook
registers them the moment timm is imported. The command line (``timm-tricks --help``, ``timm-tricks recipes``)
so starts without loading torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"


def _register_models() -> None:
    from . import models  # noqa: F401  (registers the *_tricks variants with timm)


class _Loader(importlib.abc.Loader):
    """timm's own loader, followed by the registration of our models once timm's ``__init__`` has run."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # timm keeps seeing its own loader
        self.loader.exec_module(module)
        _TimmHook.remove()
        _register_models()


class _TimmHook(importlib.abc.MetaPathFinder):
    """Finds timm as the other finders do, and wraps its loader in :class:`_Loader`."""

    busy = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "timm" or _TimmHook.busy:
            return None
        _TimmHook.busy = True
        try:
            spec = importlib.util.find_spec(name)  # the finders after this one (this one returns None now)
        finally:
            _TimmHook.busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec

    @staticmethod
    def remove() -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmHook)]


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(f, _TimmHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _TimmHook())


def __getattr__(name: str) -> Any:
    """``timm_tricks.config`` and the other submodules, imported on first use."""
    if not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
