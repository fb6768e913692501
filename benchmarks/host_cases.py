"""Per-call host time of the public ops on tiny CPU tensors: what a call costs beyond its kernel.

Shared by `pytest --benchmark` (test_bench_host.py) and the interleaved runner host_calls.py. At
2x4x4x4 the kernels do almost nothing, so the time is the Python and dispatcher work of one call:
argument checks, backend resolution, the custom op, autograd. Beside them, in the same run, what a
user would otherwise call: torch.nn.functional.instance_norm and ncsn's ConditionalInstanceNorm2dPlus
module (ncsn_baseline.py), and ncsn's eager DSM pair and Langevin update.

Each case is (group, implementation, one call). "forward recording autograd" is the forward call alone
with inputs that require grad (what a training step's forward pays per call); "fwd+bwd" cases make the
forward call and then torch.autograd.backward from it (both halves of a training step, one figure).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ncsn_baseline  # noqa: E402

import fastscore  # noqa: E402
from fastscore.nn import CondInstanceNorm2dPlus  # noqa: E402

SHAPE = (2, 4, 4, 4)
BACKEND = "ext"


def cases(backend: str = BACKEND) -> list[tuple[str, str, Callable[[], object]]]:
    """(group, implementation, call) for every host-time case; all tensors on the CPU."""
    g = torch.Generator().manual_seed(0)
    n, c = SHAPE[:2]
    x = torch.randn(SHAPE, generator=g)
    gamma, alpha, beta = (torch.randn(n, c, generator=g) * 0.2 + 1 for _ in range(3))
    xg, gg, ag, bg = (t.clone().requires_grad_() for t in (x, gamma, alpha, beta))
    dy = torch.randn(SHAPE, generator=g)
    labels = torch.tensor([0, 3])
    sigma = torch.rand(n, generator=g) + 0.1
    scores = torch.randn(SHAPE, generator=g)
    scores_g = scores.clone().requires_grad_()
    ncsn = ncsn_baseline.ConditionalInstanceNorm2dPlus(c, 10)
    fast = CondInstanceNorm2dPlus(c, 10, backend=backend)
    fast.embed.load_state_dict(ncsn.embed.state_dict())
    op = fastscore.cond_instance_norm_plus
    nograd = torch.no_grad

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with nograd():
                return fn()
        return call

    def fwd_bwd(fn: Callable[[], torch.Tensor], grad: torch.Tensor | None = None) -> Callable[[], object]:
        def call() -> object:
            torch.autograd.backward(fn(), grad)
            return None
        return call

    xs = x.clone()
    out: list[tuple[str, str, Callable[[], object]]] = [
        ("norm, no grad", "F.instance_norm", no_grad(lambda: F.instance_norm(x))),
        ("norm, no grad", "ncsn module", no_grad(lambda: ncsn(x, labels))),
        ("norm, no grad", f"fastscore {backend}", no_grad(lambda: op(x, gamma, alpha, beta, backend=backend))),
        ("norm, forward recording autograd", "F.instance_norm", lambda: F.instance_norm(xg)),
        ("norm, forward recording autograd", "ncsn module", lambda: ncsn(xg, labels)),
        ("norm, forward recording autograd", f"fastscore {backend}", lambda: op(xg, gg, ag, bg, backend=backend)),
        ("norm, fwd+bwd", "F.instance_norm", fwd_bwd(lambda: F.instance_norm(xg), dy)),
        ("norm, fwd+bwd", "ncsn module", fwd_bwd(lambda: ncsn(xg, labels), dy)),
        ("norm, fwd+bwd", f"fastscore {backend}", fwd_bwd(lambda: op(xg, gg, ag, bg, backend=backend), dy)),
        ("norm module forward (grad on)", "ncsn module", lambda: ncsn(xg, labels)),
        ("norm module forward (grad on)", f"fastscore.nn {backend}", lambda: fast(xg, labels)),
        ("norm module forward (no grad)", "ncsn module", no_grad(lambda: ncsn(x, labels))),
        ("norm module forward (no grad)", f"fastscore.nn {backend}", no_grad(lambda: fast(x, labels))),
        ("perturb, no grad", "ncsn eager", no_grad(lambda: x + torch.randn_like(x) * sigma.view(-1, 1, 1, 1))),
        ("perturb, no grad", f"fastscore {backend}", no_grad(lambda: fastscore.perturb(x, sigma, 1, 0,
                                                                                      backend=backend))),
        ("dsm_loss, no grad", "ncsn eager (pair)", no_grad(lambda: ncsn_baseline.dsm_pair(x, scores, sigma))),
        ("dsm_loss, no grad", f"fastscore {backend}", no_grad(lambda: fastscore.dsm_loss(scores, sigma, 1, 0,
                                                                                        backend=backend))),
        ("dsm_loss, fwd+bwd", "ncsn eager (pair)", fwd_bwd(lambda: ncsn_baseline.dsm_pair(x, scores_g, sigma)[1])),
        ("dsm_loss, fwd+bwd", f"fastscore {backend}", fwd_bwd(lambda: fastscore.dsm_loss(scores_g, sigma, 1, 0,
                                                                                        backend=backend))),
        ("langevin_step_", "ncsn eager", no_grad(lambda: ncsn_baseline.langevin_update(xs, scores, 1e-5))),
        ("langevin_step_", f"fastscore {backend}", no_grad(lambda: fastscore.langevin_step_(xs, scores, 1e-5, 2, 0,
                                                                                           backend=backend))),
    ]
    return out
