"""dsm_loss with scores that need a gradient: the forward writes d l / d scores from the same draw of z
(fastscore::dsm_loss_per_sample_and_grad) and the backward scales it; every backend, every device."""
import pytest
import torch

import fastscore
import fastscore.ops  # registers torch.ops.fastscore.*
from fastscore.backend import dispatch

from helpers import backend_params

ops = torch.ops.fastscore


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_unit_grad_is_the_backward_of_ones(backend, device, dtype):
    torch.manual_seed(5)
    scores = (torch.randn(3, 2, 41, 7) * 2).to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    sigma = torch.rand(3, device=device) + 0.1
    module = dispatch.module(backend)
    loss, unit = module.dsm_per_sample_and_grad(scores, sigma, 12, 2**33 + 5, 1.5)
    ones = torch.ones(3, device=device, dtype=loss.dtype)
    assert unit.dtype == dtype and unit.shape == scores.shape
    torch.testing.assert_close(loss, module.dsm_per_sample(scores, sigma, 12, 2**33 + 5, 1.5), rtol=0, atol=0)
    torch.testing.assert_close(unit, module.dsm_backward(ones, scores, sigma, 12, 2**33 + 5, 1.5).reshape(unit.shape),
                               rtol=1e-5 if dtype != torch.bfloat16 else 1e-2, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params())
def test_opcheck_and_gradient_scaling(backend, device):
    x = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    sigma = torch.rand(2, device=device) + 0.1
    torch.library.opcheck(ops.dsm_loss_per_sample_and_grad, (x, sigma, 7, 9, 2.0, None, None, backend))
    g = torch.tensor([0.25, -3.0], device=device)
    (got,) = torch.autograd.grad(fastscore.dsm_loss(x, sigma, 7, 9, reduction="none", backend=backend), x, g)
    want = dispatch.module(backend).dsm_backward(g, x.detach(), sigma, 7, 9, 2.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
