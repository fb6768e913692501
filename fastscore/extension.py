"""The compiled extension fastscore._C (C++ CPU and CUDA kernels). Not written yet."""


def unavailable_reason(device):
    return "the compiled extension is not written yet"
