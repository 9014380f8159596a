"""Piggyback (Mallya, Davis & Lazebnik, ECCV 2018): a frozen pretrained backbone and, per task, a binary mask on
every conv / linear weight, ``W_t = W * (m_t > threshold)``, learned through a real-valued mask m_t with the
straight-through estimator (the gradient of the thresholding is taken as the identity).

Defaults follow the authors' code (arunmallya/piggyback, ``scripts/run_piggyback_training.sh``): masks initialised to
1e-2 with threshold 5e-3 (so every mask starts all ones: the backbone itself), Adam for the masks with learning rate
1e-4, classifier learning rate 1e-4, BatchNorm kept as pretrained (``train_bn`` off). Their step decay (x0.1 after
15 of 30 epochs) is not reproduced: the cltk loop has no schedules. Only task t's masks and head
train on task t, so earlier tasks are untouched (task-IL). ``exclude_first`` / ``exclude_depthwise`` leave the stem /
depthwise convs unmasked. BatchNorm exactly as in AWM (:mod:`cltk.methods.awm`): ``bn_stats="frozen"`` (default,
the pretrained statistics) or ``"task"`` (per-task statistics, recalibrated over ``bn_recalibrate`` minibatches at
the end of each task); ``bn_affine="frozen"`` (default) or ``"task"``; ``bn_momentum``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.methods._task_model import FrozenBackboneConfig, FrozenBackboneMethod
from cltk.methods.base import register

__all__ = ["Piggyback", "PiggybackConfig", "MaskedConv2d", "MaskedLinear", "binarize_ste"]


def binarize_ste(mask: Tensor, threshold: float) -> Tensor:
    """``(mask > threshold)`` as 0/1 in mask's dtype, with gradient 1 w.r.t. ``mask`` (straight-through).
    The value is exactly binary: ``m - m.detach()`` is exactly 0."""
    return (mask > threshold).to(mask.dtype) + (mask - mask.detach())


class _Masked(nn.Module):
    def __init__(self, weight: Tensor, bias: Optional[Tensor], num_tasks: int, mask_init: float,
                 threshold: float) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"{type(self).__name__}: num_tasks must be >= 1, got {num_tasks}")
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.masks = nn.ParameterList([nn.Parameter(torch.full_like(self.weight, mask_init))
                                       for _ in range(num_tasks)])
        self.threshold = float(threshold)
        self.task = 0

    def binary_mask(self, task: Optional[int] = None) -> Tensor:
        """Task ``task``'s (default: the current task's) binary mask, 0/1 [weight's shape], differentiable (STE)."""
        t = self.task if task is None else task
        if not 0 <= t < len(self.masks):
            raise IndexError(f"{type(self).__name__}: task must be in [0, {len(self.masks)}), got {t}")
        return binarize_ste(self.masks[t], self.threshold)

    def effective_weight(self) -> Tensor:
        return self.weight * self.binary_mask()


class MaskedConv2d(_Masked):
    """A frozen ``nn.Conv2d`` (grouped / depthwise included) with one real-valued, binarised mask per task."""

    def __init__(self, conv: nn.Conv2d, num_tasks: int = 1, mask_init: float = 1e-2, threshold: float = 5e-3) -> None:
        if conv.padding_mode != "zeros":
            raise ValueError(f"MaskedConv2d: padding_mode must be 'zeros', got {conv.padding_mode!r}")
        super().__init__(conv.weight, conv.bias, num_tasks, mask_init, threshold)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaskedLinear(_Masked):
    """A frozen ``nn.Linear`` with one real-valued, binarised mask per task."""

    def __init__(self, linear: nn.Linear, num_tasks: int = 1, mask_init: float = 1e-2, threshold: float = 5e-3) -> None:
        super().__init__(linear.weight, linear.bias, num_tasks, mask_init, threshold)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


@dataclass
class PiggybackConfig(FrozenBackboneConfig):
    """``lr``: the masks' learning rate; ``head_lr``: the heads'; ``mask_init`` > ``threshold`` >= 0 (an initial
    mask of all ones); ``exclude_first``, ``exclude_depthwise``, ``bn_stats``, ``bn_affine``, ``bn_momentum``,
    ``bn_recalibrate``: as in AWM (:class:`cltk.methods._task_model.FrozenBackboneConfig`)."""

    lr: float = 1e-4
    head_lr: Optional[float] = 1e-4
    mask_init: float = 1e-2
    threshold: float = 5e-3

    def validate(self) -> None:
        super().validate()
        self.check_nonnegative("threshold")
        if self._value("mask_init") <= self._value("threshold"):
            raise ValueError(f"{type(self).__name__}.mask_init must be > threshold ({self.threshold!r}) so that the "
                             f"masks start as all ones, got {self.mask_init!r}")


@register
class Piggyback(FrozenBackboneMethod):
    name = "piggyback"
    description = "frozen backbone, per-task binary weight masks (straight-through) and heads"
    paper = "Mallya, Davis & Lazebnik, ECCV 2018 (arXiv 1801.06519)"
    Config = PiggybackConfig
    layer_kind = "masked"

    def layer_factories(self, num_tasks: int):
        c = self.config
        return (lambda m: MaskedConv2d(m, num_tasks, c.mask_init, c.threshold),
                lambda m: MaskedLinear(m, num_tasks, c.mask_init, c.threshold))

    def layer_parameters(self, task: int) -> list[Tensor]:
        """Task ``task``'s real-valued masks (one entry per masked weight; stored binarised they need one bit each,
        :meth:`mask_bits`)."""
        return [m.masks[task] for m in self.layers]

    def mask_bits(self, task: int) -> int:
        """Bits of task ``task``'s masks stored binarised (one per masked weight)."""
        return sum(p.numel() for p in self.layer_parameters(task))

    @torch.no_grad()
    def mask_density(self, task: int) -> float:
        """Fraction of task ``task``'s mask entries that are 1 (over every masked layer)."""
        ones = sum(int((m.masks[task] > m.threshold).sum()) for m in self.layers)
        return ones / max(1, sum(m.weight.numel() for m in self.layers))
