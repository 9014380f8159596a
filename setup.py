"""Build cltk._C: the cltk:: ops' CPU kernels, and their CUDA kernels when CUDA is available.

Sources are picked up by naming convention, one folder per kernel family under csrc/:
  csrc/cltk.cpp                        PyInit__C stub (limited API)
  csrc/<family>/*_schema.cpp           TORCH_LIBRARY_FRAGMENT(cltk, m) schemas     (always)
  csrc/<family>/*_cpu.cpp              TORCH_LIBRARY_IMPL(cltk, CPU)               (always)
  csrc/<family>/*_cuda_glue.cpp        TORCH_LIBRARY_IMPL(cltk, CUDA)              (CUDA builds)
  csrc/<family>/*.cu                   torch-free launchers and kernels            (CUDA builds)

Environment:
  CLTK_CUDA=auto|0|1     auto (default) builds CUDA when torch has CUDA and nvcc is found;
                         1 fails unless both are there; 0 never builds CUDA.
  CLTK_CPU_CAPABILITY=AVX512|AVX2|DEFAULT
                         build for that CPU capability (default: the best of AVX512/AVX2 the build host
                         supports, else DEFAULT, without vector flags).
  CLTK_CPU_FLAGS="..."   override the CPU flags altogether (recorded as capability "custom").
  CLTK_CUDA_ARCHS="80;90" compute capabilities for the CUDA build.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _fail(msg: str) -> None:
    sys.stderr.write(f"\ncltk setup: {msg}\n\n")
    sys.exit(1)


try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - build-time guard
    _fail(
        "torch must be installed before building cltk, and the build must see it: "
        "pip install torch && pip install --no-build-isolation -e ."
    )


# at::vec picks its Vectorized<T> specialisation from CPU_CAPABILITY_*; without it every loop is scalar.
CPU_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-mbmi2",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-mbmi2", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "DEFAULT": [],
}


def _cpu_capability() -> str:
    chosen = os.environ.get("CLTK_CPU_CAPABILITY")
    if chosen is not None:
        if chosen not in CPU_CAPABILITY_FLAGS:
            _fail(f"CLTK_CPU_CAPABILITY must be one of {', '.join(CPU_CAPABILITY_FLAGS)}; got {chosen!r}")
        return chosen
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        flags = set()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return "AVX512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "AVX2"
    return "DEFAULT"


def _find_cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = os.path.realpath(nvcc)
    guess = os.path.dirname(os.path.dirname(real))
    if os.path.isdir(os.path.join(guess, "include")) and os.path.exists(os.path.join(guess, "include", "cuda_runtime.h")):
        return guess
    # nvcc on PATH is a wrapper script outside a toolkit tree (e.g. /usr/local/bin/nvcc): use the standard location.
    if os.path.isdir("/usr/local/cuda"):
        return "/usr/local/cuda"
    return None


def _want_cuda() -> bool:
    mode = os.environ.get("CLTK_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        _fail(f"CLTK_CUDA must be one of auto, 0, 1; got {mode!r}")
    if mode == "0":
        return False
    torch_cuda = torch.version.cuda
    cuda_home = _find_cuda_home()
    if mode == "1":
        if torch_cuda is None:
            _fail(
                f"CLTK_CUDA=1 but the installed torch {torch.__version__} is a CPU-only build "
                "(torch.version.cuda is None). Install a CUDA build of torch, or use CLTK_CUDA=auto|0."
            )
        if cuda_home is None:
            _fail("CLTK_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME or put nvcc on PATH.")
    if torch_cuda is None or cuda_home is None:
        return False
    os.environ["CUDA_HOME"] = cuda_home
    # cpp_extension reads CUDA_HOME at import time; refresh it for the wrapper-nvcc case.
    import torch.utils.cpp_extension as cpp_ext

    cpp_ext.CUDA_HOME = cuda_home
    return True


def _sources(with_cuda: bool) -> list[str]:
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    srcs = ["csrc/cltk.cpp"]
    srcs += rel(glob.glob(os.path.join(ROOT, "csrc", "*", "*_schema.cpp")))
    srcs += rel(glob.glob(os.path.join(ROOT, "csrc", "*", "*_cpu.cpp")))
    srcs += rel(glob.glob(os.path.join(ROOT, "csrc", "*", "*_autograd.cpp")))
    if with_cuda:
        srcs += rel(glob.glob(os.path.join(ROOT, "csrc", "*", "*_cuda_glue.cpp")))
        srcs += rel(glob.glob(os.path.join(ROOT, "csrc", "*", "*.cu")))
    return srcs


def _write_build_info(with_cuda: bool, capability: str, cpu_flags: list[str]) -> None:
    path = os.path.join(ROOT, "cltk", "_build_info.py")
    text = (
        "# Written by setup.py at build time; records what cltk._C was compiled against.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"CUDA = {with_cuda!r}\n"
        f"CUDA_VERSION = {torch.version.cuda if with_cuda else None!r}\n"
        f"CPU_CAPABILITY = {capability!r}\n"
        f"CPU_FLAGS = {' '.join(cpu_flags)!r}\n"
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


with_cuda = _want_cuda()
if os.environ.get("CLTK_CPU_FLAGS") is not None:
    cpu_capability, cpu_flags = "custom", os.environ["CLTK_CPU_FLAGS"].split()
else:
    cpu_capability = _cpu_capability()
    cpu_flags = CPU_CAPABILITY_FLAGS[cpu_capability]
_write_build_info(with_cuda, cpu_capability, cpu_flags)

# torch >= 2.14 headers require C++20; older ones are built and tested with C++17.
_torch_mm = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
cxx_std = "-std=c++20" if _torch_mm >= (2, 14) else "-std=c++17"
# -ffp-contract=off: no fused multiply-add unless the source asks for one (std::fma, at::vec::fmadd), so the
# kernels round like the torch operations they replace (GCC contracts a*b+c by default, even through intrinsics).
cxx_flags = ["-O3", "-ffp-contract=off", cxx_std, "-fopenmp", "-fvisibility=hidden",
             "-Wall", "-Wno-unused-function"] + cpu_flags
ldflags = ["-fopenmp"]
ext_kwargs = dict(
    name="cltk._C",
    sources=_sources(with_cuda),
    include_dirs=[os.path.join(ROOT, "csrc")],
    extra_link_args=ldflags,
    py_limited_api=True,
)
if with_cuda:
    archs = os.environ.get("CLTK_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
    nvcc_flags = ["-O3", cxx_std, "--expt-relaxed-constexpr", "-lineinfo"]
    for a in archs:
        a = a.strip()
        if a:
            nvcc_flags += [f"-gencode=arch=compute_{a},code=sm_{a}"]
    ext = CUDAExtension(**ext_kwargs, extra_compile_args={"cxx": cxx_flags + ["-DCLTK_WITH_CUDA"], "nvcc": nvcc_flags})
else:
    ext = CppExtension(**ext_kwargs, extra_compile_args={"cxx": cxx_flags})

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
