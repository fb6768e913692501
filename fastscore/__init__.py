"""fastscore: fused kernels for training and sampling NCSN score models.

The public names are loaded on first use, so `import fastscore` (and the command line's --help) does
not import torch until an op, a module or a model is asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "cond_instance_norm_plus": ".ops", "perturb": ".ops", "dsm_loss": ".ops", "langevin_step_": ".ops",
    "randn": ".ops", "backends": ".dispatch", "BackendUnavailable": ".dispatch", "AnnealedLangevin": ".sampling",
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
