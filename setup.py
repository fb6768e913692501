"""Packaging: fastscore/ plus kernels/ installed as fastscore.kernels, and the compiled fastscore._C.

fastscore._C (csrc/) is compiled against the torch importable here: C++ CPU kernels always, CUDA
kernels too when nvcc and a CUDA torch are present and there is a GPU or TORCH_CUDA_ARCH_LIST to build
for (FASTSCORE_CUDA=0/1 forces). Under pip's build isolation torch is usually not importable here; the
package then installs without the extension and fastscore compiles the same sources (shipped as
fastscore/csrc) at first use, against the torch that loads them. `pip install --no-build-isolation .`
builds it now.
"""
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# Every fastscore subpackage (others are being added), the Triton kernels and the C++/CUDA sources.
PACKAGES = find_packages(include=["fastscore", "fastscore.*"]) + ["fastscore.kernels", "fastscore.csrc"]
PACKAGE_DIR = {"fastscore.kernels": "kernels", "fastscore.csrc": "csrc"}


def _load_build_helpers():
    spec = importlib.util.spec_from_file_location("_fastscore_build", ROOT / "fastscore" / "backend" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PACKAGE_DATA = {
    "fastscore.ncsn": ["assets/*", "configs/*.yml", "configs/*.yaml"],
    # Every source and header under csrc/, as fastscore/backend/_build.py finds and hashes them: the
    # installed copy must hash the same for the installed fastscore._C to be accepted.
    "fastscore.csrc": [f"**/*{suffix}" for suffix in _load_build_helpers().SOURCE_SUFFIXES],
}


def extension_kwargs() -> dict:
    build = _load_build_helpers()
    if os.environ.get(build.BUILD_EXT_ENV) == "0":
        print(f"fastscore: {build.BUILD_EXT_ENV}=0: installing without fastscore._C", file=sys.stderr)
        return {}
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("fastscore: torch is not importable in this build environment (pip build isolation?): installing "
              "without fastscore._C; it will be compiled at first use against the torch that imports it.",
              file=sys.stderr)
        return {}
    capability = build.cpu_capability()
    with_cuda, why = build.cuda_decision(gpu_visible=torch.cuda.is_available())
    arch = build.cuda_arch_list() if with_cuda else None
    gen_dir = ROOT / "build" / "fastscore_gen"
    build.write_info_header(gen_dir, build.build_info("pip", capability, with_cuda, arch, ROOT / "csrc"))
    print(f"fastscore: building fastscore._C for torch {torch.__version__}, CPU {capability}, "
          f"CUDA {'arch ' + arch if with_cuda else 'off'} ({why})", file=sys.stderr)
    src = ROOT / "csrc"
    sources = [f"csrc/{s}" for s in build.cpp_sources(src) + (build.cuda_sources(src) if with_cuda else [])]
    include_dirs = [str(gen_dir), str(ROOT / "csrc")] + (build.extra_cuda_include_dirs() if with_cuda else [])
    compile_args = {"cxx": build.cxx_flags(capability, with_cuda)}
    if with_cuda:
        compile_args["nvcc"] = build.nvcc_flags()
    ext_class = CUDAExtension if with_cuda else CppExtension
    ext = ext_class("fastscore._C", sources, include_dirs=include_dirs, extra_compile_args=compile_args,
                    extra_link_args=["-fopenmp"])
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data=PACKAGE_DATA,
    **extension_kwargs(),
)
