"""MIGU on LoRA adapters: magnitude-based gradient updating (Du et al. 2024, arXiv 2406.17245) of the ``B`` factors.

The model is set up as in :mod:`cltk.methods.lora` (frozen base, one adapter per target layer, trainable head).
MIGU's rule is applied to each adapted layer as a whole:

* magnitude: a forward hook on every :class:`cltk.nn.lora.LoRALinear` accumulates, per output feature j, the L1
  norm of the adapted layer's output ``y = W x + b + (alpha / r) B A x`` over the batch and tokens,
  ``m_j = sum |y_j|`` (forwards without autograd, such as evaluation, are not recorded);
* mask: after the backward pass, rows j with ``m_j < quantile(m, threshold)`` are masked (``threshold = 0.7``
  keeps the top 30%, ties included, exactly as :func:`cltk.ops.topk_row_mask`);
* update: output feature j of the adapter is row j of ``B`` (``delta y_j = (alpha / r) B[j] A x``), so the
  gradient of ``B[j, :]`` is zeroed for every masked j. ``A`` is shared by all output features and is not masked.
  The magnitudes are then reset.

As in :mod:`cltk.methods.migu` the first task is trained unmasked (``mask_first_task=False``) and the head is
not masked. With SGD a masked row does not move; with Adam a masked row can still move by its momentum, as with
the reference implementation's gradient masking.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from cltk.methods.base import register
from cltk.methods.lora import LoRA, LoRAConfig
from cltk.ops.migu import row_l1_accumulate_, topk_row_mask_batched
from cltk.streams.base import Task

__all__ = ["MIGULoRAConfig", "MIGULoRA"]


@dataclass
class MIGULoRAConfig(LoRAConfig):
    threshold: float = 0.7
    mask_first_task: bool = False

    def validate(self) -> None:
        super().validate()
        self.check_range("threshold", 0.0, 1.0, hi_open=True)
        self.check_bool("mask_first_task")


@register
class MIGULoRA(LoRA):
    name = "migu-lora"
    description = "MIGU on LoRA: update only the B rows of the adapted layers' largest output magnitudes"
    paper = "Du et al. 2024, arXiv 2406.17245; Hu et al. 2021, arXiv 2106.09685"
    Config = MIGULoRAConfig

    def __init__(self, config: Optional[MIGULoRAConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.mags: list[Tensor] = []
        self.counts: list[int] = []
        self.last_masks: list[Optional[Tensor]] = []   # per LoRA layer: bool rows updated by the latest step
        self._handles: list = []

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self.close()
        layers = self.lora_modules
        self.mags = [torch.zeros(m.out_features, dtype=torch.float32, device=m.base.weight.device) for m in layers]
        self.counts = [0] * len(layers)
        self._handles = [m.register_forward_hook(self._make_hook(i)) for i, m in enumerate(layers)]

    def after_task(self, task: Task) -> None:
        self.close()

    def _make_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            with torch.no_grad():
                acc = self.mags[i]
                if acc.device != output.device:   # the model was moved after setup
                    acc = self.mags[i] = acc.to(output.device)
                y = output.detach()
                row_l1_accumulate_(acc, y if y.dtype in (torch.float32, torch.bfloat16, torch.float16) else y.float())
                self.counts[i] += 1
        return hook

    @property
    def masking(self) -> bool:
        return self.config.mask_first_task or (self.task is not None and self.task.index > 0)

    def after_backward(self, model: nn.Module) -> None:
        layers = self.lora_modules
        self.last_masks = [None] * len(layers)
        if self.masking:
            recorded = [i for i, n in enumerate(self.counts) if n > 0]
            if recorded:
                masks = topk_row_mask_batched([self.mags[i] for i in recorded], self.config.threshold)
                for i, keep in zip(recorded, masks):
                    self.last_masks[i] = keep
                    for b in layers[i].lora_B:
                        if b.grad is not None:
                            b.grad.masked_fill_(~keep.to(b.device)[:, None], 0.0)
        for m in self.mags:
            m.zero_()
        self.counts = [0] * len(self.counts)

    def close(self) -> None:
        """Remove the magnitude hooks (installed for each task by ``before_task``, removed by ``after_task``)."""
        for h in self._handles:
            h.remove()
        self._handles = []
