"""cltk.ops.masked_adamw_: the fused row-masked AdamW step.

The four op tests, adapted to an optimizer step:
(1) the op against masked_adamw_ref over dtypes and shapes (size-1, odd, empty, 0-D, non-contiguous grads and
    params), with and without masks and freezing;
(2) gradcheck does not apply (an optimizer step is not differentiable and has no backward); instead the update is
    checked in float64 against the AdamW formula written out element by element, and against
    "zero the masked gradient rows, then torch.optim.AdamW";
(3) torch.library.opcheck;
(4) bad input raises an error naming the argument.
"""
import math

import pytest
import torch

import cltk
from cltk.ops.masked_adamw import masked_adamw_, masked_adamw_ref
from cltk.testing.tolerances import assert_lowp_within_factor, tol

HP = dict(lr=3e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.05)
native = pytest.mark.skipif(not cltk._ext.available(), reason="cltk._C not built")

SHAPES = {
    "odd_37x19": (37, 19),
    "size1_1x1": (1, 1),
    "bias_33": (33,),
    "empty_0x4": (0, 4),
    "scalar": (),
    "conv_8x3x3x3": (8, 3, 3, 3),
    "wide_5x1000": (5, 1000),
}


def _make(shape, dtype, seed, with_mask=True, noncontig_grad=False, noncontig_param=False):
    gen = torch.Generator().manual_seed(seed)
    def r(scale=1.0, positive=False):
        x = torch.rand(shape, generator=gen) if positive else torch.randn(shape, generator=gen)
        return (scale * x).to(dtype)
    p, g, m, v = r(), r(), r(0.1), r(0.01, positive=True)
    if noncontig_grad and len(shape) >= 2:
        g = g.transpose(0, 1).contiguous().transpose(0, 1)  # same values, transposed strides
    if noncontig_param and len(shape) >= 2:
        p = p.transpose(0, 1).contiguous().transpose(0, 1)
    mask = None
    if with_mask and len(shape) >= 1:
        mask = torch.rand(shape[0], generator=gen) < 0.5
    return [p, g, m, v, mask, torch.tensor(float(seed % 7 + 1))]


def _clone(ts):
    return [[x.clone() if isinstance(x, torch.Tensor) else x for x in t] for t in ts]


def _call(fn, ts, freeze=False, **hp):
    hp = {**HP, **hp}
    fn([t[0] for t in ts], [t[1] for t in ts], [t[2] for t in ts], [t[3] for t in ts], [t[4] for t in ts],
       [t[5] for t in ts], freeze_masked_rows=freeze, **hp)


def _group(dtype, **kw):
    return [_make(shape, dtype, seed=i + 1, with_mask=(i % 3 != 1), **kw) for i, shape in enumerate(SHAPES.values())]


# ---- (1) op vs reference --------------------------------------------------------------------------------------
@pytest.mark.parametrize("freeze", [False, True], ids=["zero_grad_rows", "freeze_rows"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_matches_ref(dtype, shape, freeze):
    for with_mask in (True, False):
        ts = [_make(shape, dtype, seed=3, with_mask=with_mask)]
        ref = _clone(ts)
        _call(masked_adamw_, ts, freeze)
        _call(masked_adamw_ref, ref, freeze)
        for got, want in zip(ts[0][:4], ref[0][:4]):
            torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("layout", ["noncontig_grad", "noncontig_param"])
def test_noncontiguous_matches_ref(layout):
    ts = _group(torch.float32, **{layout: True})
    assert any(not t[1 if layout == "noncontig_grad" else 0].is_contiguous() for t in ts)
    ref = _clone(ts)
    _call(masked_adamw_, ts)
    _call(masked_adamw_ref, ref)
    for t, r in zip(ts, ref):
        for got, want in zip(t[:4], r[:4]):
            torch.testing.assert_close(got, want, **tol(torch.float32))


def test_group_of_mixed_dtypes_matches_ref():
    ts = _group(torch.float32) + _group(torch.float64)
    ref = _clone(ts)
    _call(masked_adamw_, ts)
    _call(masked_adamw_ref, ref)
    for t, r in zip(ts, ref):
        for got, want in zip(t[:4], r[:4]):
            torch.testing.assert_close(got, want, **tol(t[0].dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_lowp_within_factor_of_torch(dtype):
    ts = [_make(s, dtype, seed=5) for s in [(37, 19), (33,), (5, 1000)]]
    torch_lowp = _clone(ts)
    fp32 = [[x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() else x for x in t]
            for t in _clone(ts)]
    _call(masked_adamw_, ts)
    _call(masked_adamw_ref, torch_lowp)
    _call(masked_adamw_ref, fp32)
    for t, tl, f in zip(ts, torch_lowp, fp32):
        for got, want_lowp, want32 in zip(t[:4], tl[:4], f[:4]):
            assert_lowp_within_factor(got, want_lowp, want32)


def test_masked_rows_never_read_the_gradient():
    ts = [_make((40, 9), torch.float32, seed=2), _make((40,), torch.float32, seed=4)]
    for t in ts:
        t[1][~t[4]] = float("nan")
    ref = _clone(ts)
    _call(masked_adamw_, ts)
    _call(masked_adamw_ref, ref)
    for t, r in zip(ts, ref):
        assert torch.isfinite(t[0]).all() and torch.isfinite(t[2]).all() and torch.isfinite(t[3]).all()
        for i in (0, 2, 3):
            torch.testing.assert_close(t[i], r[i], **tol(torch.float32))


# ---- (2) no gradcheck: the analytic AdamW update in float64 ------------------------------------------------------
def _adamw_expected(p, g, m, v, keep, step, freeze, lr, beta1, beta2, eps, weight_decay):
    # torch.optim.AdamW puts eps outside the bias-corrected sqrt: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
    p, g, m, v = (x.flatten().tolist() for x in (p, g, m, v))
    row_len = len(p) // len(keep)
    bc1, bc2 = 1 - beta1**step, 1 - beta2**step
    res = []
    for i in range(len(p)):
        active = keep[i // row_len]
        if not active and freeze:
            res.append((p[i], m[i], v[i]))
            continue
        gi = g[i] if active else 0.0
        mi = beta1 * m[i] + (1 - beta1) * gi
        vi = beta2 * v[i] + (1 - beta2) * gi * gi
        pi = p[i] * (1 - lr * weight_decay) - (lr / bc1) * mi / (math.sqrt(vi) / math.sqrt(bc2) + eps)
        res.append((pi, mi, vi))
    return [torch.tensor([r[k] for r in res], dtype=torch.float64) for k in range(3)]


@pytest.mark.parametrize("freeze", [False, True], ids=["zero_grad_rows", "freeze_rows"])
@pytest.mark.parametrize("fn", [masked_adamw_, masked_adamw_ref], ids=["op", "ref"])
def test_update_equals_adamw_formula_fp64(fn, freeze):
    for shape, seed in [((6, 5), 1), ((7,), 2), ((3, 2, 2), 3)]:
        t = _make(shape, torch.float64, seed=seed)
        keep = t[4].tolist()
        want = _adamw_expected(*t[:4], keep, float(t[5]), freeze, **HP)
        _call(fn, [t], freeze)
        for got, w in zip((t[0], t[2], t[3]), want):
            torch.testing.assert_close(got.flatten(), w, **tol(torch.float64))
        if freeze:
            assert not all(keep) and not torch.equal(t[0][torch.tensor(keep)], torch.zeros(0))


@pytest.mark.parametrize("fn", [masked_adamw_, masked_adamw_ref], ids=["op", "ref"])
def test_equals_zeroed_rows_then_torch_adamw(fn):
    # Five consecutive steps against torch.optim.AdamW (for-loop) fed the same gradients with masked rows zeroed.
    gen = torch.Generator().manual_seed(0)
    shapes = [(23, 11), (23,), (9, 4, 2)]
    ours = [torch.randn(s, generator=gen) for s in shapes]
    theirs = [torch.nn.Parameter(x.clone()) for x in ours]
    opt = torch.optim.AdamW(theirs, lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                            weight_decay=HP["weight_decay"], foreach=False)
    ms = [torch.zeros_like(x) for x in ours]
    vs = [torch.zeros_like(x) for x in ours]
    steps = [torch.tensor(0.0) for _ in ours]
    for it in range(5):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        masks = [torch.rand(s[0], generator=gen) < 0.3 for s in shapes]
        masks[1] = None
        for th, g, mk in zip(theirs, grads, masks):
            th.grad = g.clone() if mk is None else g * mk.view(-1, *[1] * (g.dim() - 1))
        opt.step()
        for s in steps:
            s += 1
        fn(ours, grads, ms, vs, masks, steps, **HP)
    for i, th in enumerate(theirs):
        st = opt.state[th]
        torch.testing.assert_close(ours[i], th.detach(), **tol(torch.float32))
        torch.testing.assert_close(ms[i], st["exp_avg"], **tol(torch.float32))
        torch.testing.assert_close(vs[i], st["exp_avg_sq"], **tol(torch.float32))


# ---- (3) opcheck ----------------------------------------------------------------------------------------------
@native
@pytest.mark.parametrize("freeze", [False, True], ids=["zero_grad_rows", "freeze_rows"])
def test_opcheck(freeze):
    ts = [_make((9, 5), torch.float32, seed=1), _make((9,), torch.float32, seed=2, with_mask=False),
          _make((4, 2, 3), torch.float32, seed=3)]
    args = ([t[0] for t in ts], [t[1] for t in ts], [t[2] for t in ts], [t[3] for t in ts], [t[4] for t in ts],
            [t[5] for t in ts])
    torch.library.opcheck(torch.ops.cltk.masked_adamw_.default, args, {**HP, "freeze_masked_rows": freeze})


# ---- (4) bad input --------------------------------------------------------------------------------------------
def _bad(**change):
    t = _make((6, 4), torch.float32, seed=1)
    lists = dict(params=[t[0]], grads=[t[1]], exp_avgs=[t[2]], exp_avg_sqs=[t[3]], row_masks=[t[4]], steps=[t[5]])
    hp = dict(HP)
    for k, v in change.items():
        (lists if k in lists else hp)[k] = v
    return lists, hp


@pytest.mark.parametrize("fn", [masked_adamw_, masked_adamw_ref], ids=["op", "ref"])
@pytest.mark.parametrize("change, match", [
    (dict(grads=[]), r"grads must have one entry per param \(1\), got 0"),
    (dict(row_masks=[torch.ones(5, dtype=torch.bool)]), r"row_masks\[0\] must be 1-D of size params\[0\].size\(0\) = 6, got shape \[5\]"),
    (dict(row_masks=[torch.ones(6)]), r"row_masks\[0\] must have dtype bool, got torch.float32"),
    (dict(grads=[torch.zeros(6, 5)]), r"must have the shape of params\[0\] \[6, 4\], got \[6, 5\]"),
    (dict(exp_avgs=[torch.zeros(6, 4, dtype=torch.float64)]), r"must have the dtype of params\[0\] \(torch.float32\)"),
    (dict(params=[torch.zeros(6, 4, dtype=torch.int32)]), r"params\[0\] must be float32, float64, float16 or bfloat16, got torch.int32"),
    (dict(beta1=1.0), r"beta1 must be in \[0, 1\), got 1.0"),
    (dict(lr=-1.0), r"lr must be >= 0, got -1.0"),
], ids=["length", "mask_size", "mask_dtype", "grad_shape", "state_dtype", "int_param", "beta1", "lr"])
def test_bad_input(fn, change, match):
    lists, hp = _bad(**change)
    with pytest.raises(ValueError, match=match):
        fn(**lists, **hp)


@native
@pytest.mark.parametrize("change, match", [
    (dict(row_masks=[torch.ones(5, dtype=torch.bool)]), r"row_masks\[0\] must be 1-D of size params\[0\].size\(0\) = 6, got shape \[5\]"),
    (dict(exp_avgs=[torch.zeros(6, 4, dtype=torch.float64)]), r"must all have dtype Float \(one call per \(device, dtype\) group\)"),
    (dict(steps=[torch.tensor(0.0)]), r"steps\[0\] must be >= 1 \(the step count after incrementing\), got 0"),
    (dict(exp_avg_sqs=[torch.zeros(4, 6).t()]), r"exp_avg_sqs\[0\] must be contiguous"),
], ids=["mask_size", "mixed_dtype", "step0", "noncontig_state"])
def test_bad_input_native_op(change, match):
    lists, hp = _bad(**change)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.cltk.masked_adamw_(*lists.values(), **hp)
