"""Triton kernels of the fused ops (installed as fastscore.kernels). Not written yet."""


def unavailable_reason(device):
    return "the Triton kernels are not written yet"
