"""Emulated-CUDA tests of every bicubic-modulation kernel (csrc/bicubic/bicubic.cuh through the launchers in
bicubic_cuda.cu) against the reference ``bicubic_modulate_ref``, on small odd shapes that are not multiples of
the block size (256 threads), the forward row block (16) or the backward row chunk (64)."""
import ctypes

import pytest
import torch

from cltk.ops.bicubic import bicubic_modulate_ref
from cltk.testing.tolerances import tol
from tests.ops.test_bicubic import assert_reduction_close, grad_mod_ref64
from tests.emu.conftest import ptr

SHAPES = [  # (out, in, m1, m2)
    (1, 1, 1, 1),
    (7, 5, 3, 2),
    (37, 300, 4, 4),   # two column tiles, three forward row blocks
    (130, 19, 8, 5),   # three backward chunks
    (65, 9, 65, 9),    # mod as large as the weight: chunks touch many rows of mod
    (70, 3, 1, 3),     # size-1 mod dimension
]
IDS = [f"{o}x{i}_mod{a}x{b}" for o, i, a, b in SHAPES]
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _lib(emu_build):
    lib = emu_build("bicubic")
    for name in ("bicubic_emu_fwd_workspace", "bicubic_emu_bwd_workspace_f32", "bicubic_emu_bwd_workspace_f64"):
        getattr(lib, name).restype = ctypes.c_int64
    return lib


def _i(*xs):
    return [ctypes.c_int64(x) for x in xs]


@pytest.mark.parametrize("align_corners", [False, True], ids=["half_pixel", "align_corners"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_emulated_kernels_match_ref(emu_build, shape, dtype, align_corners):
    lib = _lib(emu_build)
    out, inn, m1, m2 = shape
    g = torch.Generator().manual_seed(out * 1000 + inn)
    w = torch.randn(out, inn, dtype=dtype, generator=g)
    mod = (torch.rand(m1, m2, dtype=dtype, generator=g) + 0.5).requires_grad_()
    grad = torch.randn(out, inn, dtype=dtype, generator=g)
    wr = w.clone().requires_grad_()
    ref = bicubic_modulate_ref(wr, mod, align_corners)
    ref_gw, _ = torch.autograd.grad(ref, (wr, mod), grad)
    ref_gm, gm_mass = grad_mod_ref64(w, mod.detach(), grad, align_corners)
    sfx = SUFFIX[dtype]
    ac = ctypes.c_int(int(align_corners))
    modc = mod.detach().contiguous()

    # forward: width upsample + rows kernels
    ws = torch.full((max(1, lib.bicubic_emu_fwd_workspace(*_i(out, inn, m1, m2))),), float("nan"), dtype=dtype)
    dst = torch.full_like(w, float("nan"))
    rc = getattr(lib, f"bicubic_emu_fwd_{sfx}")(ptr(w), ptr(modc), ptr(dst), ptr(ws), *_i(out, inn, m1, m2), ac)
    assert rc == 0
    torch.testing.assert_close(dst, ref.detach(), **tol(dtype))

    # backward: both gradients, then each alone (partial, chunk-sum and width-adjoint kernels)
    nws = getattr(lib, f"bicubic_emu_bwd_workspace_{sfx}")(*_i(out, inn, m1, m2), ac)
    for want_w, want_m in ((True, True), (False, True), (True, False)):
        ws = torch.full((max(1, nws),), float("nan"), dtype=dtype)
        gw = torch.full_like(w, float("nan"))
        gm = torch.full((m1, m2), float("nan"), dtype=dtype)
        rc = getattr(lib, f"bicubic_emu_bwd_{sfx}")(
            ptr(grad), ptr(w), ptr(modc), ptr(gw) if want_w else None, ptr(gm) if want_m else None, ptr(ws),
            *_i(out, inn, m1, m2), ac,
        )
        assert rc == 0
        if want_w:
            torch.testing.assert_close(gw, ref_gw, **tol(dtype))
        else:
            assert torch.isnan(gw).all()  # untouched
        if want_m:
            assert_reduction_close(gm, ref_gm, gm_mass)
        else:
            assert torch.isnan(gm).all()


def test_emulated_backward_is_deterministic(emu_build):
    lib = _lib(emu_build)
    out, inn, m1, m2 = 200, 33, 4, 4
    g = torch.Generator().manual_seed(3)
    w, grad = torch.randn(out, inn, generator=g), torch.randn(out, inn, generator=g)
    mod = torch.rand(m1, m2, generator=g)
    nws = lib.bicubic_emu_bwd_workspace_f32(*_i(out, inn, m1, m2), ctypes.c_int(0))
    results = []
    for _ in range(2):
        ws = torch.zeros(nws)
        gm = torch.zeros(m1, m2)
        assert lib.bicubic_emu_bwd_f32(ptr(grad), ptr(w), ptr(mod), None, ptr(gm), ptr(ws), *_i(out, inn, m1, m2), ctypes.c_int(0)) == 0
        results.append(gm)
    assert torch.equal(results[0], results[1])


def test_emulated_empty_weight_zeroes_grad_mod(emu_build):
    lib = _lib(emu_build)
    w = torch.empty(0, 5)
    mod = torch.rand(2, 3)
    gm = torch.full((2, 3), float("nan"))
    ws = torch.zeros(1)
    assert lib.bicubic_emu_bwd_f32(ptr(w), ptr(w), ptr(mod), None, ptr(gm), ptr(ws), *_i(0, 5, 2, 3), ctypes.c_int(0)) == 0
    assert torch.equal(gm, torch.zeros(2, 3))
