"""Bicubic weight modulation: ``W_eff = weight * up(mod)``.

``up`` is PyTorch's bicubic upsampling of a low-resolution grid ``mod`` [m1, m2] to the weight's shape,
exactly ``F.interpolate(mod[None, None], size=weight.shape, mode="bicubic", align_corners=...)[0, 0]``
(cubic convolution with A = -0.75, clamped border taps). The native kernels never materialize ``up(mod)``:
the interpolation is separable, so one pass reads the weight and writes ``W_eff``; the backward gives
``grad_mod = up^T(grad * weight)`` as a deterministic two-level reduction (no atomics) and ``grad_weight =
grad * up(mod)`` only when the weight requires grad.

Conv weights: a 4-D weight (out, in, kh, kw) is modulated as its 2-D view (out, in * kh * kw), i.e. the grid
is interpolated over the flattened fan-in; a depthwise weight (out, 1, kh, kw) thus maps to (out, kh * kw).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cltk import _ext

__all__ = [
    "bicubic_modulate",
    "bicubic_modulate_ref",
    "bicubic_modulate_out_ref",
    "bicubic_modulate_multi",
    "bicubic_modulate_multi_ref",
    "as_2d_weight",
    "bicubic_interp_matrix",
]


def as_2d_weight(weight: Tensor) -> Tensor:
    """The 2-D (out, fan_in) view a weight is modulated as: 2-D as is, 4-D (out, in, kh, kw) -> (out, in*kh*kw)."""
    if weight.dim() == 4:  # not reshape(out, -1): that is ambiguous, and raises, for out == 0
        return weight.reshape(weight.shape[0], weight.shape[1] * weight.shape[2] * weight.shape[3])
    return weight


def bicubic_interp_matrix(
    n_out: int, n_in: int, align_corners: bool = False, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """The 1-D bicubic interpolation matrix [n_out, n_in] of ``F.interpolate(mode="bicubic")``, so that
    ``up(mod) == A @ mod @ B.T`` with ``A = bicubic_interp_matrix(out, m1)`` and ``B = bicubic_interp_matrix(in, m2)``.
    (Upsampling the identity along one axis; the other axis keeps its size, where bicubic is exact.)"""
    eye = torch.eye(n_in, dtype=dtype, device=device)
    return F.interpolate(eye[None, None], size=(n_out, n_in), mode="bicubic", align_corners=align_corners)[0, 0]


_FLOAT_DTYPES = (torch.float32, torch.float64)


def _check(op: str, weight: Tensor, mod: Tensor, wname: str = "weight", mname: str = "mod") -> None:
    """Validates one (weight, mod) pair (against the weight's 2-D (out, fan_in) size). Each attribute is read once:
    the checked multi-tensor path runs this for every weight of a backbone."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{op}: {wname} must be a Tensor, got {type(weight).__name__}")
    if not isinstance(mod, Tensor):
        raise TypeError(f"{op}: {mname} must be a Tensor, got {type(mod).__name__}")
    wshape, mshape = weight.shape, mod.shape
    wdim = len(wshape)
    if wdim != 2 and wdim != 4:
        raise ValueError(
            f"{op}: {wname} must be 2-D (out, in) or 4-D (out, in, kh, kw), got shape {list(wshape)}"
        )
    if len(mshape) != 2:
        raise ValueError(f"{op}: {mname} must be 2-D (m1, m2), got shape {list(mshape)}")
    wdev, mdev = weight.device, mod.device
    if wdev != mdev:
        raise ValueError(
            f"{op}: {wname} and {mname} must be on the same device, got {wdev} ({wname} "
            f"{list(wshape)}) and {mdev} ({mname} {list(mshape)})"
        )
    wdt, mdt = weight.dtype, mod.dtype
    if wdt != mdt:
        raise TypeError(
            f"{op}: {wname} and {mname} must have the same dtype, got {wdt} ({wname} "
            f"{list(wshape)}) and {mdt} ({mname} {list(mshape)})"
        )
    if wdt not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {wname} must be float32 or float64, got {wdt}")
    m1, m2 = mshape
    if m1 < 1 or m2 < 1:
        raise ValueError(f"{op}: {mname} must have at least one row and one column, got shape {list(mshape)}")
    if wdim == 4:
        w2 = (wshape[0], wshape[1] * wshape[2] * wshape[3])
    else:
        w2 = (wshape[0], wshape[1])
    if w2[0] * w2[1] != 0 and (m1 > w2[0] or m2 > w2[1]):
        shown = f"{list(wshape)}" + (f" (modulated as {list(w2)})" if wdim == 4 else "")
        raise ValueError(
            f"{op}: {mname} must not be larger than {wname} in either dimension, got {mname} "
            f"{list(mshape)} for {wname} {shown}"
        )


def _check_out(op: str, out: Tensor, weight: Tensor, name: str = "out") -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor or None, got {type(out).__name__}")
    if out.shape != weight.shape or out.dtype != weight.dtype or out.device != weight.device:
        raise ValueError(
            f"{op}: {name} must match the weight's shape, dtype and device ({list(weight.shape)}, {weight.dtype}, "
            f"{weight.device}), got ({list(out.shape)}, {out.dtype}, {out.device})"
        )
    if not out.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous, got strides {out.stride()} for shape {list(out.shape)}")
    if out.is_leaf and out.requires_grad:
        raise ValueError(f"{op}: {name} must not be a leaf that requires grad (it is overwritten in place)")


def bicubic_modulate_ref(weight: Tensor, mod: Tensor, align_corners: bool = False, *, out: Optional[Tensor] = None) -> Tensor:
    """Plain-PyTorch twin of :func:`bicubic_modulate` (materializes ``up(mod)`` with ``F.interpolate``)."""
    _check("bicubic_modulate", weight, mod)
    if out is not None:
        _check_out("bicubic_modulate", out, weight)
    w2 = as_2d_weight(weight)
    if w2.numel() == 0:
        res = w2 * (mod.sum() * 0)
    else:
        up = F.interpolate(mod[None, None], size=tuple(w2.shape), mode="bicubic", align_corners=align_corners)[0, 0]
        res = w2 * up
    res = res.reshape(weight.shape)
    if out is not None:
        return out.detach().copy_(res)
    return res



def bicubic_modulate_out_ref(weight: Tensor, mod: Tensor, align_corners: bool, out: Tensor) -> Tensor:
    """Plain-PyTorch twin of ``cltk::bicubic_modulate_out_``: :func:`bicubic_modulate_ref` written into ``out``."""
    return bicubic_modulate_ref(weight, mod, align_corners, out=out)

def bicubic_modulate_multi_ref(
    weights: Sequence[Tensor], mods: Sequence[Tensor], align_corners: bool = False, *, out: Optional[Sequence[Tensor]] = None
) -> list[Tensor]:
    """Plain-PyTorch twin of :func:`bicubic_modulate_multi`: one :func:`bicubic_modulate_ref` per weight."""
    _check_lists("bicubic_modulate_multi", weights, mods, out)
    outs = out if out is not None else [None] * len(weights)
    return [bicubic_modulate_ref(w, m, align_corners, out=o) for w, m, o in zip(weights, mods, outs)]


def _check_lists(op: str, weights, mods, out) -> None:
    """Validates the lists of the multi-tensor op."""
    if not isinstance(weights, (list, tuple)) or not isinstance(mods, (list, tuple)):
        raise TypeError(
            f"{op}: weights and mods must be lists of tensors, got {type(weights).__name__} and {type(mods).__name__}"
        )
    if len(weights) != len(mods):
        raise ValueError(f"{op}: weights and mods must have the same length, got {len(weights)} and {len(mods)}")
    for k, (w, m) in enumerate(zip(weights, mods)):
        _check(op, w, m, f"weights[{k}]", f"mods[{k}]")
    if out is not None:
        if not isinstance(out, (list, tuple)) or len(out) != len(weights):
            raise ValueError(
                f"{op}: out must be a list of {len(weights)} tensors (one per weight), got "
                f"{type(out).__name__} of length {len(out) if isinstance(out, (list, tuple)) else 'n/a'}"
            )
        for k, (o, w) in enumerate(zip(out, weights)):
            _check_out(op, o, w, f"out[{k}]")


class _Modulate(torch.autograd.Function):
    """Eager autograd for the wrapper, around the same ops that register_autograd covers.

    A plain autograd.Function costs about 100 us less per forward+backward than the register_autograd path
    (pytree and redispatch in Python), which matters for small layers; ``torch.ops.cltk.bicubic_modulate``
    itself stays differentiable through register_autograd. With ``out`` the result is written into that
    persistent buffer (marked dirty) instead of a fresh tensor.
    """

    @staticmethod
    def forward(ctx, weight2d: Tensor, mod: Tensor, align_corners: bool, out: Optional[Tensor]) -> Tensor:
        if out is None:
            res = torch.ops.cltk.bicubic_modulate(weight2d, mod, align_corners)
        else:
            torch.ops.cltk.bicubic_modulate_out_(weight2d, mod, align_corners, out.view(weight2d.shape))
            ctx.mark_dirty(out)
            res = out
        ctx.save_for_backward(weight2d, mod)
        ctx.align_corners = align_corners
        return res

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight2d, mod = ctx.saved_tensors
        need_w, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gw, gm = torch.ops.cltk.bicubic_modulate_backward(
            grad.reshape(weight2d.shape), weight2d, mod, ctx.align_corners, need_w, need_m
        )
        return (gw if need_w else None), (gm if need_m else None), None, None


def bicubic_modulate(weight: Tensor, mod: Tensor, align_corners: bool = False, *, out: Optional[Tensor] = None) -> Tensor:
    """``weight * up(mod)``, with ``up`` = bicubic ``F.interpolate`` of ``mod`` to the weight's (2-D) shape.

    Args:
        weight: [out, in], or a conv weight [out, in, kh, kw] modulated as [out, in*kh*kw]; float32 or float64.
        mod: [m1, m2] with 1 <= m1 <= out and 1 <= m2 <= fan-in; same dtype and device as ``weight``.
        align_corners: as in ``F.interpolate``.
        out: optional persistent buffer (weight's shape, dtype and device, contiguous, not a leaf requiring grad)
            that receives ``W_eff`` in place; the returned tensor shares its memory and carries the autograd
            history, so that training reuses the same memory every step (pass the previous step's result again).

    Returns:
        ``W_eff`` with the weight's shape; differentiable w.r.t. ``mod`` and ``weight``.
    """
    _check("bicubic_modulate", weight, mod)
    if out is not None:
        _check_out("bicubic_modulate", out, weight)
    w2 = as_2d_weight(weight)
    if not _ext.use_native("bicubic_modulate", w2):
        return bicubic_modulate_ref(weight, mod, align_corners, out=out)
    if not torch.is_grad_enabled() or not (w2.requires_grad or mod.requires_grad):
        if out is None:
            return torch.ops.cltk.bicubic_modulate(w2, mod, bool(align_corners)).view(weight.shape)
        torch.ops.cltk.bicubic_modulate_out_(w2, mod, bool(align_corners), out.view(w2.shape))
        return out
    if out is not None:
        return _Modulate.apply(w2, mod, bool(align_corners), out.detach())
    return _Modulate.apply(w2, mod, bool(align_corners), None).view(weight.shape)


def bicubic_modulate_multi(
    weights: Sequence[Tensor], mods: Sequence[Tensor], align_corners: bool = False, *, out: Optional[Sequence[Tensor]] = None
) -> list[Tensor]:
    """:func:`bicubic_modulate` for a whole list of weights (a backbone) in one native call per (device, dtype).

    ``weights[k]`` and ``mods[k]`` follow the rules of :func:`bicubic_modulate`; ``out``, when given, is a list of
    persistent buffers, one per weight, written in place and returned (as aliases that carry the autograd history).
    The backward is one native call per group too, from one C++ autograd node per group.
    """
    if (
        _ext.available() and isinstance(weights, (list, tuple)) and isinstance(mods, (list, tuple))
        and 0 < len(weights) == len(mods) and isinstance(weights[0], Tensor)
        and (out is None or (isinstance(out, (list, tuple)) and len(out) == len(weights)))
        and _ext.use_native("bicubic_modulate_multi", weights[0])
    ):
        # The usual call: one device and dtype. The native op checks every argument (a list mixing devices, or
        # dtypes on the CPU, included); when it refuses them, the checked path below runs, which groups such lists
        # or raises the argument's error.
        try:
            if out is None:
                return torch.ops.cltk.bicubic_modulate_multi(weights, mods, bool(align_corners))
            outs = [o.detach() for o in out]
            torch.ops.cltk.bicubic_modulate_multi_out_(weights, mods, bool(align_corners), outs)
            return outs
        except (RuntimeError, ValueError, TypeError, AttributeError):
            pass
    _check_lists("bicubic_modulate_multi", weights, mods, out)
    n = len(weights)
    if n == 0:
        return []
    # One group per (device, dtype).
    groups: dict = {}
    for k, w in enumerate(weights):
        groups.setdefault((w.device, w.dtype), []).append(k)
    result: list[Optional[Tensor]] = [None] * n
    for idx in groups.values():
        gw = [weights[k] for k in idx]
        gm = [mods[k] for k in idx]
        if not _ext.use_native("bicubic_modulate_multi", gw[0]):
            outs = [out[k] for k in idx] if out is not None else None
            res = bicubic_modulate_multi_ref(gw, gm, align_corners, out=outs)
        elif out is None:
            res = torch.ops.cltk.bicubic_modulate_multi(gw, gm, bool(align_corners))
        else:
            res = [out[k].detach() for k in idx]
            torch.ops.cltk.bicubic_modulate_multi_out_(gw, gm, bool(align_corners), res)
        for k, r in zip(idx, res):
            result[k] = r
    return result  # type: ignore[return-value]


def _check_one_device(op: str, weights) -> None:
    """The native multi-tensor kernels' device rule, for the fake kernels (a list mixing devices dispatches to one
    device's kernel)."""
    for k, w in enumerate(weights):
        if w.device != weights[0].device:
            raise RuntimeError(
                f"{op}: weights[{k}] must be on the device of weights[0] ({weights[0].device}), got {w.device}"
            )


def _register() -> None:
    lib = "cltk::"

    @torch.library.register_fake(lib + "bicubic_modulate")
    def _(weight, mod, align_corners=False):
        return weight.new_empty(weight.shape)

    @torch.library.register_fake(lib + "bicubic_modulate_out_")
    def _(weight, mod, align_corners, out):
        return None

    @torch.library.register_fake(lib + "bicubic_modulate_backward")
    def _(grad, weight, mod, align_corners, weight_requires_grad, mod_requires_grad):
        gw = weight.new_empty(weight.shape) if weight_requires_grad else weight.new_empty((0,))
        gm = mod.new_empty(mod.shape) if mod_requires_grad else mod.new_empty((0,))
        return gw, gm

    @torch.library.register_fake(lib + "bicubic_modulate_multi")
    def _(weights, mods, align_corners):
        _check_one_device("bicubic_modulate_multi", weights)
        return [w.new_empty(w.shape) for w in weights]

    @torch.library.register_fake(lib + "bicubic_modulate_multi_out_")
    def _(weights, mods, align_corners, outs):
        _check_one_device("bicubic_modulate_multi_out_", weights)
        return None

    @torch.library.register_fake(lib + "bicubic_modulate_multi_backward")
    def _(grads, weights, mods, align_corners, weight_requires_grad, mod_requires_grad):
        _check_one_device("bicubic_modulate_multi_backward", weights)
        gws = [w.new_empty(w.shape) for w in weights] if weight_requires_grad else []
        gms = [m.new_empty(m.shape) for m in mods] if mod_requires_grad else []
        return gws, gms

    def _setup(ctx, inputs, output):
        weight, mod, align_corners = inputs
        ctx.align_corners = align_corners
        ctx.save_for_backward(weight, mod)

    def _backward(ctx, grad):
        weight, mod = ctx.saved_tensors
        need_w, need_m = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        gw, gm = torch.ops.cltk.bicubic_modulate_backward(grad, weight, mod, ctx.align_corners, need_w, need_m)
        return (gw if need_w else None), (gm if need_m else None), None

    torch.library.register_autograd(lib + "bicubic_modulate", _backward, setup_context=_setup)


if _ext.available():
    _register()
