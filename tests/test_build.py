"""The package and build: extension loading and its fallbacks, the CLTK_CUDA switch, nvcc compiles of every .cu."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc").glob("*/*.cu"))


def _py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env})


def test_import_with_native_disabled_uses_references():
    r = _py("import cltk._ext as e; print(e.available(), '|', e.reason())", CLTK_DISABLE_C="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False | disabled by CLTK_DISABLE_C"


def test_import_with_extension_built_for_another_torch_logs_and_falls_back():
    code = ("import sys, types; m = types.ModuleType('cltk._build_info'); m.TORCH_VERSION = '1.0.0'; "
            "sys.modules['cltk._build_info'] = m; import cltk._ext as e; print(e.available()); print(e.reason())")
    r = _py(code, CLTK_DISABLE_C="0")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "False"
    assert "built for torch 1.0.0" in out[1] and "rebuild" in out[1]
    assert "using the pure-PyTorch reference ops" in r.stderr  # logged once, as a warning


def test_import_without_extension_module_falls_back(tmp_path):
    # A copy of the Python package with no _C library in it.
    shutil.copytree(ROOT / "cltk", tmp_path / "cltk", ignore=shutil.ignore_patterns("_C*.so", "_build_info.py"))
    # Drop an editable-install finder so that the copy, not the source tree, is imported.
    code = ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "import cltk, cltk._ext as e; assert cltk.__file__.startswith(sys.argv[1]), cltk.__file__; "
            "print(e.available()); print(e.reason())")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "CLTK_DISABLE_C": "0",
                                                                           "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "False"
    assert "could not be loaded" in r.stdout


def test_native_extension_loaded_in_this_build():
    import cltk._ext as e

    if os.environ.get("CLTK_DISABLE_C", "0") not in ("", "0"):
        pytest.skip("CLTK_DISABLE_C set")
    assert e.available(), e.reason()
    for op in e.native_ops():
        assert e.has_kernel(op, "cpu"), f"cltk::{op} has no CPU kernel"


@pytest.mark.parametrize("mode,expect", [("1", "CPU-only build"), ("yes", "CLTK_CUDA must be one of auto, 0, 1")])
def test_setup_cltk_cuda_switch_errors(mode, expect):
    import torch

    if mode == "1" and torch.version.cuda is not None:
        pytest.skip("torch has CUDA: CLTK_CUDA=1 is valid here")
    r = subprocess.run([sys.executable, "setup.py", "--name"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "CLTK_CUDA": mode})
    assert r.returncode != 0
    assert expect in r.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("cu", CU_FILES, ids=[p.relative_to(ROOT / "csrc").as_posix() for p in CU_FILES])
def test_cuda_source_compiles_with_nvcc(cu, tmp_path):
    """Every torch-free .cu compiles for sm_80 and sm_90; it must not include torch headers."""
    text = cu.read_text()
    assert "torch/" not in text and "ATen/" not in text, f"{cu.name} includes torch headers: keep .cu files torch-free"
    # The same defines torch's CUDAExtension passes to nvcc: no implicit half/bfloat16 conversions.
    cmd = ["nvcc", "-std=c++17", f"-I{ROOT / 'csrc'}", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
           "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
           "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
           "-c", str(cu), "-o", str(tmp_path / "k.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]


def test_has_kernel_is_false_for_an_op_this_build_does_not_define():
    from cltk import _ext
    assert _ext.has_kernel("no_such_op", "cpu") is False
    assert _ext.has_kernel("row_l1_accumulate_", "tpu") is False
