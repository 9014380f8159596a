"""MIGU ops: per-output-feature L1 magnitude caching and top-T row masks.

``row_l1_accumulate_(acc, y)``
    ``acc[d] += |y|.sum(over every dim but the last)``, accumulated in fp32, in place on ``acc``. Called from a
    forward hook under ``no_grad``; it never records ``y`` for autograd, so the activation is not kept alive.
``topk_row_mask(scores, threshold)``
    ``scores >= torch.quantile(scores, threshold)`` (linear interpolation, ties included), bit for bit, with an
    O(d) selection instead of a sort.
``topk_row_mask_batched(scores_list, threshold)``
    The same for every layer in one native call.

Each op has a ``*_ref`` twin in plain PyTorch: the test oracle, the benchmark baseline and the fallback when
``cltk._C`` is not available.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import Tensor

from cltk import _ext

__all__ = [
    "row_l1_accumulate_",
    "row_l1_accumulate_ref",
    "topk_row_mask",
    "topk_row_mask_ref",
    "topk_row_mask_batched",
    "topk_row_mask_batched_ref",
]

# The native ops exist only when cltk._C was built with csrc/migu; _ext.use_native raises for unknown ops.
_NATIVE = _ext.available() and {"row_l1_accumulate_", "topk_row_mask", "topk_row_mask_batched"} <= set(
    _ext.native_ops()
)


_NATIVE_FOR: dict = {}  # (op, device type) -> bool; the dispatcher lookup costs ~20 us, the hook calls per layer


def _use_native(op: str, t: Tensor) -> bool:
    if not _NATIVE:
        return False
    key = (op, t.device.type)
    hit = _NATIVE_FOR.get(key)
    if hit is None:
        hit = _NATIVE_FOR[key] = _ext.use_native(op, t)
    return hit


_Y_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_SCORE_DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# argument checks (the native kernels check the same things with the same wording, raising RuntimeError)
# ----------------------------------------------------------------------------------------------------------------
def _check_row_l1(acc: Tensor, y: Tensor) -> None:
    op = "row_l1_accumulate_"
    if not isinstance(acc, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{op}: acc and y must be tensors, got {type(acc).__name__} and {type(y).__name__}")
    if acc.dim() != 1:
        raise ValueError(f"{op}: acc must be 1-D (d_out,), got {acc.dim()}-D tensor of shape {list(acc.shape)}")
    if acc.dtype != torch.float32:
        raise ValueError(f"{op}: acc must have dtype float32, got {acc.dtype}")
    if y.dim() < 1:
        raise ValueError(f"{op}: y must have at least 1 dim (..., d_out), got a 0-D tensor")
    if y.dtype not in _Y_DTYPES:
        raise ValueError(f"{op}: y must be float32, bfloat16 or float16, got {y.dtype}")
    if y.device != acc.device:
        raise ValueError(f"{op}: acc and y must be on the same device, got {acc.device} and {y.device}")
    if y.shape[-1] != acc.shape[0]:
        raise ValueError(
            f"{op}: y.size(-1) must equal acc.size(0) (= {acc.shape[0]}), got {y.shape[-1]} (y shape {list(y.shape)})"
        )


def _check_threshold(op: str, threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: threshold must be a float in [0, 1), got {threshold!r}") from None
    if not (0.0 <= t < 1.0):  # also rejects NaN
        raise ValueError(f"{op}: threshold must be in [0, 1), got {threshold!r}")
    return t


def _check_scores(op: str, scores: Tensor, name: str = "scores") -> None:
    if not isinstance(scores, Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(scores).__name__}")
    if scores.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D (d,), got {scores.dim()}-D tensor of shape {list(scores.shape)}")
    if scores.dtype not in _SCORE_DTYPES:
        raise ValueError(f"{op}: {name} must be float32 or float64, got {scores.dtype}")
    if scores.numel() == 0:
        raise ValueError(f"{op}: {name} must be non-empty, got shape {list(scores.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# row_l1_accumulate_
# ----------------------------------------------------------------------------------------------------------------
def row_l1_accumulate_ref(acc: Tensor, y: Tensor) -> None:
    """Reference for :func:`row_l1_accumulate_`: ``acc += |y|.reshape(-1, d).sum(0)`` in fp32, under no_grad.

    ``reshape`` copies ``y`` when it is not viewable as (rows, d); the sum accumulates in fp32 for bf16/fp16 ``y``.
    """
    _check_row_l1(acc, y)
    with torch.no_grad():
        d = acc.shape[0]
        rows = math.prod(y.shape[:-1])  # not -1: a (..., 0) y has no inferable row count
        acc.add_(y.detach().reshape(rows, d).abs().sum(0, dtype=torch.float32))


def row_l1_accumulate_(acc: Tensor, y: Tensor) -> None:
    """Accumulate the L1 magnitude of every output feature: ``acc += |y|.sum(all dims but the last)``.

    Args:
        acc: ``(d_out,)`` float32, updated in place.
        y: ``(..., d_out)`` float32, bfloat16 or float16 on ``acc``'s device; any strides. The native CPU kernel
            reads ``y`` in place whenever its last dim is contiguous and the leading dims can be flattened to one
            row stride, or, failing that, walks the leading dims as they are; it never copies ``y`` (a last dim with
            stride != 1 is read with that stride). The CUDA kernel needs a (rows, d) view with unit last stride and
            makes a contiguous copy otherwise.

    Returns None. Not differentiable: ``y`` is detached, so nothing is recorded for autograd and ``y`` is not kept
    alive by the call (safe inside a forward hook with grad enabled). Accumulation is in fp32; the CPU result is
    deterministic for a given thread count, the CUDA result is deterministic (two-pass reduction, no atomics).
    """
    _check_row_l1(acc, y)
    y = y.detach()
    if _use_native("row_l1_accumulate_", acc):
        torch.ops.cltk.row_l1_accumulate_(acc, y)
    else:
        row_l1_accumulate_ref(acc, y)


# ----------------------------------------------------------------------------------------------------------------
# topk_row_mask
# ----------------------------------------------------------------------------------------------------------------
def topk_row_mask_ref(scores: Tensor, threshold: float) -> Tensor:
    """Reference for :func:`topk_row_mask`: ``scores >= torch.quantile(scores, threshold)``."""
    t = _check_threshold("topk_row_mask", threshold)
    _check_scores("topk_row_mask", scores)
    scores = scores.detach()
    return scores >= torch.quantile(scores, t)


def topk_row_mask(scores: Tensor, threshold: float) -> Tensor:
    """Rows whose score is at or above the ``threshold`` quantile of ``scores``.

    Args:
        scores: ``(d,)`` float32 or float64, non-empty (e.g. the cached L1 magnitudes of one layer's outputs).
        threshold: quantile level T in [0, 1); T = 0.7 keeps the top 30%.

    Returns a new ``(d,)`` bool tensor equal to ``scores >= torch.quantile(scores, threshold)`` bit for bit:
    linear interpolation between the two order statistics around rank ``T * (d - 1)`` computed in the scores'
    dtype as torch does, ties included. Any NaN makes the quantile NaN and the mask all False, as in torch.
    The native kernels select the two order statistics in O(d) instead of sorting.
    """
    t = _check_threshold("topk_row_mask", threshold)
    _check_scores("topk_row_mask", scores)
    scores = scores.detach()
    if _use_native("topk_row_mask", scores):
        return torch.ops.cltk.topk_row_mask(scores, t)
    return topk_row_mask_ref(scores, t)


def topk_row_mask_batched_ref(scores: Sequence[Tensor], threshold: float) -> List[Tensor]:
    """Reference for :func:`topk_row_mask_batched`: :func:`topk_row_mask_ref` on each tensor."""
    t = _check_threshold("topk_row_mask_batched", threshold)
    _check_scores_list(scores)
    return [topk_row_mask_ref(s, t) for s in scores]


def _check_scores_list(scores: Sequence[Tensor]) -> None:
    op = "topk_row_mask_batched"
    if isinstance(scores, Tensor) or not isinstance(scores, (list, tuple)):
        raise TypeError(f"{op}: scores must be a list of 1-D tensors, got {type(scores).__name__}")
    for i, s in enumerate(scores):
        _check_scores(op, s, name=f"scores[{i}]")
    if len(scores) > 1:
        dev = scores[0].device
        for i, s in enumerate(scores):
            if s.device != dev:
                raise ValueError(f"{op}: all scores must be on one device, scores[0] is on {dev}, scores[{i}] on {s.device}")


def topk_row_mask_batched(scores: Sequence[Tensor], threshold: float) -> List[Tensor]:
    """:func:`topk_row_mask` for every tensor of ``scores`` (one per layer, sizes may differ) in one native call.

    Args:
        scores: list of ``(d_i,)`` float32/float64 non-empty tensors on one device (dtypes may differ).
        threshold: quantile level T in [0, 1), shared by all layers.

    Returns a list of new ``(d_i,)`` bool tensors. The CPU kernel runs the layers in parallel; the CUDA kernel
    uses one block per layer.
    """
    t = _check_threshold("topk_row_mask_batched", threshold)
    _check_scores_list(scores)
    scores = [s.detach() for s in scores]
    if len(scores) == 0:
        return []
    if _use_native("topk_row_mask_batched", scores[0]):
        return list(torch.ops.cltk.topk_row_mask_batched(scores, t))
    return [topk_row_mask_ref(s, t) for s in scores]


# ----------------------------------------------------------------------------------------------------------------
# fake (meta) kernels for torch.compile / opcheck; no autograd: the ops are not differentiable
# ----------------------------------------------------------------------------------------------------------------
if _NATIVE:

    @torch.library.register_fake("cltk::row_l1_accumulate_")
    def _row_l1_accumulate_fake(acc: Tensor, y: Tensor) -> None:
        torch._check(y.dim() >= 1)
        torch._check(y.shape[-1] == acc.shape[0])
        return None

    @torch.library.register_fake("cltk::topk_row_mask")
    def _topk_row_mask_fake(scores: Tensor, threshold: float) -> Tensor:
        return torch.empty_like(scores, dtype=torch.bool)

    @torch.library.register_fake("cltk::topk_row_mask_batched")
    def _topk_row_mask_batched_fake(scores: List[Tensor], threshold: float) -> List[Tensor]:
        return [torch.empty_like(s, dtype=torch.bool) for s in scores]
