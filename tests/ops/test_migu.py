"""cltk.ops.migu: row_l1_accumulate_, topk_row_mask and topk_row_mask_batched.

The four op tests, adapted to ops that are not differentiable:
(1) each op against its ``_ref`` (and row_l1_accumulate_ against a float64 sum; topk_row_mask bit for bit against
    ``scores >= torch.quantile(scores, threshold)``) over dtypes, sizes, strides, ties and thresholds;
(2) gradcheck does not apply: row_l1_accumulate_ returns nothing (it adds into a float32 buffer under no autograd)
    and topk_row_mask returns bool. Instead: row_l1_accumulate_ records nothing for autograd and keeps no
    reference to y (the activation is freed as soon as the caller drops it), and the masks never require grad;
(3) torch.library.opcheck;
(4) bad input raises an error that names the argument and the sizes.
"""
import gc
import math
import weakref

import pytest
import torch

import cltk
from cltk.ops.migu import (
    row_l1_accumulate_,
    row_l1_accumulate_ref,
    topk_row_mask,
    topk_row_mask_batched,
    topk_row_mask_batched_ref,
    topk_row_mask_ref,
)
from cltk.testing.tolerances import assert_lowp_within_factor, tol

native = pytest.mark.skipif(not cltk._ext.available(), reason=f"cltk._C not loaded: {cltk._ext.reason()}")
ops = torch.ops.cltk


# ---------------------------------------------------------------------------------------------------------------
# row_l1_accumulate_
# ---------------------------------------------------------------------------------------------------------------
def _y(shape, dtype, seed=0, layout="contig"):
    """y of `shape` in `dtype` with the given memory layout (values do not depend on the layout)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g).to(dtype)
    if layout == "contig":
        return y
    if layout == "transposed":  # last dim strided: same values, storage of y.mT
        out = y.mT.contiguous().mT if y.dim() >= 2 else y
    elif layout == "col_slice":  # last dim contiguous, row stride > d
        big = torch.randn(*shape[:-1], 2 * shape[-1] + 3, generator=g).to(dtype)
        big[..., 1:shape[-1] + 1] = y
        out = big[..., 1:shape[-1] + 1]
    elif layout == "row_step":  # every other row of a taller tensor
        big = torch.randn(2 * shape[0], *shape[1:], generator=g).to(dtype)
        big[::2] = y
        out = big[::2]
    elif layout == "btd_permuted":  # (T, B, d) storage read as (B, T, d): leading dims cannot be merged
        out = y.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "expanded":  # stride 0 on a leading dim
        out = y[:1].expand(shape)
    else:
        raise ValueError(layout)
    torch.testing.assert_close(out, y if layout != "expanded" else y[:1].expand(shape), rtol=0, atol=0)
    assert layout == "contig" or not out.is_contiguous() or out.numel() <= 1
    return out


def _sum64(y):
    return y.double().reshape(math.prod(y.shape[:-1]), y.shape[-1]).abs().sum(0)


def _assert_sum_close(got, want64, y):
    """A float32 sum within the table's tolerance of the float64 sum, relative to the sum of magnitudes (which
    here is the result itself: every term is >= 0)."""
    atol, rtol = tol(torch.float32)["atol"], tol(torch.float32)["rtol"]
    err = (got.double() - want64).abs()
    bound = atol + rtol * want64
    assert bool((err <= bound).all()), f"max error {err.max().item():.3e} at {err.argmax().item()}"


# (id, shape): size-1, odd, empty, 3-D [B, T, d], more rows than one 8-row block and than one 1024-row flush,
# d below / across / above the 16-float vector width.
ROW_SHAPES = [
    ("1x1", (1, 1)),
    ("d1_odd_rows", (13, 1)),
    ("odd_37x19", (37, 19)),
    ("rows7_d16", (7, 16)),
    ("rows9_d33", (9, 33)),
    ("1d_y", (29,)),
    ("btd_3x5x33", (3, 5, 33)),
    ("btd_2x1x40", (2, 1, 40)),
    ("rows2100_d17", (2100, 17)),
    ("rows1100_d130", (1100, 130)),
    ("empty_rows", (0, 7)),
    ("empty_btd", (2, 0, 7)),
    ("empty_d", (5, 0)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name,shape", ROW_SHAPES, ids=[s[0] for s in ROW_SHAPES])
def test_row_l1_matches_ref(name, shape, dtype):
    y = _y(shape, dtype, seed=1)
    d = shape[-1]
    init = torch.rand(d, generator=torch.Generator().manual_seed(2))
    acc, acc_ref = init.clone(), init.clone()
    row_l1_accumulate_(acc, y)
    row_l1_accumulate_ref(acc_ref, y)
    torch.testing.assert_close(acc, acc_ref, **tol(torch.float32))
    _assert_sum_close(acc, init.double() + _sum64(y), y)
    _assert_sum_close(acc_ref, init.double() + _sum64(y), y)  # the oracle itself, so a wrong one cannot pass


LAYOUTS = ["transposed", "col_slice", "row_step", "btd_permuted", "expanded"]
LAYOUT_SHAPES = {"transposed": (41, 23), "col_slice": (30, 35), "row_step": (19, 40), "btd_permuted": (3, 7, 21),
                 "expanded": (4, 6, 18)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_row_l1_noncontiguous_matches_ref(layout, dtype):
    shape = LAYOUT_SHAPES[layout]
    y = _y(shape, dtype, seed=3, layout=layout)
    acc, acc_ref = torch.zeros(shape[-1]), torch.zeros(shape[-1])
    row_l1_accumulate_(acc, y)
    row_l1_accumulate_ref(acc_ref, y)
    torch.testing.assert_close(acc, acc_ref, **tol(torch.float32))
    _assert_sum_close(acc, _sum64(y), y)


def test_row_l1_noncontiguous_acc():
    y = _y((20, 9), torch.float32, seed=4)
    storage = torch.zeros(18)
    acc = storage[::2]
    row_l1_accumulate_(acc, y)
    _assert_sum_close(acc, _sum64(y), y)
    assert torch.equal(storage[1::2], torch.zeros(9))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_row_l1_lowp_within_factor_of_torch(dtype):
    # Policy of cltk.testing.tolerances: against the float32 truth (y before rounding to `dtype`), the kernel's error
    # is at most 2x that of the hook a user writes in the same dtype (torch sums a bf16/fp16 y into bf16/fp16).
    g = torch.Generator().manual_seed(5)
    y32 = torch.randn(3, 300, 70, generator=g)
    y = y32.to(dtype)
    truth = y32.double().reshape(-1, 70).abs().sum(0)
    acc = torch.zeros(70)
    row_l1_accumulate_(acc, y)
    torch_lowp = y.reshape(-1, 70).abs().sum(0)
    assert torch_lowp.dtype == dtype
    assert_lowp_within_factor(acc, torch_lowp, truth)


def test_row_l1_accumulates_over_calls():
    ys = [_y((11, 13), torch.float32, seed=s) for s in range(4)]
    acc = torch.zeros(13)
    for y in ys:
        row_l1_accumulate_(acc, y)
    _assert_sum_close(acc, sum(_sum64(y) for y in ys), ys[0])


@native
def test_row_l1_deterministic_for_a_thread_count():
    y = _y((5000, 37), torch.float32, seed=6)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            acc = torch.zeros(37)
            ops.row_l1_accumulate_(acc, y)
            outs.append(acc)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[2])  # same thread count: bitwise the same
    for o in outs:
        _assert_sum_close(o, _sum64(y), y)


# ---- (2) no autograd and no reference kept to y -----------------------------------------------------------------
def _forward_with_hook(hook):
    """A linear layer's forward with grad enabled; `hook(acc, y)` sees the activation as a forward hook does.
    Returns (acc, weakref to y) after the caller's last reference to y is gone."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 16, generator=g)
    lin = torch.nn.Linear(16, 24)
    acc = torch.zeros(24)
    y = lin(x)
    assert y.requires_grad
    hook(acc, y)
    ref = weakref.ref(y)
    del y
    gc.collect()
    return acc, ref


@pytest.mark.parametrize("fn", [row_l1_accumulate_, row_l1_accumulate_ref], ids=["kernel", "ref"])
def test_row_l1_keeps_no_reference_to_y(fn):
    acc, ref = _forward_with_hook(fn)
    assert not acc.requires_grad and acc.grad_fn is None
    assert ref() is None, "y is still alive after the call"


def test_naive_hook_without_no_grad_keeps_y_alive():
    # What the tests above guard against: the plain hook body records |y| for autograd into acc's history.
    def naive(acc, y):
        acc += y.reshape(-1, y.shape[-1]).abs().sum(0)

    acc, ref = _forward_with_hook(naive)
    assert acc.grad_fn is not None and ref() is not None


def _torch_alloc_peak(fn):
    """Largest net allocation of any op inside fn, as the CPU profiler records the torch allocator."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((abs(e.cpu_memory_usage) for e in prof.key_averages()), default=0)


@native
def test_row_l1_allocates_no_tensor():
    y = _y((2048, 256), torch.float32, seed=8)
    acc = torch.zeros(256)
    row_l1_accumulate_(acc, y)  # warm
    assert _torch_alloc_peak(lambda: row_l1_accumulate_(acc, y)) == 0
    # the measurement sees the reference's |y| temporary
    assert _torch_alloc_peak(lambda: row_l1_accumulate_ref(acc, y)) >= y.numel() * y.element_size()


def test_masks_never_require_grad():
    s = torch.rand(20, requires_grad=True)
    assert not topk_row_mask(s, 0.5).requires_grad
    assert not any(m.requires_grad for m in topk_row_mask_batched([s, s * 2], 0.5))


# ---------------------------------------------------------------------------------------------------------------
# topk_row_mask
# ---------------------------------------------------------------------------------------------------------------
THRESHOLDS = sorted(set([i / 40 for i in range(40)] + [0.7, 0.3, 1 / 3, 2 / 3, 0.9, 0.99, 0.999,
                                                       math.nextafter(1.0, 0.0), 1e-9, 0.123456789]))


def _scores(n, dtype, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "distinct":
        s = torch.rand(n, generator=g, dtype=torch.float64)
    elif kind == "ties":  # few distinct values: every quantile lands in a run of equal values
        s = torch.randint(0, 4, (n,), generator=g).double()
    elif kind == "signed":  # negative and positive, +-0 included
        s = torch.randn(n, generator=g, dtype=torch.float64)
        s[::5] = 0.0
        s[1::7] = -0.0
    elif kind == "constant":
        s = torch.full((n,), 2.5, dtype=torch.float64)
    elif kind == "wide":  # magnitudes far apart: interpolation rounds
        s = torch.randn(n, generator=g, dtype=torch.float64) * torch.logspace(-20, 20, n, dtype=torch.float64)
    else:
        raise ValueError(kind)
    return s.to(dtype)


SIZES = list(range(1, 18)) + [31, 64, 97, 256, 257, 1000, 3072]
KINDS = ["distinct", "ties", "signed", "constant", "wide"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kind", KINDS)
def test_topk_equals_quantile_mask(kind, dtype):
    for n in SIZES:
        s = _scores(n, dtype, kind, seed=n)
        for t in THRESHOLDS:
            want = s >= torch.quantile(s, t)
            got = topk_row_mask(s, t)
            assert got.dtype == torch.bool and got.shape == s.shape
            assert torch.equal(got, want), f"n={n} threshold={t!r}"
            assert torch.equal(topk_row_mask_ref(s, t), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_topk_keeps_top_fraction_and_noncontiguous(dtype):
    base = _scores(2 * 101, dtype, "distinct", seed=9)
    s = base[::2]
    assert not s.is_contiguous()
    for t in (0.0, 0.5, 0.7):
        got = topk_row_mask(s, t)
        assert torch.equal(got, s >= torch.quantile(s, t))
        assert int(got.sum()) == 101 - math.ceil(t * 100)  # distinct values: exactly the rows at or above rank
    assert topk_row_mask(s, 0.0).all()


def test_topk_nan_and_inf_follow_torch():
    s = torch.tensor([1.0, float("nan"), 3.0, 2.0])
    assert not topk_row_mask(s, 0.5).any()
    assert torch.equal(topk_row_mask(s, 0.5), s >= torch.quantile(s, 0.5))
    for s in (torch.tensor([1.0, float("inf"), 3.0, 2.0, -float("inf")]), torch.tensor([float("inf")] * 3)):
        for t in THRESHOLDS:
            assert torch.equal(topk_row_mask(s, t), s >= torch.quantile(s, t)), (s, t)


def test_batched_equals_per_layer():
    g = torch.Generator().manual_seed(10)
    # the 72 linear layers of a 12-block d=64 transformer, plus odd, size-1, tied and float64 layers
    scores = [torch.rand(n, generator=g) for n in [64, 64, 64, 64, 256, 64] * 12]
    scores += [torch.randint(0, 3, (37,), generator=g).float(), torch.rand(1, generator=g),
               torch.rand(97, generator=g, dtype=torch.float64), torch.rand(300, generator=g)[::3]]
    for t in (0.0, 0.25, 0.7, 0.9, 0.999):
        got = topk_row_mask_batched(scores, t)
        ref = topk_row_mask_batched_ref(scores, t)
        assert len(got) == len(scores)
        for i, (s, m, r) in enumerate(zip(scores, got, ref)):
            assert torch.equal(m, topk_row_mask(s, t)), i
            assert torch.equal(m, s >= torch.quantile(s, t)), i
            assert torch.equal(r, m), i
    assert topk_row_mask_batched([], 0.5) == []
    assert topk_row_mask_batched((scores[0],), 0.5)[0].shape == (64,)


# ---- (3) opcheck -----------------------------------------------------------------------------------------------
@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_row_l1(dtype):
    g = torch.Generator().manual_seed(11)
    y = torch.randn(3, 7, 19, generator=g).to(dtype)
    torch.library.opcheck(ops.row_l1_accumulate_.default, (torch.rand(19, generator=g), y))
    torch.library.opcheck(ops.row_l1_accumulate_.default, (torch.zeros(19), y.mT.contiguous().mT))


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_opcheck_topk(dtype):
    g = torch.Generator().manual_seed(12)
    s = torch.rand(33, generator=g, dtype=dtype)
    torch.library.opcheck(ops.topk_row_mask.default, (s, 0.7))
    torch.library.opcheck(ops.topk_row_mask_batched.default,
                          ([s, torch.rand(5, generator=g, dtype=dtype), torch.rand(1, generator=g)], 0.3))


# ---- (4) bad input -----------------------------------------------------------------------------------------------
ROW_BAD = [
    ("d_mismatch", lambda: (torch.zeros(8), torch.randn(4, 7)), ValueError,
     r"y.size\(-1\) must equal acc.size\(0\) \(= 8\), got 7 \(y shape \[4, 7\]\)"),
    ("acc_2d", lambda: (torch.zeros(2, 4), torch.randn(3, 4)), ValueError, r"acc must be 1-D \(d_out,\), got 2-D"),
    ("acc_fp64", lambda: (torch.zeros(4, dtype=torch.float64), torch.randn(3, 4)), ValueError,
     r"acc must have dtype float32, got torch.float64"),
    ("acc_bf16", lambda: (torch.zeros(4, dtype=torch.bfloat16), torch.randn(3, 4)), ValueError,
     r"acc must have dtype float32"),
    ("y_fp64", lambda: (torch.zeros(4), torch.randn(3, 4, dtype=torch.float64)), ValueError,
     r"y must be float32, bfloat16 or float16, got torch.float64"),
    ("y_int", lambda: (torch.zeros(4), torch.ones(3, 4, dtype=torch.int64)), ValueError,
     r"y must be float32, bfloat16 or float16, got torch.int64"),
    ("y_0d", lambda: (torch.zeros(1), torch.tensor(1.0)), ValueError, r"y must have at least 1 dim"),
    ("device", lambda: (torch.zeros(4), torch.randn(3, 4, device="meta")), ValueError,
     r"acc and y must be on the same device, got cpu and meta"),
]


@pytest.mark.parametrize("make,exc,match", [b[1:] for b in ROW_BAD], ids=[b[0] for b in ROW_BAD])
@pytest.mark.parametrize("fn", [row_l1_accumulate_, row_l1_accumulate_ref], ids=["kernel", "ref"])
def test_row_l1_bad_input(fn, make, exc, match):
    acc, y = make()
    before = acc.clone()
    with pytest.raises(exc, match="row_l1_accumulate_: " + match):
        fn(acc, y)
    assert torch.equal(acc, before)


def test_row_l1_not_tensors():
    with pytest.raises(TypeError, match=r"acc and y must be tensors, got Tensor and list"):
        row_l1_accumulate_(torch.zeros(2), [1.0, 2.0])


@native
def test_row_l1_native_bad_input_messages():
    with pytest.raises(ValueError, match=r"row_l1_accumulate_: y.size\(-1\) must equal acc.size\(0\) \(= 8\), got 7"):
        ops.row_l1_accumulate_(torch.zeros(8), torch.randn(4, 7))
    with pytest.raises(ValueError, match=r"acc must have dtype float32, got Double"):
        ops.row_l1_accumulate_(torch.zeros(4, dtype=torch.float64), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"y must be float32, bfloat16 or float16, got Double"):
        ops.row_l1_accumulate_(torch.zeros(4), torch.randn(3, 4, dtype=torch.float64))


BAD_THRESHOLDS = [1.0, 1.5, -0.1, -1e-12, float("nan"), float("inf")]


@pytest.mark.parametrize("t", BAD_THRESHOLDS, ids=[repr(t) for t in BAD_THRESHOLDS])
@pytest.mark.parametrize("fn", [topk_row_mask, topk_row_mask_ref, topk_row_mask_batched, topk_row_mask_batched_ref],
                         ids=["kernel", "ref", "batched", "batched_ref"])
def test_threshold_outside_unit_interval(fn, t):
    s = torch.rand(10)
    arg = [s] if "batched" in fn.__name__ else s
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\), got"):
        fn(arg, t)


@native
def test_threshold_native_messages():
    with pytest.raises(ValueError, match=r"topk_row_mask: threshold must be in \[0, 1\), got 1"):
        ops.topk_row_mask(torch.rand(4), 1.0)
    with pytest.raises(ValueError, match=r"topk_row_mask_batched: threshold must be in \[0, 1\), got -0.5"):
        ops.topk_row_mask_batched([torch.rand(4)], -0.5)
    with pytest.raises(ValueError, match=r"topk_row_mask_batched: scores\[1\] must be 1-D \(d,\), got 2-D"):
        ops.topk_row_mask_batched([torch.rand(4), torch.rand(2, 2)], 0.5)


SCORE_BAD = [
    ("2d", lambda: torch.rand(3, 4), r"scores must be 1-D \(d,\), got 2-D tensor of shape \[3, 4\]"),
    ("0d", lambda: torch.tensor(0.5), r"scores must be 1-D \(d,\), got 0-D"),
    ("empty", lambda: torch.zeros(0), r"scores must be non-empty, got shape \[0\]"),
    ("fp16", lambda: torch.rand(4).half(), r"scores must be float32 or float64, got torch.float16"),
    ("int", lambda: torch.arange(4), r"scores must be float32 or float64, got torch.int64"),
]


@pytest.mark.parametrize("make,match", [b[1:] for b in SCORE_BAD], ids=[b[0] for b in SCORE_BAD])
@pytest.mark.parametrize("fn", [topk_row_mask, topk_row_mask_ref], ids=["kernel", "ref"])
def test_topk_bad_scores(fn, make, match):
    with pytest.raises(ValueError, match="topk_row_mask: " + match):
        fn(make(), 0.5)


@pytest.mark.parametrize("fn", [topk_row_mask_batched, topk_row_mask_batched_ref], ids=["batched", "batched_ref"])
def test_batched_bad_input(fn):
    with pytest.raises(ValueError, match=r"topk_row_mask_batched: scores\[1\] must be 1-D \(d,\), got 2-D"):
        fn([torch.rand(4), torch.rand(2, 2)], 0.5)
    with pytest.raises(ValueError, match=r"scores\[0\] must be float32 or float64, got torch.bfloat16"):
        fn([torch.rand(4).bfloat16()], 0.5)
    with pytest.raises(TypeError, match=r"scores must be a list of 1-D tensors, got Tensor"):
        fn(torch.rand(4), 0.5)
    with pytest.raises(ValueError,
                       match=r"all scores must be on one device, scores\[0\] is on cpu, scores\[1\] on meta"):
        fn([torch.rand(4), torch.rand(4, device="meta")], 0.5)
