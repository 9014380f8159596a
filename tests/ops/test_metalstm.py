"""Tests of cltk.ops.metalstm: forward, state and gradients vs the reference, the reference vs torch.nn.LSTM,
gradcheck, opcheck, in-place and out-buffer variants, bad input."""
import pytest
import torch
from torch import nn

import cltk
from cltk.ops.metalstm import meta_lstm, meta_lstm_, meta_lstm_init, meta_lstm_ref, meta_lstm_weights
from cltk.testing.tolerances import tol

native = pytest.mark.skipif(not cltk._ext.available(), reason=f"cltk._C not loaded: {cltk._ext.reason()}")

# (N, F, H, L): size-1, odd N around the fp32 tile (64 rows) and fp64 tile (32 rows), one layer, wide input
CASES = [(1, 4, 8, 3), (63, 4, 32, 3), (65, 5, 12, 2), (130, 3, 9, 1), (64, 17, 16, 3), (7, 200, 8, 2), (0, 4, 8, 3)]
IDS = [f"N{n}_F{f}_H{h}_L{l}" for n, f, h, l in CASES]


def _setup(N, F, H, L, dtype, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    params = meta_lstm_init(F, H, L, dtype=dtype, generator=g)
    with torch.no_grad():  # a non-trivial head (the method's init has w_out = 0)
        params[4].copy_(torch.randn(H, dtype=dtype, generator=g))
        params[5].fill_(0.3)
        params[6].fill_(1.7)
    x = torch.randn(N, F, dtype=dtype, generator=g)
    h = torch.randn(L, H, N, dtype=dtype, generator=g) * 0.5
    c = torch.randn(L, H, N, dtype=dtype, generator=g)
    m = torch.randn(N, dtype=dtype, generator=g)
    grads = (torch.randn(N, dtype=dtype, generator=g), torch.randn(L, H, N, dtype=dtype, generator=g),
             torch.randn(L, H, N, dtype=dtype, generator=g))
    if requires_grad:
        for t in (x, h, c, m):
            t.requires_grad_()
    return x, h, c, params, m, grads


@pytest.mark.parametrize("with_mult", [False, True], ids=["gate", "gate_times_g"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", CASES, ids=IDS)
def test_matches_ref(shape, dtype, with_mult):
    x, h, c, params, m, grads = _setup(*shape, dtype)
    mult = m if with_mult else None
    inputs = [x, h, c, *params] + ([m] if with_mult else [])
    results = {}
    for impl in ("kernel", "ref"):
        if impl == "kernel":
            res = meta_lstm(x, h, c, *params, multiply=mult)
        else:
            res = meta_lstm_ref(x, h, c, *params, mult)
        g = torch.autograd.grad(res, inputs, grads, allow_unused=True)
        results[impl] = ([r.detach() for r in res], g)
    names = ["out", "h_new", "c_new"]
    for name, a, b in zip(names, results["kernel"][0], results["ref"][0]):
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda s: f"{name}: {s}")
    gnames = ["x", "h", "c", "w_ih0", "w_ih", "w_hh", "b", "w_out", "b_out", "scale", "multiply"]
    for name, a, b in zip(gnames, results["kernel"][1], results["ref"][1]):
        if b is None:  # w_ih with L == 1 is unused by the reference
            assert a is None or a.numel() == 0 or bool((a == 0).all())
            continue
        # weight gradients are sums over N rows: compare against the summed magnitude
        scale = 1.0 + (b.abs().max().item() if b.numel() else 0.0)
        torch.testing.assert_close(a, b, atol=tol(dtype)["atol"] * scale, rtol=tol(dtype)["rtol"],
                                   msg=lambda s: f"grad {name}: {s}")


@pytest.mark.parametrize("layers", [1, 3])
def test_ref_equals_torch_lstm(layers):
    torch.manual_seed(3)
    N, F, H = 37, 4, 16
    lstm = nn.LSTM(F, H, num_layers=layers).double()
    head = nn.Linear(H, 1).double()
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    x = torch.randn(N, F, dtype=torch.float64)
    h0 = torch.randn(layers, N, H, dtype=torch.float64)
    c0 = torch.randn(layers, N, H, dtype=torch.float64)
    y, (hn, cn) = lstm(x[None], (h0, c0))
    want = scale * torch.tanh(head(y[0])).squeeze(1)
    w = meta_lstm_weights(lstm, head, scale)
    for fn in (meta_lstm_ref, meta_lstm):
        out, h1, c1 = fn(x, h0.transpose(1, 2), c0.transpose(1, 2), *w)
        torch.testing.assert_close(out, want, **tol(torch.float64))
        torch.testing.assert_close(h1, hn.transpose(1, 2), **tol(torch.float64))
        torch.testing.assert_close(c1, cn.transpose(1, 2), **tol(torch.float64))
    # gradients flow back to the nn.LSTM parameters through meta_lstm_weights
    out, _, _ = meta_lstm(x, h0.transpose(1, 2).contiguous(), c0.transpose(1, 2).contiguous(), *w)
    got = torch.autograd.grad(out.sum(), [lstm.weight_hh_l0, head.weight, scale])
    ref = torch.autograd.grad(want.sum(), [lstm.weight_hh_l0, head.weight, scale])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **tol(torch.float64))


def test_method_init_gives_scale_tanh_one():
    x, h, c, _, _, _ = _setup(10, 4, 8, 3, torch.float32, requires_grad=False)
    params = meta_lstm_init(4, 8, 3, scale=0.5)
    out, _, _ = meta_lstm(x, h, c, *params)
    torch.testing.assert_close(out, torch.full((10,), 0.5 * torch.tanh(torch.tensor(1.0)).item()), **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_inplace_and_state_out(dtype):
    x, h, c, params, m, _ = _setup(77, 4, 32, 3, dtype, requires_grad=False)
    ref_out, ref_h, ref_c = meta_lstm_ref(x, h, c, *params, m)
    hb, cb = h.clone(), c.clone()
    out = meta_lstm_(x, hb, cb, *[p.detach() for p in params], multiply=m)
    torch.testing.assert_close(out, ref_out, **tol(dtype))
    torch.testing.assert_close(hb, ref_h, **tol(dtype))
    torch.testing.assert_close(cb, ref_c, **tol(dtype))
    # two steps in place == two reference steps
    out2 = meta_lstm_(x, hb, cb, *[p.detach() for p in params])
    ref2 = meta_lstm_ref(x, ref_h, ref_c, *params)
    torch.testing.assert_close(out2, ref2[0].detach(), **tol(dtype))
    torch.testing.assert_close(hb, ref2[1].detach(), **tol(dtype))
    # persistent state buffers, with autograd through them
    ho, co = torch.empty_like(h), torch.empty_like(c)
    out3, h3, c3 = meta_lstm(x, h, c, *params, multiply=m, state_out=(ho, co))
    assert h3.data_ptr() == ho.data_ptr() and c3.data_ptr() == co.data_ptr()
    torch.testing.assert_close(h3.detach(), ref_h.detach(), **tol(dtype))
    g_k = torch.autograd.grad(out3.sum() + h3.sum(), params)
    g_r = torch.autograd.grad(ref_out.sum() + ref_h.sum(), params, allow_unused=True)
    for a, b in zip(g_k, g_r):
        torch.testing.assert_close(a, b, atol=tol(dtype)["atol"] * (1 + b.abs().max().item()), rtol=tol(dtype)["rtol"])


def test_truncated_bptt_two_steps():
    x, h, c, params, _, _ = _setup(40, 4, 8, 3, torch.float64)
    loss = {}
    for impl, fn in (("kernel", meta_lstm), ("ref", lambda *a: meta_lstm_ref(*a))):
        o1, h1, c1 = fn(x, h, c, *params)
        o2, _, _ = fn(x * 0.5, h1, c1, *params)
        loss[impl] = torch.autograd.grad((o1 * o2).sum(), [x, h, *params], allow_unused=True)
    for a, b in zip(loss["kernel"], loss["ref"]):
        torch.testing.assert_close(a, b, **tol(torch.float64))


def test_gradcheck_float64():
    x, h, c, params, m, _ = _setup(5, 3, 4, 2, torch.float64)
    params = [p.detach().clone().requires_grad_() for p in params]

    def f(x, h, c, m, *p):
        return meta_lstm(x, h, c, *p, multiply=m)

    assert torch.autograd.gradcheck(f, (x, h, c, m, *params), eps=1e-6, atol=1e-5)


@native
def test_opcheck():
    x, h, c, params, m, _ = _setup(9, 4, 8, 2, torch.float32)
    args = (x, h, c, *params)
    torch.library.opcheck(torch.ops.cltk.meta_lstm.default, (*args, m))
    torch.library.opcheck(torch.ops.cltk.meta_lstm.default, (*args, None))
    d = [t.detach().clone() for t in args]
    torch.library.opcheck(torch.ops.cltk.meta_lstm_.default, (*d, m.detach()))
    torch.library.opcheck(torch.ops.cltk.meta_lstm_out_.default,
                          (*d, None, torch.empty_like(d[1]), torch.empty_like(d[2])))
    g = (torch.randn(9), torch.randn_like(d[1]), torch.randn_like(d[2]))
    torch.library.opcheck(torch.ops.cltk.meta_lstm_backward.default, (*g, *d, m.detach(), True, True, True, True))
    torch.library.opcheck(torch.ops.cltk.meta_lstm_backward.default, (g[0], None, None, *d, None, False, False, True, False))


def _bad(name_fn):
    x, h, c, params, m, _ = _setup(6, 4, 8, 3, torch.float32, requires_grad=False)
    args = {"x": x, "h": h, "c": c, **dict(zip(["w_ih0", "w_ih", "w_hh", "b", "w_out", "b_out", "scale"], params))}
    args = {k: v.detach() for k, v in args.items()}
    name_fn(args)
    return args


BAD = [
    ("c_shape", lambda a: a.update(c=torch.zeros(3, 8, 5)), "c must have the shape of h"),
    ("h_rows", lambda a: a.update(h=torch.zeros(3, 8, 5), c=torch.zeros(3, 8, 5)), "h.size(2) must equal"),
    ("width", lambda a: a.update(x=torch.zeros(6, 5)), "w_ih0.size(1) must equal the input width"),
    ("w_hh", lambda a: a.update(w_hh=torch.zeros(3, 32, 7)), "w_hh must be"),
    ("b", lambda a: a.update(b=torch.zeros(2, 32)), "b must be"),
    ("w_out", lambda a: a.update(w_out=torch.zeros(9)), "w_out must be"),
    ("scale_nan", lambda a: a.update(scale=torch.tensor(float("nan"))), "scale must be finite"),
    ("scale_inf", lambda a: a.update(scale=torch.tensor(float("inf"))), "scale must be finite"),
    ("dtype", lambda a: a.update(b=a["b"].double()), "b must have the dtype of x"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("fn", ["meta_lstm", "meta_lstm_", "ref", "op"])
def test_bad_input_names_argument(case, fn):
    _, mutate, msg = case
    a = _bad(mutate)
    order = [a[k] for k in ("x", "h", "c", "w_ih0", "w_ih", "w_hh", "b", "w_out", "b_out", "scale")]
    if fn == "op":
        if not cltk._ext.available():
            pytest.skip("no native ops")
        with pytest.raises(RuntimeError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            torch.ops.cltk.meta_lstm(*order, None)
        return
    f = {"meta_lstm": meta_lstm, "meta_lstm_": meta_lstm_, "ref": meta_lstm_ref}[fn]
    with pytest.raises((ValueError, TypeError), match=msg.replace("(", r"\(").replace(")", r"\)")):
        f(*order)


def test_bad_multiply_and_state_out():
    x, h, c, params, _, _ = _setup(6, 4, 8, 3, torch.float32, requires_grad=False)
    with pytest.raises(ValueError, match="multiply must be"):
        meta_lstm(x, h, c, *params, multiply=torch.zeros(5))
    with pytest.raises(ValueError, match="state_out"):
        meta_lstm(x, h, c, *params, state_out=(h, torch.empty_like(c)))
    with pytest.raises(ValueError, match="h must be contiguous"):
        meta_lstm_(x, h.transpose(1, 2).contiguous().transpose(1, 2), c, *[p.detach() for p in params])


def _compare_with_ref(x, h, c, params, mult, grads, dtype):
    inputs = [x, h, c, *params] + ([mult] if mult is not None else [])
    got = meta_lstm(x, h, c, *params, multiply=mult)
    want = meta_lstm_ref(x, h, c, *params, mult)
    for name, a, b in zip(["out", "h_new", "c_new"], got, want):
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda s: f"{name}: {s}")
    g_k = torch.autograd.grad(got, inputs, grads, allow_unused=True)
    g_r = torch.autograd.grad(want, inputs, grads, allow_unused=True)
    for a, b in zip(g_k, g_r):
        if b is None:  # w_ih with L == 1 is unused by the reference
            assert a is None or a.numel() == 0 or bool((a == 0).all())
            continue
        scale = 1.0 + b.abs().max().item()
        torch.testing.assert_close(a, b, atol=tol(dtype)["atol"] * scale, rtol=tol(dtype)["rtol"])


@pytest.mark.parametrize("gain", [1.0, 8.0], ids=["plain", "saturated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_wide_input_over_several_tiles(dtype, gain):
    """F = 300 is multiplied in feature blocks (128, 128, 44) over all units; N = 130 spans three fp32 tiles (the
    last with 2 rows); gain 8 drives the gate pre-activations to +-30, where sigmoid and tanh saturate."""
    x, h, c, params, m, grads = _setup(130, 300, 20, 2, dtype, seed=5)
    with torch.no_grad():
        for p in params[:3]:
            p.mul_(gain)
    _compare_with_ref(x, h, c, params, m, grads, dtype)


def test_small_call_after_larger_and_nan_calls():
    """The per-thread tile scratch is reused across calls without clearing: a call with NaN inputs and a larger
    shape must not leak into a later call's padding rows (which feed the weight-gradient sums)."""
    x, h, c, params, m, grads = _setup(150, 200, 24, 3, torch.float32, seed=1)
    with torch.no_grad():
        x[::2] = float("nan")
        h[:, :, 1::3] = float("nan")
    out, h1, c1 = meta_lstm(x, h, c, *params, multiply=m)
    torch.autograd.grad((out, h1, c1), [x, h, c, *params], grads)
    assert torch.isnan(out).any()
    for shape in [(3, 4, 8, 1), (70, 200, 24, 3), (1, 5, 12, 2)]:
        x, h, c, params, m, grads = _setup(*shape, torch.float32, seed=2)
        _compare_with_ref(x, h, c, params, m, grads, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_meta_lstm_out_op_matches_its_ref(dtype):
    """cltk::meta_lstm_out_ (persistent state buffers) against meta_lstm_out_ref."""
    from cltk.ops.metalstm import meta_lstm_out_ref
    x, h, c, params, m, _ = _setup(70, 4, 16, 3, dtype, requires_grad=False)
    params = [p.detach() for p in params]
    ho, co, hr, cr = (torch.full_like(h, float("nan")) for _ in range(4))
    out = torch.ops.cltk.meta_lstm_out_(x, h, c, *params, m, ho, co)
    ref = meta_lstm_out_ref(x, h, c, *params, m, hr, cr)
    torch.testing.assert_close(out, ref, **tol(dtype))
    torch.testing.assert_close(ho, hr, **tol(dtype))
    torch.testing.assert_close(co, cr, **tol(dtype))
