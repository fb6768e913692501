"""The public fused ops: input checks, one torch.library registration and one autograd each, over the
primitives of the backend chosen by fastscore.backend.dispatch."""
from .dsm import dsm_loss, perturb
from .langevin import langevin_step_
from .norm import cond_instance_norm_plus, cond_instance_norm_plus_lookup
from .randn import randn

__all__ = ["cond_instance_norm_plus", "cond_instance_norm_plus_lookup", "perturb", "dsm_loss", "langevin_step_",
           "randn"]
