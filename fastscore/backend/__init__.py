"""The backends: the primitives' contract (protocol), the choice of backend per device (dispatch),
the torch backend and correctness oracle (reference), and the compiled extension (ext, _build).

The triton backend is the top-level kernels/ folder, installed as fastscore.kernels.
"""
