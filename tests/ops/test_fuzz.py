"""Property-based (hypothesis) comparison of every public op with its ``_ref``.

Random shapes (empty, size-1 and odd sizes included), memory layouts (contiguous, transposed storage, strided
slices), dtypes (each op's supported ones) and special values (NaN, +-Inf placed at random) are drawn by hypothesis;
every draw checks the op against its plain-PyTorch reference:

* non-finite values must propagate as the reference propagates them: the NaN pattern and the +-Inf pattern are equal
  (for bf16 / fp16 those of the fp32 reference rounded to the dtype, see ``assert_same``);
* finite values agree within ``cltk.testing.tolerances``: fp32 / fp64 directly, bf16 / fp16 by the policy relative
  to PyTorch (kernel error against an fp32 reference at most ``LOWP_FACTOR`` x PyTorch's own error in that dtype);
* bool outputs (the row masks) agree bit for bit.

Budgets: the profile ``cltk-ci`` (derandomized, 30 examples per property, no deadline) keeps the file well under a
minute at one thread; the ``@pytest.mark.slow`` twins run the same properties with 500 examples
(``pytest -m slow tests/ops/test_fuzz.py``). ``HYPOTHESIS_PROFILE=cltk-slow`` selects the large budget for all.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cltk
from cltk.ops.bicubic import (bicubic_modulate, bicubic_modulate_multi, bicubic_modulate_multi_ref,
                              bicubic_modulate_ref)
from cltk.ops.masked_adamw import masked_adamw_, masked_adamw_ref
from cltk.ops.metalstm import meta_lstm, meta_lstm_, meta_lstm_init, meta_lstm_ref
from cltk.ops.migu import (row_l1_accumulate_, row_l1_accumulate_ref, topk_row_mask, topk_row_mask_batched,
                           topk_row_mask_batched_ref, topk_row_mask_ref)
from cltk.testing.tolerances import LOWP_FACTOR, tol

pytestmark = pytest.mark.skipif(not cltk._ext.available(), reason=f"cltk._C not loaded: {cltk._ext.reason()}")

_HC = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("cltk-ci", max_examples=30, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=_HC)
settings.register_profile("cltk-slow", max_examples=500, deadline=None, derandomize=False, print_blob=True,
                          suppress_health_check=_HC)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "cltk-ci")
CI = settings(settings.get_profile(_PROFILE))
SLOW = settings(settings.get_profile("cltk-slow"))


def properties(fn):
    """``fn(data)`` as a CI-budget test and a slow-marked large-budget twin (``<name>_slow``)."""
    fast = CI(given(data=st.data())(fn))
    slow = pytest.mark.slow(SLOW(given(data=st.data())(fn)))
    return fast, slow


# ---------------------------------------------------------------------------------------------------------------
# drawing tensors
# ---------------------------------------------------------------------------------------------------------------
LAYOUTS = ("contig", "transposed", "strided", "offset")


def _gen(data):
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))


def lay_out(t, layout, g):
    """The values of ``t`` in another memory layout: transposed storage (last two dims), every other element of
    the first dim of a taller tensor, or a view at an offset into a wider buffer. The values are unchanged."""
    if layout == "contig" or t.dim() == 0:
        return t.clone()
    if layout == "transposed":
        if t.dim() < 2:
            return t.flip(0).clone().flip(0) if t.numel() else t.clone()
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":
        big = torch.randn(2 * t.shape[0], *t.shape[1:], generator=g).to(t.dtype)
        big[::2] = t
        return big[::2]
    big = torch.randn(*t.shape[:-1], t.shape[-1] + 3, generator=g).to(t.dtype)
    big[..., 2:2 + t.shape[-1]] = t
    return big[..., 2:2 + t.shape[-1]]


def sprinkle(data, t, label, allow=True):
    """Put NaN / +Inf / -Inf at a few random positions of ``t`` (in place); returns which kinds were placed."""
    if not allow or t.numel() == 0:
        return ()
    kinds = data.draw(st.lists(st.sampled_from(["nan", "inf", "-inf"]), max_size=3), label=f"{label}_specials")
    flat = t.view(-1) if t.is_contiguous() else None
    for k in kinds:
        i = data.draw(st.integers(0, t.numel() - 1), label=f"{label}_pos")
        idx = torch.unravel_index(torch.tensor(i), t.shape)
        val = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf")}[k]
        if flat is not None:
            flat[i] = val
        else:
            t[tuple(int(j) for j in idx)] = val
    return tuple(kinds)


def assert_same(got, want, dtype=None, what="", lowp=None):
    """Equal NaN and +-Inf patterns, and the finite values within the dtype's tolerance. ``lowp``: for bf16 /
    fp16, ``(torch_lowp, fp32_ref)``, the policy relative to PyTorch instead of a fixed tolerance."""
    assert got.shape == want.shape, f"{what}: shape {list(got.shape)} != {list(want.shape)}"
    if got.dtype == torch.bool:
        assert torch.equal(got, want), f"{what}: masks differ at {torch.nonzero(got != want).flatten().tolist()}"
        return
    g, w = got.detach(), want.detach()
    if lowp is not None:
        # lowp: the oracle is the fp32 reference (the policy above), rounded once to the dtype. PyTorch's own lowp
        # arithmetic can underflow where fp32 does not (fp16 AdamW with eps=0: g*g -> 0, then m / 0 = Inf).
        w = lowp[1].detach().to(g.dtype)
    nan_g, nan_w = torch.isnan(g), torch.isnan(w)
    assert torch.equal(nan_g, nan_w), (f"{what}: NaN pattern differs: op NaN at {torch.nonzero(nan_g).tolist()[:8]}, "
                                       f"ref NaN at {torch.nonzero(nan_w).tolist()[:8]}")
    for sign in (1, -1):
        inf_g, inf_w = g == sign * float("inf"), w == sign * float("inf")
        assert torch.equal(inf_g, inf_w), (f"{what}: {'+' if sign > 0 else '-'}Inf pattern differs: op at "
                                           f"{torch.nonzero(inf_g).tolist()[:8]}, "
                                           f"ref at {torch.nonzero(inf_w).tolist()[:8]}")
    fin = torch.isfinite(w)
    if lowp is None:
        torch.testing.assert_close(g[fin], w[fin], **tol(dtype or w.dtype), msg=lambda s: f"{what}: {s}")
        return
    torch_lowp, fp32 = (x.detach() for x in lowp)
    fin = fin & torch.isfinite(fp32) & torch.isfinite(torch_lowp)
    if not bool(fin.any()):
        return
    k_err = (g[fin].float() - fp32[fin].float()).abs().max().item()
    t_err = (torch_lowp[fin].float() - fp32[fin].float()).abs().max().item()
    # one ulp of the largest value: a kernel that computes in fp32 and rounds once to the dtype has this error
    # even where PyTorch's lowp ops happen to land on the exact value
    floor = torch.finfo(g.dtype).eps * fp32[fin].float().abs().max().item()
    assert k_err <= LOWP_FACTOR * t_err + floor, (f"{what}: kernel error {k_err:.3e} > {LOWP_FACTOR} x torch error "
                                                  f"{t_err:.3e} + {floor:.3e}")


# ---------------------------------------------------------------------------------------------------------------
# MIGU: row_l1_accumulate_, topk_row_mask, topk_row_mask_batched
# ---------------------------------------------------------------------------------------------------------------
def _row_l1(data):
    g = _gen(data)
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), label="dtype")
    lead = data.draw(st.lists(st.integers(0, 7), min_size=0, max_size=3), label="lead")
    d = data.draw(st.integers(1, 19), label="d")
    shape = (*lead, d)
    y0 = (torch.randn(shape, generator=g) * data.draw(st.sampled_from([1e-3, 1.0, 1e3]), label="scale")).to(dtype)
    specials = sprinkle(data, y0, "y", data.draw(st.booleans(), label="specials"))
    y = lay_out(y0, data.draw(st.sampled_from(LAYOUTS), label="layout"), g)
    assert torch.equal(torch.isnan(y), torch.isnan(y0))
    acc0 = torch.rand(d, generator=g) * 10
    acc, acc_ref = acc0.clone(), acc0.clone()
    row_l1_accumulate_(acc, y)
    row_l1_accumulate_ref(acc_ref, y0)
    # both accumulate the same (bf16/fp16) values in fp32: the fp32 tolerance applies whatever y's dtype
    assert_same(acc, acc_ref, torch.float32, f"row_l1_accumulate_ {dtype} {list(shape)} specials={specials}")


def _scores(data, g, label):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label=f"{label}_dtype")
    d = data.draw(st.integers(1, 41), label=f"{label}_d")
    kind = data.draw(st.sampled_from(["randn", "ties", "constant"]), label=f"{label}_kind")
    if kind == "randn":
        s = torch.randn(d, generator=g, dtype=torch.float64).to(dtype)
    elif kind == "ties":
        s = torch.randint(0, 4, (d,), generator=g).to(dtype)
    else:
        s = torch.full((d,), 2.5, dtype=dtype)
    sprinkle(data, s, label, data.draw(st.booleans(), label=f"{label}_specials"))
    if data.draw(st.booleans(), label=f"{label}_strided"):
        big = torch.zeros(2 * d, dtype=dtype)
        big[::2] = s
        s = big[::2]
    return s


_THRESHOLD = st.one_of(st.sampled_from([0.0, 0.5, 0.7, 0.999999]), st.floats(0.0, 1.0, exclude_max=True))


def _topk(data):
    g = _gen(data)
    s = _scores(data, g, "scores")
    t = data.draw(_THRESHOLD, label="threshold")
    assert_same(topk_row_mask(s, t), topk_row_mask_ref(s.contiguous(), t), what=f"topk_row_mask d={s.numel()} T={t}")


def _topk_batched(data):
    g = _gen(data)
    n = data.draw(st.integers(0, 5), label="layers")
    ss = [_scores(data, g, f"s{i}") for i in range(n)]
    t = data.draw(_THRESHOLD, label="threshold")
    got, want = topk_row_mask_batched(ss, t), topk_row_mask_batched_ref(ss, t)
    assert len(got) == len(want) == n
    for i, (a, b) in enumerate(zip(got, want)):
        assert_same(a, b, what=f"topk_row_mask_batched[{i}] T={t}")
        assert torch.equal(a, topk_row_mask(ss[i], t))


test_row_l1_accumulate, test_row_l1_accumulate_slow = properties(_row_l1)
test_topk_row_mask, test_topk_row_mask_slow = properties(_topk)
test_topk_row_mask_batched, test_topk_row_mask_batched_slow = properties(_topk_batched)


# ---------------------------------------------------------------------------------------------------------------
# masked AdamW
# ---------------------------------------------------------------------------------------------------------------
def _adamw_case(data, g, dtype, i):
    shape = data.draw(st.sampled_from([(0, 3), (1,), (1, 1), (7,), (5, 3), (9, 2, 3), (33, 5), (4, 0)]),
                      label=f"shape{i}")
    p = torch.randn(shape, generator=g).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype) * data.draw(st.sampled_from([1e-3, 1.0, 30.0]), label="gs")
    m = (torch.randn(shape, generator=g) * 0.1).to(dtype)
    v = (torch.rand(shape, generator=g) * 0.01).to(dtype)
    mask = None
    if data.draw(st.booleans(), label=f"masked{i}"):
        mask = torch.rand(shape[0], generator=g) < data.draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]), label="keep")
    sprinkle(data, grad, f"grad{i}", data.draw(st.booleans(), label=f"specials{i}"))
    step = torch.tensor(float(data.draw(st.integers(1, 1000), label=f"step{i}")))
    layouts = [data.draw(st.sampled_from(LAYOUTS), label=f"layout{i}_{k}") for k in range(4)]
    return [lay_out(t, lay, g) for t, lay in zip((p, grad, m, v), layouts)] + [mask, step]


def _clone_case(c, dtype=None):
    return [t.clone() if dtype is None else t.to(dtype) for t in c[:4]] + c[4:]


def _adamw_call(fn, cases, kw):
    fn(*[[c[k] for c in cases] for k in range(6)], **kw)


def _masked_adamw(data):
    g = _gen(data)
    kw = dict(lr=data.draw(st.sampled_from([0.0, 1e-3, 0.1]), label="lr"),
              beta1=data.draw(st.sampled_from([0.0, 0.3, 0.9]), label="beta1"),
              beta2=data.draw(st.sampled_from([0.0, 0.5, 0.999]), label="beta2"),
              eps=data.draw(st.sampled_from([0.0, 1e-8, 1e-3]), label="eps"),
              weight_decay=data.draw(st.sampled_from([0.0, 1e-2]), label="wd"),
              freeze_masked_rows=data.draw(st.booleans(), label="freeze"))
    dtypes = data.draw(st.lists(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
                                min_size=1, max_size=4), label="dtypes")
    cases = [_adamw_case(data, g, dt, i) for i, dt in enumerate(dtypes)]
    ref = [_clone_case(c) for c in cases]
    fp32 = [_clone_case(c, torch.float32 if c[0].dtype in (torch.float16, torch.bfloat16) else None) for c in cases]
    _adamw_call(masked_adamw_, cases, kw)
    _adamw_call(masked_adamw_ref, ref, kw)
    _adamw_call(masked_adamw_ref, fp32, kw)
    for i, (c, r, f) in enumerate(zip(cases, ref, fp32)):
        for k, name in ((0, "param"), (2, "exp_avg"), (3, "exp_avg_sq")):
            what = f"masked_adamw_ {name}[{i}] {c[0].dtype} {list(c[0].shape)} {kw}"
            lowp = (r[k], f[k]) if c[0].dtype in (torch.float16, torch.bfloat16) else None
            assert_same(c[k], r[k], what=what, lowp=lowp)


test_masked_adamw, test_masked_adamw_slow = properties(_masked_adamw)


# ---------------------------------------------------------------------------------------------------------------
# bicubic_modulate (+ multi and out variants), forward and backward
# ---------------------------------------------------------------------------------------------------------------
def _bicubic_pair(data, g, dtype, label):
    four = data.draw(st.booleans(), label=f"{label}_4d")
    if four:
        shape = (data.draw(st.integers(0, 5), label=f"{label}_out"),
                 *(data.draw(st.integers(1, 4), label=f"{label}_k{k}") for k in range(3)))
        rows, cols = shape[0], shape[1] * shape[2] * shape[3]
    else:
        shape = (data.draw(st.integers(0, 13), label=f"{label}_out"),
                 data.draw(st.integers(0, 13), label=f"{label}_in"))
        rows, cols = shape
    m1 = data.draw(st.integers(1, max(1, min(rows, 6))), label=f"{label}_m1")
    m2 = data.draw(st.integers(1, max(1, min(cols, 10))), label=f"{label}_m2")  # the backward's two paths: m2 <= 8, > 8
    w = torch.randn(shape, generator=g, dtype=dtype)
    mod = torch.randn(m1, m2, generator=g, dtype=dtype)
    return w, mod


def _bicubic(data):
    g = _gen(data)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    ac = data.draw(st.booleans(), label="align_corners")
    w0, m0 = _bicubic_pair(data, g, dtype, "w")
    specials = data.draw(st.booleans(), label="specials")
    sprinkle(data, w0, "weight", specials)
    sprinkle(data, m0, "mod", specials)
    w = lay_out(w0, data.draw(st.sampled_from(LAYOUTS), label="w_layout"), g)
    m = lay_out(m0, data.draw(st.sampled_from(LAYOUTS), label="m_layout"), g)
    need_w, need_m = data.draw(st.sampled_from([(True, True), (False, True), (True, False), (False, False)]),
                               label="requires_grad")
    use_out = data.draw(st.booleans(), label="out")
    what = f"bicubic_modulate w{list(w.shape)} mod{list(m.shape)} {dtype} ac={ac}"
    results = {}
    for impl, fn in (("op", bicubic_modulate), ("ref", bicubic_modulate_ref)):
        # the op on the drawn layouts, the reference on contiguous copies
        wi, mi = (w.detach(), m.detach()) if impl == "op" else (w0.clone(), m0.clone())
        wi.requires_grad_(need_w)
        mi.requires_grad_(need_m)
        out = torch.full(w.shape, 7.0, dtype=dtype) if use_out else None
        res = fn(wi, mi, ac, out=out)
        if use_out:
            assert res.data_ptr() == out.data_ptr()
        grads = ()
        if need_w or need_m:
            gout = torch.randn(w.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
            inputs = [t for t, need in ((wi, need_w), (mi, need_m)) if need]
            grads = torch.autograd.grad(res, inputs, gout)
        results[impl] = (res.detach(), grads)
    assert_same(results["op"][0], results["ref"][0], what=what + " forward")
    # a weight's gradient is a product (grad * up(mod)); the grid's is a sum over the whole weight: compare it
    # against the summed magnitude of its terms
    for k, (a, b) in enumerate(zip(results["op"][1], results["ref"][1])):
        name = "grad_weight" if (need_w and k == 0) else "grad_mod"
        if name == "grad_mod" and w.numel():
            scale = max(1.0, float((w.detach().abs().nan_to_num(0, 0, 0)).sum()))
            assert_same(a / scale, b / scale, what=f"{what} {name} (/ {scale:.3g})")
        else:
            assert_same(a, b, what=f"{what} {name}")


def _bicubic_multi(data):
    g = _gen(data)
    n = data.draw(st.integers(0, 4), label="n")
    ac = data.draw(st.booleans(), label="align_corners")
    pairs = [_bicubic_pair(data, g, data.draw(st.sampled_from([torch.float32, torch.float64]), label=f"dt{i}"),
                           f"p{i}") for i in range(n)]
    specials = data.draw(st.booleans(), label="specials")
    for i, (w, m) in enumerate(pairs):
        sprinkle(data, m, f"mod{i}", specials)
    ws = [lay_out(w, data.draw(st.sampled_from(LAYOUTS), label=f"wl{i}"), g) for i, (w, _) in enumerate(pairs)]
    ms = [m for _, m in pairs]
    grad = data.draw(st.booleans(), label="grad")
    use_out = data.draw(st.booleans(), label="out")
    results = {}
    for impl, fn in (("op", bicubic_modulate_multi), ("ref", bicubic_modulate_multi_ref)):
        wi = [w.detach().clone() if impl == "ref" else w.detach() for w in ws]
        mi = [m.detach().clone().requires_grad_(grad) for m in ms]
        outs = [torch.zeros(w.shape, dtype=w.dtype) for w in ws] if use_out else None
        res = fn(wi, mi, ac, out=outs)
        grads = ()
        if grad and n:
            gouts = [torch.randn(w.shape, generator=torch.Generator().manual_seed(2), dtype=w.dtype) for w in ws]
            grads = torch.autograd.grad(res, mi, gouts)
        results[impl] = ([r.detach() for r in res], grads)
    assert len(results["op"][0]) == n
    for i, (a, b) in enumerate(zip(results["op"][0], results["ref"][0])):
        assert_same(a, b, what=f"bicubic_modulate_multi[{i}] w{list(ws[i].shape)} mod{list(ms[i].shape)}")
    for i, (a, b) in enumerate(zip(results["op"][1], results["ref"][1])):
        scale = max(1.0, float(ws[i].abs().sum()))
        assert_same(a / scale, b / scale, what=f"bicubic_modulate_multi grad_mod[{i}] (/ {scale:.3g})")


test_bicubic_modulate, test_bicubic_modulate_slow = properties(_bicubic)
test_bicubic_modulate_multi, test_bicubic_modulate_multi_slow = properties(_bicubic_multi)


# ---------------------------------------------------------------------------------------------------------------
# meta_lstm (+ in-place and out variants), forward and backward
# ---------------------------------------------------------------------------------------------------------------
GRAD_NAMES = ["x", "h", "c", "w_ih0", "w_ih", "w_hh", "b", "w_out", "b_out", "scale", "multiply"]


def _lstm_inputs(data, g):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    N = data.draw(st.sampled_from([0, 1, 2, 5, 17, 33, 63, 65, 70]), label="N")
    F = data.draw(st.integers(1, 9), label="F")
    H = data.draw(st.integers(1, 9), label="H")
    L = data.draw(st.integers(1, 3), label="L")
    params = [p.detach() for p in meta_lstm_init(F, H, L, dtype=dtype, generator=g)]
    params[4] = torch.randn(H, generator=g, dtype=dtype)
    params[5] = torch.tensor(0.3, dtype=dtype)
    params[6] = torch.tensor(data.draw(st.sampled_from([-2.0, 0.5, 1.0]), label="scale"), dtype=dtype)
    # x up to 100: gate pre-activations beyond +-88, where a fast exp overflows
    x = torch.randn(N, F, generator=g, dtype=dtype) * data.draw(st.sampled_from([0.1, 1.0, 10.0, 100.0]), label="xs")
    h = torch.randn(L, H, N, generator=g, dtype=dtype) * 0.5
    c = torch.randn(L, H, N, generator=g, dtype=dtype)
    mult = torch.randn(N, generator=g, dtype=dtype) if data.draw(st.booleans(), label="multiply") else None
    return dtype, (N, F, H, L), x, h, c, params, mult


def _meta_lstm(data):
    g = _gen(data)
    dtype, dims, x0, h0, c0, params0, mult0 = _lstm_inputs(data, g)
    specials = data.draw(st.booleans(), label="specials")
    sprinkle(data, x0, "x", specials)
    sprinkle(data, c0, "c", specials)
    x = lay_out(x0, data.draw(st.sampled_from(LAYOUTS), label="x_layout"), g)
    h = lay_out(h0, data.draw(st.sampled_from(LAYOUTS), label="h_layout"), g)
    c = lay_out(c0, data.draw(st.sampled_from(LAYOUTS), label="c_layout"), g)
    w_hh = lay_out(params0[2], data.draw(st.sampled_from(LAYOUTS), label="w_hh_layout"), g)
    params = [params0[0], params0[1], w_hh, *params0[3:]]
    mult = None if mult0 is None else lay_out(mult0, data.draw(st.sampled_from(LAYOUTS), label="m_layout"), g)
    variant = data.draw(st.sampled_from(["functional", "state_out", "in_place"]), label="variant")
    backward = variant != "in_place" and data.draw(st.booleans(), label="backward")
    what = f"meta_lstm {variant} (N, F, H, L)={dims} {dtype} multiply={mult is not None}"

    ref_in = [t.detach().clone() for t in (x0, h0, c0, *params0)] + ([mult0.clone()] if mult0 is not None else [])
    op_in = [x, h, c, *params] + ([mult] if mult is not None else [])
    if backward:
        for t in ref_in + op_in:
            t.requires_grad_()
    want = meta_lstm_ref(*ref_in[:10], ref_in[10] if mult is not None else None)
    if variant == "functional":
        got = meta_lstm(*op_in[:10], multiply=op_in[10] if mult is not None else None)
    elif variant == "state_out":
        bufs = (torch.full(h.shape, 5.0, dtype=dtype), torch.full(h.shape, 5.0, dtype=dtype))
        got = meta_lstm(*op_in[:10], multiply=op_in[10] if mult is not None else None, state_out=bufs)
        assert got[1].data_ptr() == bufs[0].data_ptr() or h.numel() == 0
    else:
        hh, cc = h.contiguous().clone(), c.contiguous().clone()
        out = meta_lstm_(x, hh, cc, *params, multiply=mult)
        got = (out, hh, cc)
    for name, a, b in zip(("out", "h_new", "c_new"), got, want):
        assert_same(a, b, what=f"{what} {name}")
    if not backward or specials:
        return
    gg = torch.Generator().manual_seed(3)
    N, F, H, L = dims
    use = data.draw(st.sampled_from(["out", "all"]), label="grad_outputs")
    gouts = [torch.randn(N, generator=gg, dtype=dtype)]
    if use == "all":
        gouts += [torch.randn(L, H, N, generator=gg, dtype=dtype), torch.randn(L, H, N, generator=gg, dtype=dtype)]
    ga = torch.autograd.grad(got[:len(gouts)], op_in, gouts, allow_unused=True)
    gb = torch.autograd.grad(want[:len(gouts)], ref_in, gouts, allow_unused=True)
    for name, a, b in zip(GRAD_NAMES, ga, gb):
        if b is None:           # w_ih with L == 1 (empty), or an input the ref does not use
            assert a is None or a.numel() == 0 or bool((a == 0).all()), f"{what} grad {name}"
            continue
        assert a is not None, f"{what}: no gradient for {name}"
        # gradients are sums (over N rows, over 4H gates): as tests/ops/test_metalstm.py, the absolute tolerance
        # scales with the largest gradient of the tensor (the terms of the sums are of that size, or larger)
        scale = 1.0 + (float(b.abs().nan_to_num(0, 0, 0).max()) if b.numel() else 0.0)
        assert_same(a / scale, b / scale, what=f"{what} grad {name} (/ {scale:.3g})")


test_meta_lstm, test_meta_lstm_slow = properties(_meta_lstm)


# ---------------------------------------------------------------------------------------------------------------
# the cases the fuzzing found, as fixed examples
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("val", [1000.0, -1000.0, 1e30, float("inf"), -float("inf")], ids=str)
def test_meta_lstm_gates_beyond_the_exp_range(val):
    """fp32 CPU: exp_u20 returned +inf at the top of its clamped range, and sigmoid's Newton step made inf * 0 =
    NaN: every gate pre-activation below -88 (sigmoid) or -44 (tanh) gave NaN where the reference is finite."""
    g = torch.Generator().manual_seed(0)
    N, F, H, L = 70, 3, 5, 2
    params = [p.detach() for p in meta_lstm_init(F, H, L, generator=g)]
    params[4] = torch.randn(H, generator=g)
    x = torch.randn(N, F, generator=g)
    x[::3, 0] = val
    h, c = torch.randn(L, H, N, generator=g), torch.randn(L, H, N, generator=g)
    c[0, 1, ::5] = float("inf")          # sigmoid(f) * Inf: Inf, or NaN where the reference's sigmoid(f) is 0
    want = meta_lstm_ref(x, h, c, *params)
    got = meta_lstm(x, h, c, *params)
    hh, cc = h.clone(), c.clone()
    out_ = meta_lstm_(x, hh, cc, *params)
    for name, a, b in zip(("out", "h_new", "c_new"), got, want):
        assert_same(a, b, what=f"meta_lstm x={val} {name}")
    for name, a, b in zip(("out", "h_new", "c_new"), (out_, hh, cc), want):
        assert_same(a, b, what=f"meta_lstm_ x={val} {name}")
    if abs(val) <= 1000:                   # finite inputs: the backward too
        c = torch.randn(L, H, N, generator=g)
        xs = [x.clone().requires_grad_(), *(p.clone().requires_grad_() for p in params)]
        xr = [x.clone().requires_grad_(), *(p.clone().requires_grad_() for p in params)]
        gout = torch.randn(N, generator=g)
        ga = torch.autograd.grad(meta_lstm(xs[0], h, c, *xs[1:])[0], xs, gout)
        gb = torch.autograd.grad(meta_lstm_ref(xr[0], h, c, *xr[1:])[0], xr, gout)
        for name, a, b in zip(["x"] + GRAD_NAMES[3:10], ga, gb):
            scale = 1.0 + (float(b.abs().max()) if b.numel() else 0.0)     # as in _meta_lstm
            assert_same(a / scale, b / scale, what=f"meta_lstm x={val} grad {name}")


def test_bicubic_identity_size_grid_with_inf_weight():
    """A grid of the weight's own size: the reference's backward copies grad * W to the grid, where the adjoint of
    the cubic taps (0, 1, 0, 0) would make 0 * Inf = NaN in the neighbouring cells; the kernels copy too (grad_W
    still comes from the taps, as in the reference). With and without the weight's gradient, and through the
    native multi-tensor backward directly (a conv weight too)."""
    for shape in [(1, 1), (4, 4), (3, 5), (2, 1, 3, 3)]:
        w = torch.randn(shape)
        w.view(-1)[0] = float("inf")
        gshape = (shape[0], math.prod(shape[1:]))
        m0 = torch.randn(gshape)
        gout = torch.randn(shape)
        for need_w in (False, True):
            wa, wb = w.clone().requires_grad_(need_w), w.clone().requires_grad_(need_w)
            ma, mb = m0.clone().requires_grad_(), m0.clone().requires_grad_()
            want = torch.autograd.grad(bicubic_modulate_ref(wb, mb), [mb, wb] if need_w else [mb], gout)
            got = torch.autograd.grad(bicubic_modulate(wa, ma), [ma, wa] if need_w else [ma], gout)
            got_multi = torch.autograd.grad(bicubic_modulate_multi([wa], [ma])[0], [ma, wa] if need_w else [ma], gout)
            for name, a, am, b in zip(["grad_mod", "grad_weight"], got, got_multi, want):
                assert_same(a, b, what=f"{name} {shape} need_w={need_w}")
                assert_same(am, b, what=f"multi {name} {shape} need_w={need_w}")
        if cltk._ext.available():
            gws, gms = torch.ops.cltk.bicubic_modulate_multi_backward([gout], [w], [m0], False, True, True)
            assert_same(gms[0], (gout * w).view(gshape), what=f"native grad_mod {shape}")
            assert_same(gws[0], gout * m0.view(shape), what=f"native grad_weight {shape}")


def test_bicubic_conv_weight_without_output_channels():
    w, mod = torch.randn(0, 3, 2, 2), torch.randn(1, 1)
    assert bicubic_modulate(w, mod).shape == (0, 3, 2, 2)
    assert bicubic_modulate_multi([w], [mod])[0].shape == (0, 3, 2, 2)
    assert bicubic_modulate_ref(w, mod).shape == (0, 3, 2, 2)


def test_masked_adamw_result_does_not_depend_on_the_layout():
    """fp16 with eps=0 and small gradients: g*g underflows in fp16 arithmetic (the reference path) but not in the
    kernel's fp32; a non-contiguous moment used to send its tensor to the reference path."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 3, generator=g).half()
    grad = (torch.randn(5, 3, generator=g) * 1e-4).half()
    m, v = torch.zeros(5, 3, dtype=torch.half), torch.zeros(5, 3, dtype=torch.half)
    kw = dict(lr=1e-3, beta1=0.0, beta2=0.0, eps=0.0, weight_decay=0.0)
    res = []
    for layout in ("contig", "transposed"):
        pp, mm, vv = (lay_out(t, layout, g) for t in (p, m, v))
        masked_adamw_([pp], [grad], [mm], [vv], [None], [torch.tensor(1.0)], **kw)
        res.append((pp, mm, vv))
    for a, b in zip(*res):
        assert torch.equal(a, b)
    assert torch.isfinite(res[0][0]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_bicubic_nan_support_equals_interpolate(dtype):
    """Which outputs a NaN grid entry reaches depends on the floor of the source position: computed with two
    roundings (3/9 * 1.5 - 0.5 = 0 in double) instead of PyTorch's one (-2.8e-17), a zero-weight tap read the
    neighbour. Every grid width up to 6, every output width up to 20, a NaN at every position, both corner modes."""
    for m2 in range(1, 7):
        for n in range(m2, 21):
            for pos in range(m2):
                for ac in (False, True):
                    mod = torch.arange(1.0, m2 + 1, dtype=dtype)[None].clone()
                    mod[0, pos] = float("nan")
                    w = torch.ones(1, n, dtype=dtype)
                    assert_same(bicubic_modulate(w, mod, ac), bicubic_modulate_ref(w, mod, ac),
                                what=f"1x{m2} -> 1x{n} NaN at {pos} ac={ac}")
