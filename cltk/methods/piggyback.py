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
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.methods._task_model import bn_affine_parameters, check_task_model, recalibrate_bn, task_optimizer
from cltk.methods.base import Method, MethodConfig, register
from cltk.nn.backbones import MultiHeadNet, TaskBatchNorm2d, convert_layers
from cltk.streams.base import Stream, Task

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
class PiggybackConfig(MethodConfig):
    """``lr``: the masks' learning rate; ``head_lr``: the heads'; ``mask_init`` > ``threshold`` >= 0 (an initial
    mask of all ones); ``exclude_first``, ``exclude_depthwise``, ``bn_stats``, ``bn_affine``, ``bn_momentum``,
    ``bn_recalibrate``: as in AWM."""

    lr: float = 1e-4
    head_lr: Optional[float] = 1e-4
    mask_init: float = 1e-2
    threshold: float = 5e-3
    exclude_first: bool = False
    exclude_depthwise: bool = False
    bn_stats: str = "frozen"
    bn_affine: str = "frozen"
    bn_momentum: Optional[float] = None
    bn_recalibrate: int = 16

    def validate(self) -> None:
        super().validate()
        if self.head_lr is not None:
            self.check_positive("head_lr")
        self.check_nonnegative("threshold")
        if self._value("mask_init") <= self._value("threshold"):
            raise ValueError(f"{type(self).__name__}.mask_init must be > threshold ({self.threshold!r}) so that the "
                             f"masks start as all ones, got {self.mask_init!r}")
        if self.bn_stats not in ("task", "frozen"):
            raise ValueError(f"{type(self).__name__}.bn_stats must be 'task' or 'frozen', got {self.bn_stats!r}")
        if self.bn_affine not in ("frozen", "task"):
            raise ValueError(f"{type(self).__name__}.bn_affine must be 'frozen' or 'task', got {self.bn_affine!r}")
        if self.bn_momentum is not None:
            self.check_range("bn_momentum", 0.0, 1.0, lo_open=True)
        self.check_int("bn_recalibrate", 0)
        for name in ("exclude_first", "exclude_depthwise"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{type(self).__name__}.{name} must be a bool, got {getattr(self, name)!r}")


@register
class Piggyback(Method):
    name = "piggyback"
    description = "frozen backbone, per-task binary weight masks (straight-through) and heads"
    paper = "Mallya, Davis & Lazebnik, ECCV 2018 (arXiv 1801.06519)"
    scenarios = ("task",)
    Config = PiggybackConfig

    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        model = super().setup(check_task_model(self, model), stream)
        c, n = self.config, len(stream.tasks)
        self.layer_names = convert_layers(
            model.backbone,
            make_conv=lambda m: MaskedConv2d(m, n, c.mask_init, c.threshold),
            make_linear=lambda m: MaskedLinear(m, n, c.mask_init, c.threshold),
            make_bn=lambda m: TaskBatchNorm2d(m, n, affine_per_task=c.bn_affine == "task",
                                              frozen_stats=c.bn_stats == "frozen", momentum=c.bn_momentum),
            exclude_first=c.exclude_first, exclude_depthwise=c.exclude_depthwise)
        self.layers = [model.backbone.get_submodule(name) for name in self.layer_names]
        return model

    def make_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        task = self.task.index if self.task is not None else 0
        model = self.model
        assert isinstance(model, MultiHeadNet)
        own = [m.masks[task] for m in self.layers] + bn_affine_parameters(model.backbone, task)
        return task_optimizer(self.config, params, own, list(model.heads[task].parameters()), self.config.head_lr)

    def added_parameters(self, task: int) -> int:
        """Task ``task``'s real-valued masks (one entry per masked weight; stored binarised they need one bit
        each, :meth:`mask_bits`), head and per-task BatchNorm affines."""
        model = self.model
        assert isinstance(model, MultiHeadNet)
        own = ([m.masks[task] for m in self.layers] + bn_affine_parameters(model.backbone, task)
               + list(model.heads[task].parameters()))
        return sum(p.numel() for p in own)

    def mask_bits(self, task: int) -> int:
        """Bits of task ``task``'s masks stored binarised (one per masked weight)."""
        return sum(m.masks[task].numel() for m in self.layers)

    def forward(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return model(x, t)

    def after_task(self, task: Task) -> None:
        if self.config.bn_stats == "task":   # store statistics that match the task's final weights
            model = self.model
            assert isinstance(model, MultiHeadNet)
            recalibrate_bn(model, task.index, task.train.x, self.config.bn_recalibrate)

    @torch.no_grad()
    def mask_density(self, task: int) -> float:
        """Fraction of task ``task``'s mask entries that are 1 (over every masked layer)."""
        ones = sum(int((m.masks[task] > m.threshold).sum()) for m in self.layers)
        return ones / max(1, sum(m.weight.numel() for m in self.layers))

    def state_dict(self) -> dict:
        return {"task": None if self.task is None else self.task.index, "layers": list(self.layer_names)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["layers"]) != list(self.layer_names):
            raise ValueError("Piggyback.load_state_dict: the saved masked layers differ from this model's "
                             f"({len(state['layers'])} saved, {len(self.layer_names)} here)")
        if state["task"] is not None:
            self.task = self._need_stream().tasks[state["task"]]
