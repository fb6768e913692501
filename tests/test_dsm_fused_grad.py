"""dsm_per_sample_and_grad, the primitive of a loss whose scores need a gradient: the losses and
d l / d scores from the same draw of z; every backend, every device."""
import pytest
import torch

from fastscore.backend import dispatch

from helpers import backend_params


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
