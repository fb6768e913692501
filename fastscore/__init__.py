"""fastscore: fused kernels for training and sampling NCSN score models (see DESIGN.md)."""
from .dispatch import BackendUnavailable, backends
from .ops import cond_instance_norm_plus, dsm_loss, langevin_step_, perturb, randn
from .sampling import AnnealedLangevin  # cheap: torch is loaded already, tqdm adds ~4 ms
from . import config, models, nn  # noqa: E402,F401  (fastscore.nn.CondInstanceNorm2dPlus etc. after `import fastscore`)

__version__ = "0.1.0"

__all__ = [
    "cond_instance_norm_plus", "perturb", "dsm_loss", "langevin_step_", "randn",
    "backends", "BackendUnavailable", "__version__", "AnnealedLangevin",
]
