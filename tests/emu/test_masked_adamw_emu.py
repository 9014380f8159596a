"""The CUDA masked AdamW kernel (csrc/masked_adamw/masked_adamw_cuda.cu) run on the host emulator against
cltk.ops.masked_adamw_ref: masks present/absent, freeze on/off, every dtype, sizes that are not multiples of
the block or chunk size, and groups large enough to need several launches."""
import ctypes
import math

import pytest
import torch

from cltk.ops.masked_adamw import masked_adamw_ref
from cltk.testing.tolerances import assert_lowp_within_factor, tol


DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)


@pytest.fixture(scope="module")
def lib(emu_build):
    lib = emu_build("masked_adamw")
    lib.emu_masked_adamw.restype = ctypes.c_int
    return lib


def _group(shapes, dtype, seed, mask_every=2):
    gen = torch.Generator().manual_seed(seed)
    ts = []
    for k, shape in enumerate(shapes):
        p = torch.randn(shape, generator=gen).to(dtype)
        g = torch.randn(shape, generator=gen).to(dtype)
        m = (0.1 * torch.randn(shape, generator=gen)).to(dtype)
        v = (0.01 * torch.rand(shape, generator=gen)).to(dtype)
        rows = shape[0] if len(shape) else 1
        mask = (torch.rand(rows, generator=gen) < 0.4) if (len(shape) and k % mask_every == 0) else None
        step = torch.tensor(float(k % 5 + 1))
        ts.append([p, g, m, v, mask, step])
    return ts


def _run_emu(lib, ts, dtype, freeze, chunk):
    n = len(ts)
    arr = lambda xs: (ctypes.c_void_p * n)(*[x for x in xs])  # noqa: E731
    step_size = [HP["lr"] / (1 - HP["beta1"] ** float(t[5])) for t in ts]
    bc2 = [math.sqrt(1 - HP["beta2"] ** float(t[5])) for t in ts]
    rows = [t[0].shape[0] if t[0].dim() else 1 for t in ts]
    row_len = [t[0].numel() // r if r else 0 for t, r in zip(ts, rows)]
    rc = lib.emu_masked_adamw(
        DTYPE_CODE[dtype], arr([t[0].data_ptr() for t in ts]), arr([t[1].data_ptr() for t in ts]),
        arr([t[2].data_ptr() for t in ts]), arr([t[3].data_ptr() for t in ts]),
        arr([t[4].data_ptr() if t[4] is not None else None for t in ts]),
        (ctypes.c_int64 * n)(*[t[0].numel() for t in ts]), (ctypes.c_int64 * n)(*row_len),
        (ctypes.c_double * n)(*step_size), (ctypes.c_double * n)(*bc2), ctypes.c_int64(n),
        ctypes.c_double(HP["lr"]), ctypes.c_double(HP["beta1"]), ctypes.c_double(HP["beta2"]),
        ctypes.c_double(HP["eps"]), ctypes.c_double(HP["weight_decay"]), int(freeze), ctypes.c_int64(chunk))
    assert rc == 0, f"launch error {rc}"


def _ref(ts, freeze, compute_dtype=None):
    cast = (lambda x: x.to(compute_dtype) if x is not None and x.is_floating_point() else x) if compute_dtype else (lambda x: x)
    out = [[cast(x.clone()) if x is not None else None for x in t[:4]] for t in ts]
    masked_adamw_ref([o[0] for o in out], [o[1] for o in out], [o[2] for o in out], [o[3] for o in out],
                     [t[4] for t in ts], [t[5] for t in ts], freeze_masked_rows=freeze, **HP)
    return out


# Shapes not multiples of the 256-thread block or of the chunk; 1-D (bias-like) and 0-D tensors; an empty one.
SHAPES = [(37, 19), (5,), (300,), (1, 1), (0, 4), (), (64, 3, 3), (129, 7)]


@pytest.mark.parametrize("freeze", [False, True], ids=["zero_grad_rows", "freeze_rows"])
@pytest.mark.parametrize("chunk", [100, 65536], ids=["chunk100", "chunk64k"])
def test_fp32_matches_ref(lib, freeze, chunk):
    ts = _group(SHAPES, torch.float32, seed=1)
    ref = _ref(ts, freeze)
    _run_emu(lib, ts, torch.float32, freeze, chunk)
    for t, r in zip(ts, ref):
        for got, want in zip(t[:4], r):
            torch.testing.assert_close(got, want, **tol(torch.float32))


def test_fp64_matches_ref(lib):
    ts = _group(SHAPES, torch.float64, seed=2)
    ref = _ref(ts, False)
    _run_emu(lib, ts, torch.float64, False, 100)
    for t, r in zip(ts, ref):
        for got, want in zip(t[:4], r):
            torch.testing.assert_close(got, want, **tol(torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_lowp_within_factor_of_torch(lib, dtype):
    ts = _group([(37, 19), (300,), (129, 7)], dtype, seed=3)
    fp32 = _ref(ts, False, compute_dtype=torch.float32)
    lowp_torch = _ref(ts, False)
    _run_emu(lib, ts, dtype, False, 256)
    for t, r32, rt in zip(ts, fp32, lowp_torch):
        for got, want32, want_t in zip(t[:4], r32, rt):
            assert_lowp_within_factor(got, want_t, want32)


def test_many_tensors_need_several_launches(lib):
    # 45 tensors > 20 per launch, and 40 chunks of one tensor, so batches split both between and inside tensors.
    shapes = [(7, 5)] * 30 + [(4000,)] + [(3, 11)] * 14
    ts = _group(shapes, torch.float32, seed=4, mask_every=3)
    ref = _ref(ts, False)
    _run_emu(lib, ts, torch.float32, False, 100)
    for t, r in zip(ts, ref):
        for got, want in zip(t[:4], r):
            torch.testing.assert_close(got, want, **tol(torch.float32))


def test_masked_rows_never_read_the_gradient(lib):
    # nan in every masked gradient row: a kernel that loaded and multiplied by 0 would produce nan.
    ts = _group([(33, 9), (50,)], torch.float32, seed=5, mask_every=1)
    for t in ts:
        t[1][~t[4]] = float("nan")
    ref = _ref(ts, False)
    _run_emu(lib, ts, torch.float32, False, 64)
    for t, r in zip(ts, ref):
        assert torch.isfinite(t[0]).all()
        for got, want in zip((t[0], t[2], t[3]), (r[0], r[2], r[3])):
            torch.testing.assert_close(got, want, **tol(torch.float32))


def test_bad_chunk_is_an_invalid_value(lib):
    ts = _group([(3, 3)], torch.float32, seed=6)
    before = ts[0][0].clone()
    with pytest.raises(AssertionError, match="launch error 1"):
        _run_emu(lib, ts, torch.float32, False, 0)
    assert torch.equal(ts[0][0], before)
