"""Emulated-CUDA tests of the meta-LSTM kernels (csrc/metalstm/metalstm.cuh through the launchers in
metalstm_cuda.cu) against ``meta_lstm_ref``, with N not a multiple of the block size (128 threads), so that the
masked rows of the last block and the warp reductions of the weight gradients are exercised."""
import ctypes

import pytest
import torch

from cltk.ops.metalstm import meta_lstm_init, meta_lstm_ref
from cltk.testing.tolerances import tol
from tests.emu.conftest import ptr

# (N, F, H, L). The emulated time grows with the number of weights (each weight gradient is a warp sum of five
# shuffles, each an emulated warp barrier) times the blocks: the two-block case N=130 takes a small network (alone
# 0.8 s against 4.6 s with F=4, H=8, L=3; beside the other test worker 50 s with those), whose sizes N=1 covers.
SHAPES = [(1, 4, 8, 3), (37, 3, 5, 2), (130, 3, 4, 2), (20, 6, 4, 1)]
IDS = [f"N{n}_F{f}_H{h}_L{l}" for n, f, h, l in SHAPES]
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _i(*xs):
    return [ctypes.c_int64(x) for x in xs]


def _p(t):
    return ptr(t) if t is not None else None


@pytest.mark.parametrize("with_mult", [False, True], ids=["gate", "gate_times_g"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_emulated_kernels_match_ref(emu_build, shape, dtype, with_mult):
    lib = emu_build("metalstm")
    N, F, H, L = shape
    g = torch.Generator().manual_seed(N * 31 + H)
    params = meta_lstm_init(F, H, L, dtype=dtype, generator=g)
    with torch.no_grad():
        params[4].copy_(torch.randn(H, dtype=dtype, generator=g))
        params[5].fill_(-0.2)
        params[6].fill_(1.3)
    x = torch.randn(N, F, dtype=dtype, generator=g).requires_grad_()
    h = (torch.randn(L, H, N, dtype=dtype, generator=g) * 0.5).requires_grad_()
    c = torch.randn(L, H, N, dtype=dtype, generator=g).requires_grad_()
    m = torch.randn(N, dtype=dtype, generator=g).requires_grad_() if with_mult else None
    go = torch.randn(N, dtype=dtype, generator=g)
    gh = torch.randn(L, H, N, dtype=dtype, generator=g)
    gc = torch.randn(L, H, N, dtype=dtype, generator=g)
    ref = meta_lstm_ref(x, h, c, *params, m)
    inputs = [x, h, c, *params] + ([m] if with_mult else [])
    ref_g = torch.autograd.grad(ref, inputs, (go, gh, gc), allow_unused=True)
    sfx = SUFFIX[dtype]
    d = [t.detach().contiguous() for t in (x, h, c, *params)]
    md = m.detach() if with_mult else None

    out = torch.full((N,), float("nan"), dtype=dtype)
    ho, co = torch.full_like(d[1], float("nan")), torch.full_like(d[2], float("nan"))
    rc = getattr(lib, f"metalstm_emu_fwd_{sfx}")(*[ptr(t) for t in d], _p(md), ptr(out), ptr(ho), ptr(co),
                                                 *_i(N, F, H, L))
    assert rc == 0
    for got, want in zip((out, ho, co), ref):
        torch.testing.assert_close(got, want.detach(), **tol(dtype))

    # in place: h_out, c_out alias h, c
    hb, cb = d[1].clone(), d[2].clone()
    out2 = torch.empty(N, dtype=dtype)
    rc = getattr(lib, f"metalstm_emu_fwd_{sfx}")(ptr(d[0]), ptr(hb), ptr(cb), *[ptr(t) for t in d[3:]], _p(md),
                                                 ptr(out2), ptr(hb), ptr(cb), *_i(N, F, H, L))
    assert rc == 0
    torch.testing.assert_close(hb, ref[1].detach(), **tol(dtype))
    torch.testing.assert_close(cb, ref[2].detach(), **tol(dtype))

    grads = [torch.full_like(t, float("nan")) for t in d]
    gm = torch.full((N,), float("nan"), dtype=dtype) if with_mult else None
    rc = getattr(lib, f"metalstm_emu_bwd_{sfx}")(*[ptr(t) for t in d], _p(md), ptr(go), ptr(gh), ptr(gc),
                                                 *[ptr(t) for t in grads[:3]], _p(gm), *[ptr(t) for t in grads[3:]],
                                                 *_i(N, F, H, L))
    assert rc == 0
    got_g = grads + ([gm] if with_mult else [])
    names = ["x", "h", "c", "w_ih0", "w_ih", "w_hh", "b", "w_out", "b_out", "scale", "multiply"]
    for name, a, b in zip(names, got_g, ref_g):
        if b is None:
            assert a.numel() == 0 or bool((a == 0).all()), name
            continue
        scale = 1.0 + b.abs().max().item()
        torch.testing.assert_close(a, b, atol=tol(dtype)["atol"] * scale, rtol=tol(dtype)["rtol"],
                                   msg=lambda s: f"grad {name}: {s}")


def test_emulated_rejects_too_many_hidden_units(emu_build):
    lib = emu_build("metalstm")
    N, F, H, L = 2, 3, 65, 1
    t = torch.zeros(4 * H * max(F, H) * 2)
    out = torch.zeros(N)
    rc = lib.metalstm_emu_fwd_f32(*[ptr(t)] * 10, None, ptr(out), ptr(t), ptr(t), *_i(N, F, H, L))
    assert rc == 1  # cudaErrorInvalidValue
