"""Fused row-masked AdamW step over lists of tensors: ``masked_adamw_``.

The step is torch.optim.AdamW's (decoupled weight decay, bias-corrected moments) with a per-row mask folded
in. A row whose mask is False takes a zero gradient: its momentum and weight decay still act, exactly as
"zero the masked gradient rows, then AdamW", but the kernel never reads those gradient rows, which is why the
masked step moves fewer bytes than an unmasked fused AdamW. With ``freeze_masked_rows=True`` masked rows are
skipped entirely (parameter and both moments unchanged).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import torch
from torch import Tensor

from cltk import _ext

__all__ = ["masked_adamw_", "masked_adamw_ref"]

_OP = "masked_adamw_"


def _row_view(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def masked_adamw_ref(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    row_masks: Sequence[Optional[Tensor]],
    steps: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    freeze_masked_rows: bool = False,
) -> None:
    """Plain-PyTorch twin of :func:`masked_adamw_`: "zero the masked gradient rows, then AdamW" written with
    the same tensor ops, in the same order, as ``torch.optim.AdamW``'s single-tensor step."""
    _check_args(params, grads, exp_avgs, exp_avg_sqs, row_masks, steps, lr, beta1, beta2, eps, weight_decay)
    for p, g, m, v, mask, step in zip(params, grads, exp_avgs, exp_avg_sqs, row_masks, steps, strict=True):
        step_val = float(step)
        bias_correction1 = 1 - beta1**step_val
        bias_correction2_sqrt = (1 - beta2**step_val) ** 0.5
        step_size = lr / bias_correction1
        if mask is not None:
            keep = _row_view(mask, g)
            # where, not mul: a masked row reads as 0 even when its gradient holds inf or nan.
            g = torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))
        if freeze_masked_rows and mask is not None:
            p_new, m_new, v_new = p.clone(), m.clone(), v.clone()
        else:
            p_new, m_new, v_new = p, m, v
        if weight_decay != 0:
            p_new.mul_(1 - lr * weight_decay)
        m_new.lerp_(g, 1 - beta1)
        v_new.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v_new.sqrt() / bias_correction2_sqrt).add_(eps)
        p_new.addcdiv_(m_new, denom, value=-step_size)
        if p_new is not p:
            keep = _row_view(mask, p)
            p.copy_(torch.where(keep, p_new, p))
            m.copy_(torch.where(keep, m_new, m))
            v.copy_(torch.where(keep, v_new, v))


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_args(params, grads, exp_avgs, exp_avg_sqs, row_masks, steps, lr, beta1, beta2, eps, weight_decay) -> None:
    op = "masked_adamw_"
    n = len(params)
    lens = {"grads": len(grads), "exp_avgs": len(exp_avgs), "exp_avg_sqs": len(exp_avg_sqs),
            "row_masks": len(row_masks), "steps": len(steps)}
    for name, k in lens.items():
        if k != n:
            raise ValueError(f"{op}: {name} must have one entry per param ({n}), got {k}")
    for name, val, ok, want in (("lr", lr, lr >= 0, ">= 0"), ("beta1", beta1, 0 <= beta1 < 1, "in [0, 1)"),
                                ("beta2", beta2, 0 <= beta2 < 1, "in [0, 1)"), ("eps", eps, eps >= 0, ">= 0"),
                                ("weight_decay", weight_decay, weight_decay >= 0, ">= 0")):
        if not ok:
            raise ValueError(f"{op}: {name} must be {want}, got {val}")
    for i, (p, g, m, v, mask) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, row_masks)):
        if p.dtype not in _DTYPES:
            raise ValueError(f"{op}: params[{i}] must be float32, float64, float16 or bfloat16, got {p.dtype}")
        if not (g.dtype == m.dtype == v.dtype == p.dtype):
            raise ValueError(f"{op}: grads[{i}], exp_avgs[{i}] and exp_avg_sqs[{i}] must have the dtype of "
                             f"params[{i}] ({p.dtype}), got {g.dtype}, {m.dtype}, {v.dtype}")
        if not (g.shape == m.shape == v.shape == p.shape):
            raise ValueError(f"{op}: grads[{i}], exp_avgs[{i}] and exp_avg_sqs[{i}] must have the shape of "
                             f"params[{i}] {list(p.shape)}, got {list(g.shape)}, {list(m.shape)}, {list(v.shape)}")
        if mask is not None:
            if p.dim() == 0:
                raise ValueError(f"{op}: row_masks[{i}] must be None for the 0-D params[{i}]")
            if mask.dtype != torch.bool:
                raise ValueError(f"{op}: row_masks[{i}] must have dtype bool, got {mask.dtype}")
            if mask.dim() != 1 or mask.shape[0] != p.shape[0]:
                raise ValueError(f"{op}: row_masks[{i}] must be 1-D of size params[{i}].size(0) = {p.shape[0]}, "
                                 f"got shape {list(mask.shape)}")


def masked_adamw_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    row_masks: Sequence[Optional[Tensor]],
    steps: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    freeze_masked_rows: bool = False,
) -> None:
    """One AdamW step with row masks, in place on ``params``, ``exp_avgs`` and ``exp_avg_sqs``.

    Args:
        params: tensors of any shape ``[rows, ...]``, float32/float64/float16/bfloat16; updated in place.
        grads: same shapes and dtypes as ``params`` (may be non-contiguous); read only.
        exp_avgs, exp_avg_sqs: AdamW's first and second moments, same shapes and dtypes; updated in place.
        row_masks: per tensor ``None`` (every row active) or a bool ``[rows]`` where True marks a row that
            receives its gradient. A 1-D tensor (a bias) has one row per element.
        steps: per tensor a 1-element tensor holding the step count *after* incrementing, as
            ``torch.optim.AdamW``'s ``state["step"]``; read only (the caller increments it).
        lr, beta1, beta2, eps, weight_decay: as in ``torch.optim.AdamW``.
        freeze_masked_rows: False (default) gives masked rows a zero gradient; True leaves them untouched.

    Raises ValueError naming the argument for mismatched lengths, shapes, dtypes or masks.
    Tensors are grouped by (device, dtype) and each group is one native call; a param or moment that is not
    contiguous is stepped on a contiguous copy and copied back. Devices without a native kernel use
    :func:`masked_adamw_ref`.
    """
    _check_args(params, grads, exp_avgs, exp_avg_sqs, row_masks, steps, lr, beta1, beta2, eps, weight_decay)
    kw = dict(lr=float(lr), beta1=float(beta1), beta2=float(beta2), eps=float(eps),
              weight_decay=float(weight_decay), freeze_masked_rows=bool(freeze_masked_rows))
    groups: dict = defaultdict(list)
    fallback: list[int] = []
    native: dict = {}  # device type -> has a kernel (one dispatcher query per device type, not per tensor)
    # The kernel updates contiguous tensors in place; a non-contiguous param or moment is stepped on a contiguous
    # copy that is copied back, so that the result never depends on the layout (the reference computes bf16 / fp16
    # in that dtype, the kernel in fp32: they can differ where fp16 underflows, e.g. g*g with eps=0).
    work = {}  # i -> (param, exp_avg, exp_avg_sq) the kernel updates
    for i, p in enumerate(params):
        dev = p.device.type
        if dev not in native:
            native[dev] = _ext.use_native(_OP, p)
        if native[dev]:
            groups[(p.device, p.dtype)].append(i)
            work[i] = tuple(t if t.is_contiguous() else t.contiguous() for t in (p, exp_avgs[i], exp_avg_sqs[i]))
        else:
            fallback.append(i)
    for idx in groups.values():
        torch.ops.cltk.masked_adamw_(
            [work[i][0] for i in idx], [grads[i] for i in idx], [work[i][1] for i in idx],
            [work[i][2] for i in idx], [row_masks[i] for i in idx], [steps[i] for i in idx], **kw)
    for i, copies in work.items():
        for dst, src in zip((params[i], exp_avgs[i], exp_avg_sqs[i]), copies):
            if src is not dst:
                with torch.no_grad():
                    dst.copy_(src)
    if fallback:
        masked_adamw_ref(
            [params[i] for i in fallback], [grads[i] for i in fallback], [exp_avgs[i] for i in fallback],
            [exp_avg_sqs[i] for i in fallback], [row_masks[i] for i in fallback], [steps[i] for i in fallback],
            **kw)


if _ext.available():

    @torch.library.register_fake("cltk::masked_adamw_")
    def _masked_adamw_fake(params, grads, exp_avgs, exp_avg_sqs, row_masks, steps, *, lr, beta1, beta2, eps,
                           weight_decay, freeze_masked_rows=False):
        return None
