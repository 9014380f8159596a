"""O-LoRA (Wang et al. 2023, arXiv 2310.14152): a new LoRA adapter per task, kept orthogonal to the earlier ones.

Before task t every adapted layer gets a fresh adapter ``(A_t, B_t)`` (``B_t = 0``, so the model's function is
unchanged) and the adapters of tasks 0..t-1 are frozen; the forward pass sums all of them. The loss adds

    lambda_orth * sum over layers, sum over i < t of  sum_jk |(A_t A_i^T)_jk|

which pushes the new adapter's input subspace (the rows of ``A_t``) to be orthogonal to the earlier tasks'; it is
0 on the first task. ``lambda_l2 * sum ||(A_t, B_t)||^2`` is the paper's optional L2 term on the new adapter.

Defaults follow the paper's released scripts: lambda_orth = 0.5, lambda_l2 = 0, r = 8 on the query and value
projections, learning rate 1e-3. The paper trains T5 without task heads; here the module named ``head`` (one
block of units per task) stays trainable, as in the other methods.

Checkpoints: ``state_dict()`` holds the number of adapters. To resume, call ``setup`` on a fresh model, then
``load_state_dict`` (which recreates the adapters), then load the model's own ``state_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from cltk.methods.base import register
from cltk.methods.lora import LoRA, LoRAConfig
from cltk.streams.base import Task

__all__ = ["OLoRAConfig", "OLoRA"]


@dataclass
class OLoRAConfig(LoRAConfig):
    lr: float = 1e-3
    lambda_orth: float = 0.5
    lambda_l2: float = 0.0

    def validate(self) -> None:
        super().validate()
        self.check_nonnegative("lambda_orth")
        self.check_nonnegative("lambda_l2")


@register
class OLoRA(LoRA):
    name = "o-lora"
    description = "O-LoRA: a new LoRA adapter per task, earlier ones frozen, orthogonal to them by an L1 penalty"
    paper = "Wang et al. 2023, arXiv 2310.14152"
    Config = OLoRAConfig

    n_adapters_at_setup = 0

    def _ensure_adapters(self, n: int) -> None:
        for layer in self.lora_modules:
            while layer.n_adapters < n:
                layer.add_adapter()
            layer.set_trainable([n - 1])

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._ensure_adapters(task.index + 1)

    def orthogonality_loss(self) -> Tensor:
        """``sum_layers sum_{i<t} |A_t A_i^T|.sum()`` for the newest adapter t (0 with a single adapter)."""
        total: Optional[Tensor] = None
        for layer in self.lora_modules:
            if layer.n_adapters < 2:
                continue
            a_new = layer.lora_A[layer.n_adapters - 1]
            a_old = torch.cat([layer.lora_A[i] for i in range(layer.n_adapters - 1)], 0).detach()
            term = (a_new @ a_old.T).abs().sum()
            total = term if total is None else total + term
        if total is None:
            ref = next(iter(self.model.parameters()))
            return torch.zeros((), device=ref.device, dtype=ref.dtype)
        return total

    def penalty(self, model: nn.Module) -> Optional[Tensor]:
        c = self.config
        pen: Optional[Tensor] = None
        if c.lambda_orth > 0 and self.task is not None and self.task.index > 0:
            pen = c.lambda_orth * self.orthogonality_loss()
        if c.lambda_l2 > 0:
            l2 = sum((layer.lora_A[-1].square().sum() + layer.lora_B[-1].square().sum())
                     for layer in self.lora_modules)
            pen = c.lambda_l2 * l2 if pen is None else pen + c.lambda_l2 * l2
        return pen

    def state_dict(self) -> dict:
        layers = self.lora_modules
        return {"n_adapters": layers[0].n_adapters if layers else 0}

    def load_state_dict(self, state: dict) -> None:
        if self.model is None:
            raise ValueError("o-lora: call setup(model, stream) before load_state_dict")
        n = int(state["n_adapters"])
        if any(layer.n_adapters > n for layer in self.lora_modules):
            raise ValueError(f"o-lora: the model already has more than the saved {n} adapters")
        if n > 0:
            self._ensure_adapters(n)
