"""Fused per-row meta-LSTM: one step of a small stacked LSTM plus an output head for N independent rows.

The learned optimizer of a meta-LSTM gate runs one tiny recurrent network per synapse (or per neuron): row ``n``
holds that synapse's input features (for example ``(w, g, h_i, h'_j)``) and its own recurrent state. One call
advances every row by one step::

    in_0 = x[n]                                                  x: [N, F]
    for l in 0..L-1:                                             nn.LSTM's cell, gate order (i, f, g, o)
        i, f, g, o = split4(W_ih[l] @ in_l + W_hh[l] @ h[l, n] + b[l])
        c'[l, n] = sigmoid(f) * c[l, n] + sigmoid(i) * tanh(g)
        h'[l, n] = sigmoid(o) * tanh(c'[l, n]);   in_{l+1} = h'[l, n]
    out[n] = scale * tanh(w_out . h'[L-1, n] + b_out)  [* multiply[n]]

Formulation: the stack is exactly ``torch.nn.LSTM(F, H, num_layers=L)`` applied to one time step (the hidden
layers' nonlinearities are the LSTM's own sigmoid/tanh; no extra ReLU is inserted between layers, so the stack
equals nn.LSTM with the same weights), followed by the output layer ``Linear(H, 1)``, a tanh, and a learnable
scalar ``scale``. In the meta-LSTM method the output layer starts with weight 0 and bias 1, so the initial gate is
``scale * tanh(1)`` for every row (see :func:`meta_lstm_init`). ``multiply`` (for example the gradient ``g``)
folds the product ``gate * g`` into the same call.

Weights (nn.LSTM's, see :func:`meta_lstm_weights`): ``w_ih0`` [4H, F] (layer 0), ``w_ih`` [L-1, 4H, H]
(layers 1..L-1), ``w_hh`` [L, 4H, H], ``b`` [L, 4H] = ``b_ih + b_hh``, ``w_out`` [H], ``b_out`` and ``scale``
one element each. State ``h``, ``c``: [L, H, N], unit-major: nn.LSTM's ``(h_0, c_0)`` [L, N, H] transposed in
its last two dimensions (``h_0.transpose(1, 2)``), so that a tile of rows of one unit is contiguous for the SIMD
kernels (the state is opaque per-row memory; this layout saves two transposes per tile and step).

Native kernels never materialise an [N, 4H] gate tensor: rows are processed in tiles whose gate pre-activations
live in SIMD registers; the backward (:func:`meta_lstm` under autograd, truncated BPTT through one step)
recomputes the gates from ``(x, h, c)`` instead of storing them, so its memory is the size of the gradients.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from cltk import _ext

__all__ = ["meta_lstm", "meta_lstm_", "meta_lstm_ref", "meta_lstm_out_ref", "meta_lstm_weights", "meta_lstm_init"]

_NAMES = ("w_ih0", "w_ih", "w_hh", "b", "w_out", "b_out", "scale")


def _check(op: str, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply) -> tuple[int, int, int, int]:
    args = dict(x=x, h=h, c=c, w_ih0=w_ih0, w_ih=w_ih, w_hh=w_hh, b=b, w_out=w_out, b_out=b_out, scale=scale)
    for name, t in args.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D (N, F), got shape {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: x must be float32 or float64, got {x.dtype}")
    if h.dim() != 3:
        raise ValueError(f"{op}: h must be 3-D (L, H, N), got shape {list(h.shape)}")
    if c.shape != h.shape:
        raise ValueError(f"{op}: c must have the shape of h {list(h.shape)}, got {list(c.shape)}")
    N, F = x.shape
    L, H, _ = h.shape
    if h.shape[2] != N:
        raise ValueError(f"{op}: h.size(2) must equal the number of rows x.size(0) (= {N}), got h {list(h.shape)}")
    if L < 1 or H < 1 or F < 1:
        raise ValueError(f"{op}: need at least one layer, hidden unit and feature, got h {list(h.shape)}, x {list(x.shape)}")
    if w_ih0.dim() != 2 or w_ih0.shape[0] != 4 * H:
        raise ValueError(f"{op}: w_ih0 must be [4H, F] = [{4 * H}, {F}], got {list(w_ih0.shape)}")
    if w_ih0.shape[1] != F:
        raise ValueError(f"{op}: w_ih0.size(1) must equal the input width x.size(1) (= {F}), got w_ih0 {list(w_ih0.shape)}")
    if tuple(w_ih.shape) != (L - 1, 4 * H, H):
        raise ValueError(f"{op}: w_ih must be [L-1, 4H, H] = [{L - 1}, {4 * H}, {H}], got {list(w_ih.shape)}")
    if tuple(w_hh.shape) != (L, 4 * H, H):
        raise ValueError(f"{op}: w_hh must be [L, 4H, H] = [{L}, {4 * H}, {H}], got {list(w_hh.shape)}")
    if tuple(b.shape) != (L, 4 * H):
        raise ValueError(f"{op}: b must be [L, 4H] = [{L}, {4 * H}], got {list(b.shape)}")
    if tuple(w_out.shape) != (H,):
        raise ValueError(f"{op}: w_out must be [H] = [{H}], got {list(w_out.shape)}")
    if b_out.numel() != 1:
        raise ValueError(f"{op}: b_out must have one element, got shape {list(b_out.shape)}")
    if scale.numel() != 1:
        raise ValueError(f"{op}: scale must have one element, got shape {list(scale.shape)}")
    if multiply is not None:
        if not isinstance(multiply, Tensor):
            raise TypeError(f"{op}: multiply must be a Tensor or None, got {type(multiply).__name__}")
        if tuple(multiply.shape) != (N,):
            raise ValueError(f"{op}: multiply must be [N] = [{N}], got {list(multiply.shape)}")
        args["multiply"] = multiply
    for name, t in args.items():
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} must be on the device of x ({x.device}), got {t.device}")
    s = float(scale.detach().reshape(()))
    if not math.isfinite(s):
        raise ValueError(f"{op}: scale must be finite, got {s}")
    return N, F, H, L


def meta_lstm_ref(
    x: Tensor, h: Tensor, c: Tensor, w_ih0: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor, w_out: Tensor,
    b_out: Tensor, scale: Tensor, multiply: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Plain-PyTorch twin of :func:`meta_lstm`: nn.LSTMCell's equations layer by layer (differentiable).

    Returns ``(out [N], h_new [L, H, N], c_new [L, H, N])``.
    """
    _, _, _, L = _check("meta_lstm", x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply)
    inp = x
    hs, cs = [], []
    for layer in range(L):
        wi = w_ih0 if layer == 0 else w_ih[layer - 1]
        gates = inp @ wi.T + h[layer].T @ w_hh[layer].T + b[layer]
        i, f, g, o = gates.chunk(4, dim=1)
        c1 = torch.sigmoid(f) * c[layer].T + torch.sigmoid(i) * torch.tanh(g)
        h1 = torch.sigmoid(o) * torch.tanh(c1)
        hs.append(h1)
        cs.append(c1)
        inp = h1
    out = scale.reshape(()) * torch.tanh(inp @ w_out + b_out.reshape(()))
    if multiply is not None:
        out = out * multiply
    return out, torch.stack(hs).transpose(1, 2), torch.stack(cs).transpose(1, 2)



def meta_lstm_out_ref(
    x: Tensor, h: Tensor, c: Tensor, w_ih0: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor, w_out: Tensor,
    b_out: Tensor, scale: Tensor, multiply: Optional[Tensor], h_out: Tensor, c_out: Tensor,
) -> Tensor:
    """Plain-PyTorch twin of ``cltk::meta_lstm_out_``: :func:`meta_lstm_ref`, with the new state written into
    ``h_out`` / ``c_out``; returns ``out``."""
    out, h1, c1 = meta_lstm_ref(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply)
    with torch.no_grad():
        h_out.copy_(h1)
        c_out.copy_(c1)
    return out

def _backward_call(ctx, grad_out, grad_h, grad_c, saved, need):
    x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply = saved
    need_x = bool(need[0])
    need_state = bool(need[1] or need[2])
    need_w = any(bool(n) for n in need[3:10])
    need_m = multiply is not None and bool(need[10])
    res = torch.ops.cltk.meta_lstm_backward(
        grad_out, grad_h, grad_c, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply,
        need_x, need_state, need_w, need_m,
    )
    return tuple(r if bool(n) else None for r, n in zip(res, need))


class _MetaLSTM(torch.autograd.Function):
    """Eager autograd of the wrapper; with ``state_out`` the new state is written into those buffers (marked dirty)."""

    @staticmethod
    def forward(ctx, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply, h_out, c_out):
        if h_out is None:
            out, h1, c1 = torch.ops.cltk.meta_lstm(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply)
        else:
            out = torch.ops.cltk.meta_lstm_out_(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply, h_out, c_out)
            ctx.mark_dirty(h_out, c_out)
            h1, c1 = h_out, c_out
        ctx.has_mult = multiply is not None
        # Unused outputs (typically h_new, c_new of the last step) arrive as None, not as zero [L, H, N] tensors.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale,
                              *( (multiply,) if multiply is not None else ()))
        return out, h1, c1

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        saved = list(ctx.saved_tensors)
        if not ctx.has_mult:
            saved.append(None)
        grads = _backward_call(ctx, grad_out, grad_h, grad_c, saved, ctx.needs_input_grad[:11])
        return (*grads, None, None)


def meta_lstm(
    x: Tensor, h: Tensor, c: Tensor, w_ih0: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor, w_out: Tensor,
    b_out: Tensor, scale: Tensor, *, multiply: Optional[Tensor] = None,
    state_out: Optional[tuple[Tensor, Tensor]] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One differentiable step of the per-row meta-LSTM (see the module docstring for the equations).

    Args:
        x: [N, F] row inputs; float32 or float64. Every tensor below shares its dtype and device.
        h, c: [L, H, N] state (read, not modified).
        w_ih0 [4H, F], w_ih [L-1, 4H, H], w_hh [L, 4H, H], b [L, 4H], w_out [H], b_out, scale (one element each;
            scale finite): the network (:func:`meta_lstm_weights` converts an nn.LSTM + nn.Linear).
        multiply: optional [N]; the returned ``out`` is then ``gate * multiply``.
        state_out: optional pair of persistent contiguous [L, H, N] buffers (not ``h``/``c``) that receive the new
            state in place, so that a truncated-BPTT loop reuses memory instead of allocating each step.

    Returns:
        ``(out [N], h_new, c_new)``, differentiable w.r.t. every input. The backward recomputes the gates (no
        [N, 4H] tensor is stored).
    """
    _check("meta_lstm", x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply)
    h_out = c_out = None
    if state_out is not None:
        h_out, c_out = state_out
        for name, t in (("state_out[0]", h_out), ("state_out[1]", c_out)):
            if not isinstance(t, Tensor) or t.shape != h.shape or t.dtype != h.dtype or t.device != h.device:
                raise ValueError(f"meta_lstm: {name} must be a tensor of h's shape, dtype and device "
                                 f"({list(h.shape)}, {h.dtype}, {h.device})")
            if not t.is_contiguous():
                raise ValueError(f"meta_lstm: {name} must be contiguous, got strides {t.stride()}")
            if t.data_ptr() in (h.data_ptr(), c.data_ptr()) and t.numel() > 0:
                raise ValueError(f"meta_lstm: {name} must not share memory with h or c (use meta_lstm_ for in place)")
    tensors = (x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale)
    if not _ext.use_native("meta_lstm", x):
        out, h1, c1 = meta_lstm_ref(*tensors, multiply)
        if h_out is not None:
            with torch.no_grad():
                h_out.copy_(h1)
                c_out.copy_(c1)
        return out, h1, c1
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*tensors, multiply) if t is not None)
    if not grad:
        if h_out is None:
            return torch.ops.cltk.meta_lstm(*tensors, multiply)
        out = torch.ops.cltk.meta_lstm_out_(*tensors, multiply, h_out, c_out)
        return out, h_out, c_out
    if h_out is not None:
        h_out, c_out = h_out.detach(), c_out.detach()
    return _MetaLSTM.apply(*tensors, multiply, h_out, c_out)


@torch.no_grad()
def meta_lstm_(
    x: Tensor, h: Tensor, c: Tensor, w_ih0: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor, w_out: Tensor,
    b_out: Tensor, scale: Tensor, *, multiply: Optional[Tensor] = None,
) -> Tensor:
    """:func:`meta_lstm` advancing the state in place: ``h`` and ``c`` ([L, H, N], contiguous) become the new
    state; returns ``out`` [N]. Not differentiable (runs under ``torch.no_grad``); use :func:`meta_lstm` to
    train through the step."""
    _check("meta_lstm_", x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply)
    for name, t in (("h", h), ("c", c)):
        if not t.is_contiguous():
            raise ValueError(f"meta_lstm_: {name} must be contiguous (updated in place), got strides {t.stride()}")
    if _ext.use_native("meta_lstm_", x):
        return torch.ops.cltk.meta_lstm_(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply)
    out, h1, c1 = meta_lstm_ref(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply)
    h.copy_(h1)
    c.copy_(c1)
    return out


def meta_lstm_weights(lstm: nn.LSTM, head: nn.Linear, scale: Tensor) -> tuple[Tensor, ...]:
    """``(w_ih0, w_ih, w_hh, b, w_out, b_out, scale)`` of an ``nn.LSTM(F, H, num_layers=L)`` (unidirectional, with
    biases, batch-first or not) and an ``nn.Linear(H, 1)`` head; differentiable views/stacks of their parameters."""
    if lstm.bidirectional or lstm.proj_size != 0 or not lstm.bias:
        raise ValueError("meta_lstm_weights: lstm must be unidirectional, without projection, with biases")
    if head.in_features != lstm.hidden_size or head.out_features != 1 or head.bias is None:
        raise ValueError(f"meta_lstm_weights: head must be nn.Linear({lstm.hidden_size}, 1) with a bias, got {head}")
    L = lstm.num_layers
    H = lstm.hidden_size
    w_ih0 = lstm.weight_ih_l0
    if L > 1:
        w_ih = torch.stack([getattr(lstm, f"weight_ih_l{k}") for k in range(1, L)])
    else:
        w_ih = w_ih0.new_zeros((0, 4 * H, H))
    w_hh = torch.stack([getattr(lstm, f"weight_hh_l{k}") for k in range(L)])
    b = torch.stack([getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}") for k in range(L)])
    return w_ih0, w_ih, w_hh, b, head.weight.reshape(H), head.bias.reshape(()), scale.reshape(())


def meta_lstm_init(
    in_features: int, hidden: int, layers: int = 3, *, scale: float = 1.0, dtype: torch.dtype = torch.float32,
    device=None, generator: Optional[torch.Generator] = None,
) -> list[Tensor]:
    """Fresh leaf parameters ``[w_ih0, w_ih, w_hh, b, w_out, b_out, scale]``: the LSTM weights uniform in
    ``+-1/sqrt(H)`` (nn.LSTM's init; ``b`` is the sum of two such biases), the output layer's weight 0 and bias 1,
    and the learnable ``scale``."""
    k = 1.0 / math.sqrt(hidden)

    def u(*shape):
        return (torch.rand(shape, dtype=dtype, device=device, generator=generator) * 2 - 1) * k

    params = [
        u(4 * hidden, in_features), u(layers - 1, 4 * hidden, hidden), u(layers, 4 * hidden, hidden),
        u(layers, 4 * hidden) + u(layers, 4 * hidden),
        torch.zeros(hidden, dtype=dtype, device=device), torch.ones((), dtype=dtype, device=device),
        torch.full((), float(scale), dtype=dtype, device=device),
    ]
    return [p.requires_grad_() for p in params]


def _register() -> None:
    lib = "cltk::"

    @torch.library.register_fake(lib + "meta_lstm_")
    def _(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply=None):
        return x.new_empty((x.shape[0],))

    @torch.library.register_fake(lib + "meta_lstm")
    def _(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply=None):
        return x.new_empty((x.shape[0],)), h.new_empty(h.shape), c.new_empty(c.shape)

    @torch.library.register_fake(lib + "meta_lstm_out_")
    def _(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply, h_out, c_out):
        return x.new_empty((x.shape[0],))

    @torch.library.register_fake(lib + "meta_lstm_backward")
    def _(grad_out, grad_h_new, grad_c_new, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply,
          input_requires_grad, state_requires_grad, weights_requires_grad, multiply_requires_grad):
        def like(t, want):
            return t.new_empty(t.shape) if want else x.new_empty((0,))

        mult = multiply_requires_grad and multiply is not None
        return (
            like(x, input_requires_grad), like(h, state_requires_grad), like(c, state_requires_grad),
            *(like(t, weights_requires_grad) for t in (w_ih0, w_ih, w_hh, b, w_out, b_out, scale)),
            like(multiply, True) if mult else x.new_empty((0,)),
        )

    def _setup(ctx, inputs, output):
        ctx.has_mult = inputs[10] is not None
        ctx.save_for_backward(*inputs[:10], *((inputs[10],) if ctx.has_mult else ()))

    def _backward(ctx, grad_out, grad_h, grad_c):
        saved = list(ctx.saved_tensors)
        if not ctx.has_mult:
            saved.append(None)
        return _backward_call(ctx, grad_out, grad_h, grad_c, saved, ctx.needs_input_grad[:11])

    torch.library.register_autograd(lib + "meta_lstm", _backward, setup_context=_setup)


if _ext.available():
    _register()
