"""bicubic_modulate on weights large enough for the CPU kernel's streaming-store forward (out= buffers totalling
8 MiB and more per call) and for several backward row chunks, with row lengths and buffers that leave rows unaligned,
against the F.interpolate reference. Only outputs whose rows are whole aligned vectors are streamed (1024 columns
in a fresh buffer); rows off the vector alignment in the same call are stored normally."""
import pytest
import torch

import cltk
from cltk.ops.bicubic import bicubic_modulate, bicubic_modulate_multi, bicubic_modulate_ref
from cltk.testing.tolerances import tol

from tests.ops.test_bicubic import assert_reduction_close, grad_mod_ref64

native = pytest.mark.skipif(not cltk._ext.available(), reason=f"cltk._C not loaded: {cltk._ext.reason()}")

# (weight shape, mod shape, dtype): 8.0-8.3 MiB outputs; 1031 and 1030 columns put most rows off the vector
# alignment, 1024 columns in an aligned buffer make every row whole vectors (the streamed case).
LARGE = [
    ((2056, 1031), (4, 4), torch.float32),
    ((1057, 1030), (8, 5), torch.float64),
    ((2056, 1024), (4, 4), torch.float32),
    ((1032, 1024), (8, 5), torch.float64),
]
LARGE_IDS = ["f32", "f64", "f32_whole_rows", "f64_whole_rows"]


def _unaligned_buffer(shape, dtype):
    """A contiguous buffer whose data pointer is one element past an aligned allocation."""
    n = shape[0] * shape[1]
    buf = torch.empty(n + 1, dtype=dtype)[1:].view(shape)
    assert buf.is_contiguous() and buf.data_ptr() % 64 != 0
    return buf


@native
@pytest.mark.parametrize("align_corners", [False, True], ids=["half_pixel", "align_corners"])
@pytest.mark.parametrize("wshape,mshape,dtype", LARGE, ids=LARGE_IDS)
def test_large_matches_ref(wshape, mshape, dtype, align_corners):
    g = torch.Generator().manual_seed(7)
    w0 = torch.randn(wshape, dtype=dtype, generator=g)
    m0 = torch.rand(mshape, dtype=dtype, generator=g) + 0.5
    grad = torch.randn(wshape, dtype=dtype, generator=g)
    assert w0.numel() * w0.element_size() >= 8 << 20

    w = w0.clone().requires_grad_()
    m = m0.clone().requires_grad_()
    ref_y = bicubic_modulate_ref(w, m, align_corners)
    ref_gw, _ = torch.autograd.grad(ref_y, (w, m), grad)
    gm64, mass = grad_mod_ref64(w0, m0, grad, align_corners)

    for impl in ("kernel", "out", "out_unaligned", "multi", "multi_out"):
        w = w0.clone().requires_grad_()
        m = m0.clone().requires_grad_()
        if impl == "kernel":
            y = bicubic_modulate(w, m, align_corners)
        elif impl == "out":
            buf = torch.empty(wshape, dtype=dtype)
            y = bicubic_modulate(w, m, align_corners, out=buf)
            assert y.data_ptr() == buf.data_ptr()
        elif impl == "out_unaligned":
            buf = _unaligned_buffer(wshape, dtype)
            y = bicubic_modulate(w, m, align_corners, out=buf)
            assert y.data_ptr() == buf.data_ptr()
        elif impl == "multi":
            (y,) = bicubic_modulate_multi([w], [m], align_corners)
        else:  # with a small weight in the same call: the call's total decides; the small one's rows are unaligned
            small_w = torch.randn(5, 7, dtype=dtype, generator=g)
            small_m = torch.rand(2, 3, dtype=dtype, generator=g)
            bufs = [_unaligned_buffer((5, 7), dtype), torch.empty(wshape, dtype=dtype)]
            small_y, y = bicubic_modulate_multi([small_w, w], [small_m, m], align_corners, out=bufs)
            torch.testing.assert_close(small_y, bicubic_modulate_ref(small_w, small_m, align_corners), **tol(dtype))
        torch.testing.assert_close(y.detach(), ref_y.detach(), **tol(dtype), msg=lambda s: f"{impl} forward: {s}")
        gw, gm = torch.autograd.grad(y, (w, m), grad)
        torch.testing.assert_close(gw, ref_gw, **tol(dtype), msg=lambda s: f"{impl} grad_weight: {s}")
        assert_reduction_close(gm, gm64, mass)


@native
@pytest.mark.parametrize("cols,offset", [(1031, 1), (1024, 16)], ids=["unaligned", "whole_rows_streamed"])
def test_large_forward_no_grad_out_leaves_neighbours(cols, offset):
    """The forward writes exactly the output's elements: the elements around the buffer stay (an unaligned buffer,
    and an aligned one of whole-vector rows that takes the streaming stores)."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(2056, cols, generator=g)
    m = torch.rand(4, 4, generator=g) + 0.5
    storage = torch.full((w.numel() + 2 * offset,), 123.0)
    out = storage[offset:-offset].view(w.shape)
    with torch.no_grad():
        bicubic_modulate(w, m, out=out)
    assert (storage[:offset] == 123.0).all() and (storage[-offset:] == 123.0).all()
    torch.testing.assert_close(out, bicubic_modulate_ref(w, m), **tol(torch.float32))
