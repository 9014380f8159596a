"""Tests of cltk.ops.bicubic: forward and gradients vs the F.interpolate reference, gradcheck, opcheck, bad input."""
import pytest
import torch

import cltk
from cltk.ops.bicubic import (
    bicubic_interp_matrix,
    bicubic_modulate,
    bicubic_modulate_multi,
    bicubic_modulate_multi_ref,
    bicubic_modulate_ref,
)
from cltk.testing.tolerances import tol

native = pytest.mark.skipif(not cltk._ext.available(), reason=f"cltk._C not loaded: {cltk._ext.reason()}")


def grad_mod_ref64(weight, mod, grad, align_corners):
    """grad_mod in float64 from the reference, and the same adjoint applied to |grad * weight| (the L1 mass of each
    grid cell's sum, which bounds its rounding error)."""
    w64 = weight.detach().double()
    if w64.dim() == 4:
        w64 = w64.reshape(w64.shape[0], -1)
    g64 = grad.detach().double().reshape(w64.shape)
    m64 = mod.detach().double().requires_grad_()
    (gm,) = torch.autograd.grad(bicubic_modulate_ref(w64, m64, align_corners), m64, g64)
    if w64.numel() == 0:
        return gm, torch.zeros_like(gm)
    A = bicubic_interp_matrix(w64.shape[0], mod.shape[0], align_corners, torch.float64).abs()
    B = bicubic_interp_matrix(w64.shape[1], mod.shape[1], align_corners, torch.float64).abs()
    return gm, A.T @ (g64 * w64).abs() @ B


def assert_reduction_close(got, ref64, mass64):
    """A reduction's result within the table's tolerance of the float64 value, the relative part taken of the
    summed magnitudes (a float32 sum of n terms of either sign cannot be closer than eps * sum |terms|)."""
    atol, rtol = tol(got.dtype)["atol"], tol(got.dtype)["rtol"]
    err = (got.double() - ref64).abs()
    bound = atol + rtol * mass64
    assert bool((err <= bound).all()), f"max error {err.max().item():.3e}, bound there {bound.flatten()[err.argmax()].item():.3e}"


def _noncontig(t):
    # same values, transposed storage
    return t.t().contiguous().t()


# (name, weight shape, mod shape, make non-contiguous)
CASES = [
    ("mod1x1", (9, 7), (1, 1), False),
    ("odd", (13, 11), (3, 5), False),
    ("mod_rows1", (40, 6), (1, 4), False),
    ("mod_eq_weight", (5, 6), (5, 6), False),
    ("wide_4x4", (33, 260), (4, 4), False),
    ("tall_8x8", (150, 20), (8, 8), False),
    ("noncontig", (17, 12), (4, 3), True),
    ("conv4d", (8, 3, 3, 3), (4, 4), False),
    ("depthwise", (12, 1, 3, 3), (4, 4), False),
    # column-first rows long enough to skip the first and last grid columns where they are no tap (3, 4 and 8
    # columns; wide_4x4 too)
    ("skip_columns_3", (24, 700), (3, 3), False),
    ("skip_columns_8", (40, 600), (5, 8), False),
    # the row-first backward (grids over 8 columns or long rows; the others are column-first): narrow rows, then
    # rows over 1024 columns, with both kinds of grid
    ("grid_wider_than_8", (300, 150), (6, 12), False),
    ("grid_wider_than_8_long_rows", (20, 1100), (3, 9), False),
    ("long_rows_4x4", (20, 3000), (4, 4), False),
    ("empty_rows", (0, 7), (2, 3), False),
    ("empty_cols", (4, 0), (2, 3), False),
]


def _inputs(wshape, mshape, dtype, noncontig, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(wshape, dtype=dtype, generator=g)
    if noncontig:
        w = _noncontig(w)
        assert not w.is_contiguous()
    mod = torch.rand(mshape, dtype=dtype, generator=g) + 0.5
    grad = torch.randn(wshape, dtype=dtype, generator=g)
    return w, mod, grad


@pytest.mark.parametrize("align_corners", [False, True], ids=["half_pixel", "align_corners"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,wshape,mshape,noncontig", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("weight_grad", [False, True], ids=["mod_grad", "both_grads"])
def test_matches_ref(name, wshape, mshape, noncontig, dtype, align_corners, weight_grad):
    w0, m0, grad = _inputs(wshape, mshape, dtype, noncontig)
    results = {}
    for impl in ("kernel", "ref", "out", "multi"):
        w = w0.clone() if not noncontig else _noncontig(w0)
        w.requires_grad_(weight_grad)
        m = m0.clone().requires_grad_()
        if impl == "kernel":
            y = bicubic_modulate(w, m, align_corners)
        elif impl == "ref":
            y = bicubic_modulate_ref(w, m, align_corners)
        elif impl == "out":
            buf = torch.empty(wshape, dtype=dtype)
            y = bicubic_modulate(w, m, align_corners, out=buf)
            assert y.data_ptr() == buf.data_ptr() or buf.numel() == 0
        else:
            (y,) = bicubic_modulate_multi([w], [m], align_corners)
        assert y.shape == w0.shape and y.dtype == dtype
        inputs = (w, m) if weight_grad else (m,)
        grads = torch.autograd.grad(y, inputs, grad)
        results[impl] = (y.detach(), grads)
    ref_y, ref_g = results["ref"]
    gm64, mass = grad_mod_ref64(w0, m0, grad, align_corners)
    for impl in ("kernel", "out", "multi"):
        y, g = results[impl]
        torch.testing.assert_close(y, ref_y, **tol(dtype), msg=lambda s: f"{impl} forward: {s}")
        if weight_grad:
            torch.testing.assert_close(g[0], ref_g[0], **tol(dtype), msg=lambda s: f"{impl} grad_weight: {s}")
        assert_reduction_close(g[-1], gm64, mass)
    # the reference itself against its float64 twin, so that a wrong oracle cannot pass silently
    assert_reduction_close(ref_g[-1], gm64, mass)


@pytest.mark.parametrize("align_corners", [False, True], ids=["half_pixel", "align_corners"])
def test_ref_equals_separable_matrices_and_ones_is_identity(align_corners):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(23, 17, dtype=torch.float64, generator=g)
    mod = torch.rand(4, 5, dtype=torch.float64, generator=g)
    A = bicubic_interp_matrix(23, 4, align_corners, torch.float64)
    B = bicubic_interp_matrix(17, 5, align_corners, torch.float64)
    assert torch.allclose(A.sum(1), torch.ones(23, dtype=torch.float64))  # cubic weights partition unity
    torch.testing.assert_close(bicubic_modulate_ref(w, mod, align_corners), w * (A @ mod @ B.T))
    ones = torch.ones(4, 5, dtype=torch.float64)
    torch.testing.assert_close(bicubic_modulate(w, ones, align_corners), w, **tol(torch.float64))


def test_conv_mapping_is_flattened_fan_in():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 4, 3, 3, generator=g)
    mod = torch.rand(3, 5, generator=g)
    flat = bicubic_modulate_ref(w.reshape(6, 36), mod)
    torch.testing.assert_close(bicubic_modulate(w, mod), flat.reshape(6, 4, 3, 3), **tol(torch.float32))


def test_multi_matches_per_weight_mixed_shapes_and_dtypes():
    g = torch.Generator().manual_seed(4)
    ws = [
        torch.randn(16, 3, 3, 3, generator=g),
        torch.randn(16, 1, 3, 3, generator=g),
        torch.randn(10, 16, dtype=torch.float64, generator=g),
        torch.randn(0, 5, generator=g),
        torch.randn(31, 9, generator=g),
    ]
    ms = [torch.rand(4, 4, dtype=w.dtype, generator=g).requires_grad_() for w in ws]
    gs = [torch.randn(w.shape, dtype=w.dtype, generator=g) for w in ws]
    ys = bicubic_modulate_multi(ws, ms, True)
    yr = bicubic_modulate_multi_ref(ws, ms, True)
    got = torch.autograd.grad(ys, ms, gs)
    for w, m, gr, y, r, gm in zip(ws, ms, gs, ys, yr, got):
        torch.testing.assert_close(y, r, **tol(w.dtype))
        ref64, mass = grad_mod_ref64(w, m, gr, True)
        assert_reduction_close(gm, ref64, mass)
    # persistent buffers: written in place, reused on the next step
    bufs = [torch.empty_like(w) for w in ws]
    for step in range(2):
        ys = bicubic_modulate_multi(ws, ms, True, out=bufs)
        for y, b, r in zip(ys, bufs, yr):
            assert y.data_ptr() == b.data_ptr() or b.numel() == 0
            torch.testing.assert_close(b, r.detach(), **tol(b.dtype))
        got2 = torch.autograd.grad(ys, ms, gs)
        for a, b in zip(got, got2):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@native
def test_native_ops_take_conv_weights_as_their_2d_view():
    """The native ops modulate a 4-D (out, in, kh, kw) weight as its (out, in*kh*kw) view, as the wrappers do."""
    g = torch.Generator().manual_seed(9)
    ops = torch.ops.cltk
    w4, m = torch.randn(6, 4, 3, 3, generator=g), torch.rand(3, 5, generator=g)
    grad4 = torch.randn(6, 4, 3, 3, generator=g)
    w2, grad2 = w4.reshape(6, 36), grad4.reshape(6, 36)
    assert torch.equal(ops.bicubic_modulate(w4, m, False), ops.bicubic_modulate(w2, m, False).reshape(6, 4, 3, 3))
    (y4,), (y2,) = ops.bicubic_modulate_multi([w4], [m], True), ops.bicubic_modulate_multi([w2], [m], True)
    assert y4.shape == w4.shape and torch.equal(y4, y2.reshape(w4.shape))
    gw4, gm4 = ops.bicubic_modulate_backward(grad4, w4, m, False, True, True)
    gw2, gm2 = ops.bicubic_modulate_backward(grad2, w2, m, False, True, True)
    assert gw4.shape == w4.shape and torch.equal(gw4, gw2.reshape(w4.shape)) and torch.equal(gm4, gm2)
    with pytest.raises(RuntimeError, match=r"mod must not be larger than weight.*\[7, 2\] for weight \[6, 4, 3, 3\] "
                                           r"\(modulated as \[6, 36\]\)"):
        ops.bicubic_modulate(w4, torch.ones(7, 2), False)
    # a list mixing devices dispatches to one device's kernel (here the fake one, for meta): refused there
    with pytest.raises(RuntimeError, match=r"weights\[1\] must be on the device of weights\[0\] \(cpu\), got meta"):
        ops.bicubic_modulate_multi_backward([grad2, grad2.to("meta")], [w2, w2.to("meta")], [m, m.to("meta")], False,
                                            False, True)
    # the wrapper groups such lists by device instead
    ys = bicubic_modulate_multi([w2, w2.to("meta")], [m, m.to("meta")])
    assert ys[1].device.type == "meta" and torch.equal(ys[0], ops.bicubic_modulate(w2, m, False))


@native
def test_multi_autograd_node():
    """The multi-tensor ops' C++ autograd: one node for the list, buffers marked dirty (their version bumped and
    their history that node), saved weights and mods version-checked, gradients only for inputs that need them."""
    g = torch.Generator().manual_seed(10)
    ws = [torch.randn(12, 5, generator=g), torch.randn(8, 2, 3, 3, generator=g)]
    ms = [torch.rand(3, 2, generator=g).requires_grad_(), torch.rand(4, 4, generator=g).requires_grad_()]
    bufs = [torch.empty_like(w) for w in ws]
    before = [b._version for b in bufs]
    ys = bicubic_modulate_multi(ws, ms, out=bufs)
    assert all(y.data_ptr() == b.data_ptr() for y, b in zip(ys, bufs))
    assert all(b._version > v for b, v in zip(bufs, before))
    assert ys[0].grad_fn is not None and ys[0].grad_fn is ys[1].grad_fn
    assert all(b.grad_fn is None for b in bufs)             # the caller's buffers stay plain; the aliases carry it
    gs = [torch.randn_like(w) for w in ws]
    ref = torch.autograd.grad(bicubic_modulate_multi_ref(ws, ms), ms, gs)
    got = torch.autograd.grad(ys, ms, gs)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **tol(torch.float32))
    # a saved mod changed in place before the backward: refused, as for torch's own ops
    ys = bicubic_modulate_multi(ws, ms)
    with torch.no_grad():
        ms[1].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(ys, ms, gs)
    # only the weight that requires grad gets one; no node at all without grad mode
    w0 = ws[0].clone().requires_grad_()
    ys = bicubic_modulate_multi([w0, ws[1]], [ms[0].detach(), ms[1].detach()])
    (gw,) = torch.autograd.grad(ys[0], [w0], gs[0])
    w0r = w0.detach().clone().requires_grad_()
    (gw_ref,) = torch.autograd.grad(bicubic_modulate_ref(w0r, ms[0].detach()), [w0r], gs[0])
    torch.testing.assert_close(gw, gw_ref, **tol(torch.float32))
    assert ys[1].grad_fn is ys[0].grad_fn
    with torch.no_grad():
        v = bufs[0]._version
        ys = bicubic_modulate_multi(ws, ms, out=bufs)
        assert ys[0].grad_fn is None and bufs[0]._version > v


@native
def test_multi_autograd_node_graph_rules():
    """The node follows torch's rules for a graph: a second backward needs retain_graph, an output the loss does not
    use gets a zero gradient, and forward-mode AD is refused by name rather than silently dropped."""
    g = torch.Generator().manual_seed(11)
    ws = [torch.randn(10, 6, generator=g), torch.randn(6, 3, 3, 3, generator=g)]
    ms = [torch.rand(3, 3, generator=g).requires_grad_(), torch.rand(2, 4, generator=g).requires_grad_()]
    gs = [torch.randn_like(w) for w in ws]
    ys = bicubic_modulate_multi(ws, ms)
    assert ys[0].grad_fn.name() == "BicubicModulateMultiBackward"
    first = torch.autograd.grad(ys, ms, gs, retain_graph=True)
    again = torch.autograd.grad(ys, ms, gs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(ys, ms, gs)
    # only ys[1] in the loss: ms[0] gets zeros, ms[1] the single-weight op's gradient
    ys = bicubic_modulate_multi(ws, ms)
    g0, g1 = torch.autograd.grad((ys[1] * gs[1]).sum(), ms)
    assert torch.equal(g0, torch.zeros_like(g0))
    (r1,) = torch.autograd.grad((bicubic_modulate(ws[1], ms[1]) * gs[1]).sum(), [ms[1]])
    torch.testing.assert_close(g1, r1, **tol(torch.float32))
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        dual = fwad.make_dual(ms[0].detach(), torch.ones_like(ms[0]))
        with pytest.raises(RuntimeError, match="bicubic_modulate_multi: forward-mode AD is not supported"):
            bicubic_modulate_multi(ws, [dual, ms[1]])


@native
def test_backward_is_deterministic_across_thread_counts():
    g = torch.Generator().manual_seed(5)
    w, grad = torch.randn(1100, 70, generator=g), torch.randn(1100, 70, generator=g)
    before = torch.get_num_threads()
    for mod in (torch.rand(4, 4, generator=g), torch.rand(4, 12, generator=g)):  # both backward paths
        outs = []
        try:
            for n in (1, 2, 1):
                torch.set_num_threads(n)
                outs.append(torch.ops.cltk.bicubic_modulate_backward(grad, w, mod, False, True, True))
        finally:
            torch.set_num_threads(before)
        for gw, gm in outs[1:]:
            assert torch.equal(gw, outs[0][0]) and torch.equal(gm, outs[0][1])


def test_weight_grad_only_when_required():
    w = torch.randn(9, 8)
    mod = torch.rand(3, 3, requires_grad=True)
    y = bicubic_modulate(w, mod)
    (gm,) = torch.autograd.grad(y.sum(), mod)
    assert gm.shape == (3, 3) and w.grad is None
    if cltk._ext.available():
        gw, gm2 = torch.ops.cltk.bicubic_modulate_backward(torch.ones(9, 8), w, mod.detach(), False, False, True)
        assert gw.numel() == 0 and gm2.shape == (3, 3)
        gw, gm3 = torch.ops.cltk.bicubic_modulate_backward(torch.ones(9, 8), w, mod.detach(), False, True, False)
        assert gw.shape == (9, 8) and gm3.numel() == 0
        # the multi-tensor op: an empty list for the gradients not asked for
        args = ([torch.ones(9, 8)] * 2, [w, w], [mod.detach()] * 2, False)
        gws, gms = torch.ops.cltk.bicubic_modulate_multi_backward(*args, False, True)
        assert gws == [] and [g.shape for g in gms] == [(3, 3)] * 2 and torch.equal(gms[0], gm2)
        gws, gms = torch.ops.cltk.bicubic_modulate_multi_backward(*args, True, False)
        assert [g.shape for g in gws] == [(9, 8)] * 2 and gms == [] and torch.equal(gws[1], gw)


GRADCHECK = [((5, 7), (2, 3)), ((9, 4), (9, 4)), ((6, 2, 2, 2), (3, 3)), ((70, 3), (4, 1)), ((7, 13), (3, 10))]


@pytest.mark.parametrize("align_corners", [False, True], ids=["half_pixel", "align_corners"])
@pytest.mark.parametrize("wshape,mshape", GRADCHECK, ids=[f"{w}_{m}".replace(" ", "") for w, m in GRADCHECK])
def test_gradcheck(wshape, mshape, align_corners):
    g = torch.Generator().manual_seed(6)
    w = torch.randn(wshape, dtype=torch.float64, generator=g, requires_grad=True)
    mod = torch.rand(mshape, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda b: bicubic_modulate(w.detach(), b, align_corners), (mod,))
    # w.r.t. both (the weight has many entries: fast mode, a random projection of the Jacobian)
    assert torch.autograd.gradcheck(lambda a, b: bicubic_modulate(a, b, align_corners), (w, mod), fast_mode=True)


@pytest.mark.parametrize("align_corners", [False, True], ids=["half_pixel", "align_corners"])
def test_gradcheck_out_and_multi(align_corners):
    g = torch.Generator().manual_seed(8)
    w = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    mod = torch.rand(2, 3, dtype=torch.float64, generator=g).requires_grad_()
    buf = torch.empty(5, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: bicubic_modulate(a, b, align_corners, out=buf).clone(), (w, mod))
    w2 = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    m2 = torch.rand(2, 2, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: tuple(bicubic_modulate_multi([a, c], [b, d], align_corners)), (w, mod, w2, m2)
    )
    bufs = [torch.empty(5, 7, dtype=torch.float64), torch.empty(4, 6, dtype=torch.float64)]
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: tuple(y.clone() for y in bicubic_modulate_multi([a, c], [b, d], align_corners, out=bufs)),
        (w, mod, w2, m2),
    )


@native
@pytest.mark.parametrize("align_corners", [False, True], ids=["half_pixel", "align_corners"])
def test_opcheck(align_corners):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(13, 10, generator=g)
    mod = torch.rand(3, 4, generator=g)
    grad = torch.randn(13, 10, generator=g)
    ops = torch.ops.cltk
    torch.library.opcheck(ops.bicubic_modulate, (w, mod.clone().requires_grad_(), align_corners))
    torch.library.opcheck(ops.bicubic_modulate, (w.clone().requires_grad_(), mod.clone().requires_grad_(), align_corners))
    torch.library.opcheck(ops.bicubic_modulate_backward, (grad, w, mod, align_corners, True, True))
    torch.library.opcheck(ops.bicubic_modulate_backward, (grad, w, mod, align_corners, False, True))
    torch.library.opcheck(ops.bicubic_modulate_out_, (w, mod, align_corners, torch.empty_like(w)))
    w2, m2 = torch.randn(5, 9, generator=g), torch.rand(2, 2, generator=g)
    torch.library.opcheck(
        ops.bicubic_modulate_multi, ([w, w2], [mod.clone().requires_grad_(), m2.clone().requires_grad_()], align_corners)
    )
    torch.library.opcheck(ops.bicubic_modulate_multi_out_, ([w, w2], [mod, m2], align_corners, [torch.empty_like(w), torch.empty_like(w2)]))
    torch.library.opcheck(
        ops.bicubic_modulate_multi_backward, ([grad, torch.randn(5, 9, generator=g)], [w, w2], [mod, m2], align_corners, True, True)
    )
    # conv weights (4-D, modulated as their 2-D view) and the C++ autograd with both inputs requiring grad
    w4, m4 = torch.randn(6, 2, 3, 3, generator=g), torch.rand(3, 4, generator=g)
    torch.library.opcheck(
        ops.bicubic_modulate_multi,
        ([w.clone().requires_grad_(), w4.clone().requires_grad_()], [mod.clone().requires_grad_(), m4.clone().requires_grad_()], align_corners),
    )
    torch.library.opcheck(ops.bicubic_modulate_multi_out_, ([w4], [m4], align_corners, [torch.empty_like(w4)]))
    torch.library.opcheck(ops.bicubic_modulate, (w4, m4.clone().requires_grad_(), align_corners))


BAD = [
    ("mod_taller", lambda: (torch.randn(4, 8), torch.ones(5, 3)), ValueError, r"mod must not be larger than weight.*\[5, 3\].*\[4, 8\]"),
    ("mod_wider", lambda: (torch.randn(4, 8), torch.ones(2, 9)), ValueError, r"mod must not be larger than weight.*\[2, 9\].*\[4, 8\]"),
    ("mod_wider_conv", lambda: (torch.randn(4, 1, 3, 3), torch.ones(2, 10)), ValueError, r"mod must not be larger.*modulated as \[4, 9\]"),
    ("mod_3d", lambda: (torch.randn(4, 8), torch.ones(1, 2, 2)), ValueError, r"mod must be 2-D \(m1, m2\), got shape \[1, 2, 2\]"),
    ("mod_1d", lambda: (torch.randn(4, 8), torch.ones(3)), ValueError, r"mod must be 2-D \(m1, m2\), got shape \[3\]"),
    ("mod_empty", lambda: (torch.randn(4, 8), torch.ones(0, 2)), ValueError, r"mod must have at least one row and one column, got shape \[0, 2\]"),
    ("weight_1d", lambda: (torch.randn(8), torch.ones(2, 2)), ValueError, r"weight must be 2-D \(out, in\) or 4-D.*got shape \[8\]"),
    ("dtype_mismatch", lambda: (torch.randn(4, 8), torch.ones(2, 2, dtype=torch.float64)), TypeError,
     r"weight and mod must have the same dtype, got torch.float32 \(weight \[4, 8\]\) and torch.float64 \(mod \[2, 2\]\)"),
    ("device_mismatch", lambda: (torch.randn(4, 8), torch.ones(2, 2, device="meta")), ValueError,
     r"weight and mod must be on the same device, got cpu \(weight \[4, 8\]\) and meta \(mod \[2, 2\]\)"),
    ("int_dtype", lambda: (torch.ones(4, 8, dtype=torch.int32), torch.ones(2, 2, dtype=torch.int32)), TypeError,
     r"weight must be float32 or float64, got torch.int32"),
]


@pytest.mark.parametrize("make,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(make, exc, match):
    w, mod = make()
    with pytest.raises(exc, match=match):
        bicubic_modulate(w, mod)
    with pytest.raises(exc, match=match):
        bicubic_modulate_ref(w, mod)


def test_bad_input_out_and_lists():
    w, mod = torch.randn(4, 8), torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"out must match the weight's shape.*\[4, 8\].*got \(\[4, 7\]"):
        bicubic_modulate(w, mod, out=torch.empty(4, 7))
    with pytest.raises(ValueError, match=r"out must be contiguous"):
        bicubic_modulate(w, mod, out=torch.empty(8, 4).t())
    with pytest.raises(ValueError, match=r"out must not be a leaf that requires grad"):
        bicubic_modulate(w, mod, out=torch.empty(4, 8, requires_grad=True))
    with pytest.raises(ValueError, match=r"weights and mods must have the same length, got 2 and 1"):
        bicubic_modulate_multi([w, w], [mod])
    with pytest.raises(ValueError, match=r"mods\[1\] must not be larger than weights\[1\].*\[5, 5\].*\[4, 8\]"):
        bicubic_modulate_multi([w, w], [mod, torch.ones(5, 5)])


@native
def test_native_op_bad_input_messages():
    ops = torch.ops.cltk
    with pytest.raises(RuntimeError, match=r"bicubic_modulate: mod must not be larger than weight in either dimension, got mod \[5, 3\] for weight \[4, 8\]"):
        ops.bicubic_modulate(torch.randn(4, 8), torch.ones(5, 3))
    with pytest.raises(RuntimeError, match=r"bicubic_modulate: mod must be 2-D \(m1, m2\), got shape \[1, 2, 2\]"):
        ops.bicubic_modulate(torch.randn(4, 8), torch.ones(1, 2, 2))
    with pytest.raises(RuntimeError, match=r"weight and mod must have the same dtype, got Float \(weight \[4, 8\]\) and Double \(mod \[2, 2\]\)"):
        ops.bicubic_modulate(torch.randn(4, 8), torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"bicubic_modulate_multi: mods\[1\] must not be larger than weights\[1\]"):
        ops.bicubic_modulate_multi([torch.randn(4, 8), torch.randn(4, 8)], [torch.ones(2, 2), torch.ones(9, 2)], False)
    with pytest.raises(RuntimeError, match=r"bicubic_modulate_backward: grad must have the shape of weight \[4, 8\], got \[4, 7\]"):
        ops.bicubic_modulate_backward(torch.randn(4, 7), torch.randn(4, 8), torch.ones(2, 2), False, True, True)
    with pytest.raises(RuntimeError, match=r"bicubic_modulate_out_: out must have the shape of weight \[4, 8\], got \[8, 4\]"):
        ops.bicubic_modulate_out_(torch.randn(4, 8), torch.ones(2, 2), False, torch.empty(8, 4))


@pytest.mark.parametrize("align_corners", [False, True])
def test_bicubic_modulate_out_op_matches_its_ref(align_corners):
    """cltk::bicubic_modulate_out_ (written into a caller's buffer) against bicubic_modulate_out_ref."""
    from cltk.ops.bicubic import bicubic_modulate_out_ref
    g = torch.Generator().manual_seed(3)
    w, mod = torch.randn(37, 27, generator=g), torch.randn(4, 5, generator=g)   # the op takes 2-D weights
    out, ref = torch.full_like(w, float("nan")), torch.full_like(w, float("nan"))
    torch.ops.cltk.bicubic_modulate_out_(w, mod, align_corners, out)
    bicubic_modulate_out_ref(w, mod, align_corners, ref)
    torch.testing.assert_close(out, ref, **tol(torch.float32))
