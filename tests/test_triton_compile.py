"""Every Triton kernel compiles for a real GPU (sm_90, PTX and cubin), with no GPU present.

The interpreter that runs the kernels on this CPU accepts things compiled Triton rejects (non-constexpr
globals, Python ints where tensors are needed, type mismatches in loops), so this builds each kernel
through Triton's real compiler in a subprocess without TRITON_INTERPRET, in the variants the launchers
use: both memory formats, every activation, single- and multi-plane tiles, and sizes equal to 1 (which
the launcher passes as compile-time constants, so e.g. C - 1 is folded).
"""
import os
import subprocess
import sys

import pytest

from fastscore.backend import dispatch


def _compile_all() -> list[str]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastscore.kernels import instance_norm, langevin, noise, perturbation, score_matching

    target = GPUTarget("cuda", 90, 32)
    pointer = {"x_ptr": "*bf16", "y_ptr": "*bf16", "dy_ptr": "*bf16", "dx_ptr": "*bf16", "out_ptr": "*bf16",
               "scores_ptr": "*fp16", "score_ptr": "*fp32", "unit_grad_ptr": "*fp16", "stream_ptr": "*i64"}
    floats = {"eps", "step", "scale", "inv_count", "power", "muhat_scale", "inv_cm1"}
    wide = {"stride_n", "stride_c", "stride_hw", "grad_stride"}
    failures = []

    def build(fn, constexprs, ones=()):
        signature = {}
        for name in fn.arg_names:
            if name in constexprs or name in ones:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = pointer.get(name, "*fp32")
            else:
                signature[name] = "fp32" if name in floats else "i64" if name in wide else "i32"
        values = dict(constexprs, **{name: 1 for name in ones})
        src = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in values.items()})
        try:
            triton.compile(src, target=target)
        except Exception as exc:  # report every failure, not just the first
            failures.append(f"{fn.__name__} {values}: {type(exc).__name__}: {str(exc)[:2000]}")

    flat_ones = ("N", "D", "C", "HW")
    for channels_last in (False, True):
        blocks = dict(GROUPS=16, BLOCK_C=32) if channels_last else dict(GROUPS=512, BLOCK_C=1)
        # The stream position from memory (the tensor form) in one variant each, from arguments in the other.
        build(perturbation._perturb_kernel, dict(blocks, FLAT=not channels_last, INDEX_32=channels_last,
                                                 CHANNELS_LAST=channels_last, POSITION_IN_MEMORY=channels_last))
        build(langevin._langevin_kernel, dict(blocks, ARGS_IN_MEMORY=channels_last, CHANNELS_LAST=channels_last))
        build(score_matching._partial_kernel, dict(blocks, CHANNELS_LAST=channels_last,
                                                   POSITION_IN_MEMORY=not channels_last, WITH_GRAD=channels_last))
        build(score_matching._backward_kernel, dict(blocks, CHANNELS_LAST=channels_last,
                                                    POSITION_IN_MEMORY=channels_last))
    build(perturbation._perturb_kernel, dict(FLAT=True, INDEX_32=True, CHANNELS_LAST=False, GROUPS=1, BLOCK_C=1,
                                             POSITION_IN_MEMORY=True), ones=flat_ones)
    build(perturbation._perturb_kernel, dict(FLAT=False, INDEX_32=True, CHANNELS_LAST=True, GROUPS=1, BLOCK_C=1,
                                             POSITION_IN_MEMORY=False), ones=flat_ones)
    build(score_matching._partial_kernel, dict(CHANNELS_LAST=True, GROUPS=128, BLOCK_C=4, POSITION_IN_MEMORY=True,
                                               WITH_GRAD=False), ones=("C",))
    build(score_matching._partial_kernel, dict(CHANNELS_LAST=False, GROUPS=512, BLOCK_C=1, POSITION_IN_MEMORY=True,
                                               WITH_GRAD=True))
    build(noise._randn_kernel, dict(GROUPS=512, BLOCK_C=1))
    build(score_matching._finish_kernel, dict(BLOCK_N=64, BLOCK_K=32), ones=("N", "chunks"))
    for act, blocks in ((1, (1, 4096)), (2, (32, 128))):
        tile = dict(BLOCK_P=blocks[0], BLOCK_HW=blocks[1])
        kinds = dict(tile, ACT=act, HAS_BETA=act == 1)
        build(instance_norm._plane_stats, dict(tile, SPLIT=act == 1))
        for block_c in (1024, 16):  # the loops over a sample's channels: one step per pass, or several
            build(instance_norm._apply, dict(kinds, BLOCK_C=block_c))
            build(instance_norm._backward_sums, dict(kinds, BLOCK_C=block_c))
            build(instance_norm._backward_apply, dict(kinds, BLOCK_C=block_c))
    for act, blocks in ((1, (8, 1024)), (0, (64, 1))):
        kinds = dict(ACT=act, HAS_BETA=act == 1, BLOCK_C=blocks[0], BLOCK_HW=blocks[1])
        build(instance_norm._fused_forward, kinds)
        build(instance_norm._fused_backward, kinds)
    build(instance_norm._fused_forward, dict(ACT=2, HAS_BETA=True, BLOCK_C=1, BLOCK_HW=1), ones=("C", "HW"))
    build(instance_norm._fused_backward, dict(ACT=2, HAS_BETA=True, BLOCK_C=1, BLOCK_HW=64), ones=("C",))
    norm_ones = ("C", "HW", "stride_hw", "gamma_stride")
    build(instance_norm._plane_stats, dict(SPLIT=False, BLOCK_P=64, BLOCK_HW=1), ones=("C", "HW", "stride_hw"))
    build(instance_norm._merge_stats, dict(BLOCK_P=128))
    build(instance_norm._backward_apply, dict(ACT=1, HAS_BETA=False, BLOCK_P=64, BLOCK_HW=1, BLOCK_C=1),
          ones=norm_ones)
    build(instance_norm._apply, dict(ACT=0, HAS_BETA=False, BLOCK_P=64, BLOCK_HW=1, BLOCK_C=1), ones=("C",))
    build(instance_norm._backward_sums, dict(ACT=2, HAS_BETA=True, BLOCK_P=64, BLOCK_HW=1, BLOCK_C=1), ones=("C",))
    return failures


def _cuda_backend_reason() -> str | None:
    reason = dispatch.unavailable_reason("triton", "cpu")
    if reason is not None and "TRITON_INTERPRET" not in reason:
        return reason  # triton itself is missing
    try:
        import triton.backends

        if "nvidia" not in triton.backends.backends:
            return "this triton has no NVIDIA backend"
    except Exception as exc:  # pragma: no cover - depends on the install
        return f"cannot list triton backends: {exc}"
    return None


@pytest.mark.skipif(_cuda_backend_reason() is not None, reason=str(_cuda_backend_reason()))
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The script's own directory (tests/) heads the child's sys.path, not the checkout: put the checkout
    # first, or the child compiles whichever fastscore is installed (another checkout's kernels).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]


if __name__ == "__main__":
    problems = _compile_all()
    print("\n\n".join(problems) or "all kernels compiled")
    sys.exit(1 if problems else 0)
