"""Build CUDA kernel sources for the host emulator (csrc/common/cuda_emu.h) and load them with ctypes.

``emu_build(family)`` compiles ``csrc/<family>/<family>_cuda.cu`` (the same launchers and kernels nvcc
compiles) together with ``tests/emu/<family>_emu_api.cpp`` (extern "C" wrappers around the launchers) into a
shared library with g++, and returns it as a ``ctypes.CDLL``. Builds are cached by a hash of every source
and header involved, under ``build/emu/``.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
EMU_DIR = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "emu"


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_emu_library(sources: list[Path], name: str) -> ctypes.CDLL:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++) for the CUDA emulation tests")
    headers = list(CSRC.glob("common/*.h")) + list(CSRC.glob("common/*.cuh"))
    for s in sources:
        headers += list(s.parent.glob("*.cuh")) + list(s.parent.glob("*.h"))
    key = _digest(list(sources) + headers)
    BUILD.mkdir(parents=True, exist_ok=True)
    lib = BUILD / f"{name}-{key}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, "-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-pthread", "-Wall", "-Wno-unused-function",
               f"-I{CSRC}", "-include", "common/cuda_emu.h", "-x", "c++"] + [str(s) for s in sources] + ["-o", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"emulation build of {name} failed:\n{' '.join(cmd)}\n{res.stderr[-6000:]}")
        os.replace(tmp, lib)
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="session")
def emu_build():
    """emu_build(family) -> ctypes.CDLL of csrc/<family>/<family>_cuda.cu + tests/emu/<family>_emu_api.cpp."""
    cache: dict[str, ctypes.CDLL] = {}

    def build(family: str) -> ctypes.CDLL:
        if family not in cache:
            cu = CSRC / family / f"{family}_cuda.cu"
            api = EMU_DIR / f"{family}_emu_api.cpp"
            missing = [str(p) for p in (cu, api) if not p.exists()]
            if missing:
                raise FileNotFoundError(f"emulation sources missing for {family}: {missing}")
            cache[family] = build_emu_library([cu, api], family)
        return cache[family]

    return build


def ptr(t) -> ctypes.c_void_p:
    """Raw data pointer of a CPU tensor, for passing to an emulated launcher."""
    return ctypes.c_void_p(t.data_ptr())
