"""The MIGU CUDA kernels (csrc/migu/migu.cuh through the launchers in migu_cuda.cu) run on the host emulator against
cltk.ops.migu's references: row L1 sums for every y dtype, single-chunk (adds into acc) and multi-chunk (workspace +
finalize) launches, padded row strides, sizes that are not multiples of the 32-column tile, the 8 row lanes or the
256-thread block; top-T masks bit for bit against torch.quantile for many thresholds, sizes and ties."""
import ctypes
import math

import pytest
import torch

from cltk.ops.migu import row_l1_accumulate_ref, topk_row_mask_ref
from cltk.testing.tolerances import tol
from tests.emu.conftest import ptr

Y_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
CUDA_INVALID_VALUE = 1


@pytest.fixture(scope="module")
def lib(emu_build):
    lib = emu_build("migu")
    lib.migu_row_l1_row_chunks.restype = ctypes.c_long
    lib.migu_row_l1_row_chunks.argtypes = [ctypes.c_long, ctypes.c_long]
    lib.migu_row_l1_accumulate.restype = ctypes.c_int
    lib.migu_row_l1_accumulate.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                           ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_long]
    for name in ("migu_topk_row_mask_f32", "migu_topk_row_mask_f64"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_double]
    return lib


def _row_l1_emu(lib, acc, y, chunks=None):
    """Launch on a (rows, d) view of y with unit last stride, as the CUDA glue does."""
    assert y.dim() == 2 and (y.stride(1) == 1 or y.shape[1] <= 1)
    rows, d = y.shape
    if chunks is None:
        chunks = lib.migu_row_l1_row_chunks(rows, d)
    ws = torch.full((max(chunks, 1) * max(d, 1),), float("nan"))  # never-written workspace would show as nan
    rc = lib.migu_row_l1_accumulate(ptr(acc), ptr(y), Y_CODE[y.dtype], rows, d, y.stride(0) if rows else d,
                                    ptr(ws) if chunks > 1 else None, chunks)
    return rc


def _sum64(y):
    return y.double().abs().sum(0)


def _assert_sum_close(got, want64):
    atol, rtol = tol(torch.float32)["atol"], tol(torch.float32)["rtol"]
    err = (got.double() - want64).abs()
    assert bool((err <= atol + rtol * want64).all()), f"max error {err.max().item():.3e} at {err.argmax().item()}"


# (rows, d): size-1, d below / across the 32-column tile, rows not a multiple of the 8 row lanes or 64-row chunks.
ROW_SHAPES = [(1, 1), (3, 5), (9, 31), (17, 33), (64, 32), (130, 70), (301, 7), (0, 5), (4, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=[f"{r}x{d}" for r, d in ROW_SHAPES])
def test_row_l1_matches_ref(lib, shape, dtype):
    g = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    y = torch.randn(shape, generator=g).to(dtype)
    init = torch.rand(shape[1], generator=g)
    chunk_options = sorted({1, lib.migu_row_l1_row_chunks(*shape), 3, max(1, shape[0])})
    for chunks in chunk_options:
        acc, acc_ref = init.clone(), init.clone()
        assert _row_l1_emu(lib, acc, y, chunks) == 0
        row_l1_accumulate_ref(acc_ref, y)
        torch.testing.assert_close(acc, acc_ref, **tol(torch.float32), msg=lambda s: f"chunks={chunks}: {s}")
        _assert_sum_close(acc, init.double() + _sum64(y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_row_l1_padded_row_stride(lib, dtype):
    g = torch.Generator().manual_seed(3)
    big = torch.randn(45, 50, generator=g).to(dtype)
    y = big[:, 3:40]  # row stride 50, d = 37
    acc, acc_ref = torch.zeros(37), torch.zeros(37)
    for chunks in (1, 4):
        acc.zero_()
        assert _row_l1_emu(lib, acc, y, chunks) == 0
        acc_ref.zero_()
        row_l1_accumulate_ref(acc_ref, y)
        torch.testing.assert_close(acc, acc_ref, **tol(torch.float32))


def test_row_l1_chunks_plan(lib):
    # one chunk for few rows (direct add), several (<= 65535, >= 64 rows each) for a tall y
    assert lib.migu_row_l1_row_chunks(10, 768) == 1
    assert lib.migu_row_l1_row_chunks(8192, 768) > 1
    for rows, d in ((8192, 768), (100000, 32), (10 ** 9, 1)):
        c = lib.migu_row_l1_row_chunks(rows, d)
        assert 1 <= c <= 65535
        assert c == 1 or math.ceil(rows / c) >= 64


def test_row_l1_is_deterministic(lib):
    g = torch.Generator().manual_seed(4)
    y = torch.randn(257, 40, generator=g)
    outs = []
    for _ in range(2):
        acc = torch.zeros(40)
        assert _row_l1_emu(lib, acc, y, 5) == 0
        outs.append(acc)
    assert torch.equal(outs[0], outs[1])


def test_row_l1_bad_launch_is_invalid_value(lib):
    y, acc = torch.randn(10, 4), torch.zeros(4)
    for chunks in (0, 65536):
        assert _row_l1_emu(lib, acc, y, chunks) == CUDA_INVALID_VALUE
    rc = lib.migu_row_l1_accumulate(ptr(acc), ptr(y), 7, 10, 4, 4, None, 1)  # unknown dtype code
    assert rc == CUDA_INVALID_VALUE
    rc = lib.migu_row_l1_accumulate(ptr(acc), ptr(y), 0, 10, 4, 4, None, 2)  # several chunks, no workspace
    assert rc == CUDA_INVALID_VALUE
    assert torch.equal(acc, torch.zeros(4))


# ---------------------------------------------------------------------------------------------------------------
# topk_row_mask: one block per layer
# ---------------------------------------------------------------------------------------------------------------
def _topk_emu(lib, scores, threshold):
    n = len(scores)
    outs = [torch.ones(s.shape, dtype=torch.bool) for s in scores]  # all True: a mask left unwritten would show
    sp = (ctypes.c_void_p * n)(*[s.data_ptr() for s in scores])
    op = (ctypes.c_void_p * n)(*[o.data_ptr() for o in outs])
    sizes = torch.tensor([s.numel() for s in scores], dtype=torch.int64)
    fn = lib.migu_topk_row_mask_f64 if scores[0].dtype == torch.float64 else lib.migu_topk_row_mask_f32
    rc = fn(ctypes.cast(sp, ctypes.c_void_p), ctypes.cast(op, ctypes.c_void_p), ptr(sizes), n, threshold)
    return rc, outs


def _layers(dtype, seed):
    """Sizes 1..9, odd, the 256-thread block +-1 and two blocks; distinct values, ties, signed with +-0, constant."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in [1, 2, 3, 4, 5, 7, 9, 31, 255, 256, 257, 600]:
        out.append(torch.rand(n, generator=g, dtype=torch.float64))
        out.append(torch.randint(0, 3, (n,), generator=g).double())
    s = torch.randn(101, generator=g, dtype=torch.float64)
    s[::4], s[1::9] = 0.0, -0.0
    out += [s, torch.full((13,), -1.5, dtype=torch.float64),
            torch.randn(77, generator=g, dtype=torch.float64) * torch.logspace(-30, 30, 77, dtype=torch.float64)]
    return [x.to(dtype).contiguous() for x in out]


# Each emulated block runs 256 host threads: the default run takes a few thresholds, the slow sweep many.
THRESHOLDS = [0.0, 1 / 3, 0.7, math.nextafter(1.0, 0.0)]
THRESHOLDS_SLOW = [1e-9, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999] + [i / 17 for i in range(1, 17, 3)]


@pytest.mark.parametrize("thresholds", [THRESHOLDS, pytest.param(THRESHOLDS_SLOW, marks=pytest.mark.slow)],
                         ids=["thresholds", "thresholds_sweep"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_topk_equals_quantile_mask(lib, dtype, thresholds):
    layers = _layers(dtype, seed=5)
    for t in thresholds:
        rc, outs = _topk_emu(lib, layers, t)
        assert rc == 0
        for i, (s, m) in enumerate(zip(layers, outs)):
            want = s >= torch.quantile(s, t)
            assert torch.equal(m, want), f"layer {i} (n={s.numel()}) threshold={t!r}"
            assert torch.equal(topk_row_mask_ref(s, t), want)


def test_topk_nan_layer_is_all_false_and_others_unaffected(lib):
    a = torch.tensor([1.0, float("nan"), 3.0])
    b = torch.rand(40, generator=torch.Generator().manual_seed(6))
    rc, (ma, mb) = _topk_emu(lib, [a, b], 0.5)
    assert rc == 0
    assert not ma.any() and torch.equal(ma, a >= torch.quantile(a, 0.5))
    assert torch.equal(mb, b >= torch.quantile(b, 0.5))


def test_topk_bad_threshold_is_invalid_value(lib):
    s = torch.rand(5)
    for t in (1.0, -0.1, float("nan")):
        rc, (m,) = _topk_emu(lib, [s], t)
        assert rc == CUDA_INVALID_VALUE and m.all()
    assert lib.migu_topk_row_mask_f32(None, None, None, 0, 0.5) == 0  # no layers: nothing to launch
