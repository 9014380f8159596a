"""Averaged gradient episodic memory, A-GEM (Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM").

After the backward pass of the current minibatch, a reference gradient ``g_ref`` is computed on a minibatch drawn
from the memory of earlier tasks. If the update would increase the memory loss (``g . g_ref < 0``), the gradient
is projected onto the half-space where it does not::

    g <- g - (g . g_ref) / (g_ref . g_ref) * g_ref          so that afterwards g . g_ref = 0

The memory is a reservoir over the examples of every step (as in Buzzega et al.'s Mammoth A-GEM with a reservoir
buffer); the reference draw uses only examples of tasks before the current one, matching the paper's memory of
previous tasks. The reference loss is the same masked cross-entropy as the training loss.

Under ``torch.distributed`` the memory is global, as ER's: every rank adds the gathered global batch, draws the same
reference minibatch (sized from the global batch) and computes the reference gradient on its share of it, averaged
over the ranks; so every rank projects the same averaged gradient onto the same ``g_ref`` and the ranks stay
identical (a memory per rank would give each rank its own projection, and the ranks' weights would drift apart).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from cltk import distributed as dist
from cltk.methods._replay_buffer import ReplayConfig, ReservoirReplay
from cltk.methods.base import Batch, register


@dataclass
class AGEMConfig(ReplayConfig):
    """A-GEM. ``replay_batch_size=256`` is the reference-gradient batch of the authors' MNIST scripts
    (facebookresearch/agem, ``EPS_MEM_BATCH_SIZE = 256``); Mammoth's best seq-mnist setting uses 128 with a
    200-example buffer and SGD lr 0.1. The paper stores a fixed number of examples per task (a ring buffer per
    class); here the memory is the shared reservoir of ``buffer_size`` examples."""

    replay_batch_size: int = 256


def project(g: Tensor, g_ref: Tensor) -> Optional[Tensor]:
    """``g - (g . g_ref) / (g_ref . g_ref) * g_ref`` if ``g . g_ref < 0``, else ``None`` (no change).

    When the memory is fitted, ``g_ref`` can be as small as 1e-20: ``g_ref . g_ref`` is then below the smallest
    normal float and, with denormals flushed to zero (as :func:`cltk.run` trains), exactly 0, and the plain formula
    divides by it. Then ``g_ref`` is first scaled by ``1 / max|g_ref|`` (the projection does not depend on its
    length); otherwise the plain formula is used as it stands."""
    dot = torch.dot(g, g_ref)
    if not dot < 0:
        return None
    ref_sq = torch.dot(g_ref, g_ref)
    if ref_sq < torch.finfo(ref_sq.dtype).tiny:
        u = g_ref / g_ref.abs().max()
        dot, ref_sq, g_ref = torch.dot(g, u), torch.dot(u, u), u
        if not dot < 0:     # g . u underflowed: g is (numerically) orthogonal to the memory gradient
            return None
    return g - (dot / ref_sq) * g_ref


@register
class AGEM(ReservoirReplay):
    name = "agem"
    description = "A-GEM: project the gradient so it does not increase the loss on a memory of earlier tasks"
    paper = "Chaudhry et al. 2019, Efficient Lifelong Learning with A-GEM (ICLR 2019)"
    Config = AGEMConfig

    def __init__(self, config: Optional[AGEMConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self._batch_size = 0

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        self._pending = batch
        self._batch_size = int(batch.y.shape[0]) * dist.world_size()   # the global batch
        return super().loss(model, batch)

    def reference_gradient(self, model: nn.Module, params: list[Tensor]) -> Optional[Tensor]:
        """Flat gradient of the masked loss on a memory minibatch of earlier tasks (``None`` if there is none)."""
        c = self.config
        current = self.task.index if self.task is not None else 0
        mem = self._draw(c.replay_size(self._batch_size), before_task=current)   # this rank's share, then the mean
        if mem is None:
            return None
        mx, my, mt = mem.x, mem.y, mem.t
        dev = params[0].device
        loss = self.task_loss(self.forward(model, mx.to(dev), mt.to(dev)), my.to(dev), mt.to(dev))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        g_ref = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
        return dist.all_reduce_mean(g_ref)

    def after_backward(self, model: nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return
        g_ref = self.reference_gradient(model, params)
        if g_ref is None:
            return
        g = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
        g = project(g, g_ref)
        if g is not None:
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = g[offset:offset + n].view_as(p).clone()
                offset += n
