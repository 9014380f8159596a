"""Frozen nn.Linear / nn.Conv2d weights with per-task bicubic modulation (cltk.ops.bicubic_modulate).

For task t the layer uses ``W_t = W * up(M_t)`` with ``M_t = 1 + D_t`` a low-resolution grid and ``up`` the bicubic
upsampling to the 2-D view of W; a conv weight (out, in, kh, kw), depthwise ones included, is modulated as
(out, in*kh*kw) (the flattened fan-in; see cltk.ops.bicubic). W never changes; only the D_t train.

The grid is stored as the offset D_t (zeros at init) and applied as ``W + W * up(D_t)``: mathematically the same
as ``W * up(1 + D_t)``, but exactly W at init, where ``W * up(ones)`` would be off by rounding (the float32 cubic
weights sum to 1 only within ~1e-6).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.ops.bicubic import as_2d_weight, bicubic_modulate


def mod_shape_for(weight: Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    """The grid shape used for ``weight``: ``grid`` capped at the weight's 2-D (out, fan-in) size."""
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"mod_shape_for: grid must be two positive ints (m1, m2), got {tuple(grid)}")
    out, fan_in = as_2d_weight(weight).shape
    return (min(grid[0], out), min(grid[1], fan_in))


class _Modulated(nn.Module):
    def __init__(self, weight: Tensor, bias: Optional[Tensor], grid: tuple[int, int], num_tasks: int,
                 align_corners: bool) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"{type(self).__name__}: num_tasks must be >= 1, got {num_tasks}")
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        shape = mod_shape_for(self.weight, grid)
        self.deltas = nn.ParameterList(
            [nn.Parameter(torch.zeros(shape, dtype=weight.dtype, device=weight.device)) for _ in range(num_tasks)]
        )
        self.align_corners = bool(align_corners)
        self.task = 0

    def mod(self, task: Optional[int] = None) -> Tensor:
        """The grid M_t = 1 + D_t of ``task`` (default: the current task)."""
        return 1 + self.deltas[self.task if task is None else task]

    def effective_weight(self) -> Tensor:
        if not 0 <= self.task < len(self.deltas):
            raise IndexError(f"{type(self).__name__}: task must be in [0, {len(self.deltas)}), got {self.task}")
        return self.weight + bicubic_modulate(self.weight, self.deltas[self.task], self.align_corners)


class ModulatedLinear(_Modulated):
    """A frozen ``nn.Linear`` with one trainable modulation grid per task; ``.task`` selects the grid."""

    def __init__(self, linear: nn.Linear, grid: tuple[int, int] = (4, 4), num_tasks: int = 1,
                 align_corners: bool = False) -> None:
        super().__init__(linear.weight, linear.bias, grid, num_tasks, align_corners)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class ModulatedConv2d(_Modulated):
    """A frozen ``nn.Conv2d`` (grouped and depthwise included) with one trainable modulation grid per task."""

    def __init__(self, conv: nn.Conv2d, grid: tuple[int, int] = (4, 4), num_tasks: int = 1,
                 align_corners: bool = False) -> None:
        if conv.padding_mode != "zeros":
            raise ValueError(f"ModulatedConv2d: padding_mode must be 'zeros', got {conv.padding_mode!r}")
        super().__init__(conv.weight, conv.bias, grid, num_tasks, align_corners)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
