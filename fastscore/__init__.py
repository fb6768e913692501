"""fastscore: fused kernels for training and sampling NCSN score models.

The public names are loaded on first use, so `import fastscore` (and the command line's --help) does
not import torch until an op, a module or a model is asked for.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

__version__ = "0.1.0"


class _CheckoutKernels(importlib.abc.MetaPathFinder):
    """fastscore.kernels from kernels/ beside this package when this package is a source checkout's
    (setup.py beside it too), used without installing it; an install maps kernels/ itself."""

    root = Path(__file__).resolve().parent.parent

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        init = self.root / "kernels" / "__init__.py"
        if name != f"{__name__}.kernels" or not (init.is_file() and (self.root / "setup.py").is_file()):
            return None
        return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])


if not any(isinstance(finder, _CheckoutKernels) for finder in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutKernels())

# public name -> the module that defines it
_EXPORTS = {
    "cond_instance_norm_plus": ".ops", "cond_instance_norm_plus_lookup": ".ops", "perturb": ".ops",
    "dsm_loss": ".ops", "langevin_step_": ".ops",
    "randn": ".ops", "backends": ".backend.dispatch", "BackendUnavailable": ".backend.dispatch",
    "AnnealedLangevin": ".sampling", "ConsistentAnnealed": ".samplers", "ReverseDiffusion": ".samplers",
    "PredictorCorrector": ".samplers", "ProbabilityFlow": ".samplers",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    else:
        try:  # fastscore.nn, fastscore.models, ... after a plain `import fastscore`
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
