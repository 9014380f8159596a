"""LoRA (Hu et al. 2021, arXiv 2106.09685): continual fine-tuning of one low-rank adapter per adapted layer.

``setup`` freezes every parameter of the model, wraps the ``nn.Linear`` layers named in ``targets`` with
:class:`cltk.nn.lora.LoRALinear` (rank ``r``, scaling ``alpha / r``, input dropout ``dropout``), and leaves the
module named ``head`` (the classification head, one block of units per task) trainable. The same adapter is then
trained task after task (the sequential-LoRA baseline of the continual-learning literature).

Defaults follow the paper's RoBERTa-base GLUE setting: adapters on the attention query and value projections,
r = 8, alpha = 8, learning rate 5e-4 (Adam here; the paper uses AdamW with warm-up). Its GPT-2 experiments use
alpha = 32 and adapter dropout 0.1. On :class:`cltk.text.BertEncoder` the layer names are ``q``, ``k``, ``v``,
``o`` (attention) and ``ffn_in``, ``ffn_out`` (feed-forward); ``targets=("q", "k", "v", "o", "ffn_in",
"ffn_out")`` adapts all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from torch import nn

from cltk.methods.base import Method, MethodConfig, register
from cltk.nn.lora import LoRALinear, apply_lora, lora_layers
from cltk.streams.base import Stream

__all__ = ["LoRAConfig", "LoRA"]


@dataclass
class LoRAConfig(MethodConfig):
    """``targets``: attribute names of the ``nn.Linear`` layers to adapt (a tuple, or one comma-separated string);
    ``head``: the submodule left trainable (``""``: none)."""

    lr: float = 5e-4
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: Union[tuple, str] = ("q", "v")
    head: str = "head"

    def validate(self) -> None:
        super().validate()
        self.check_int("r", 1)
        self.check_positive("alpha")
        self.check_range("dropout", 0.0, 1.0, hi_open=True)
        if isinstance(self.targets, str):
            self.targets = tuple(s.strip() for s in self.targets.split(",") if s.strip())
        if (not isinstance(self.targets, (tuple, list)) or len(self.targets) == 0
                or not all(isinstance(s, str) and s for s in self.targets)):
            raise ValueError(f"{type(self).__name__}.targets must be a non-empty list of layer names, "
                             f"got {self.targets!r}")
        self.targets = tuple(self.targets)
        if not isinstance(self.head, str):
            raise ValueError(f"{type(self).__name__}.head must be a module name ('' for none), got {self.head!r}")


@register
class LoRA(Method):
    name = "lora"
    description = "LoRA: frozen model, one low-rank adapter per target layer trained across tasks, trainable head"
    paper = "Hu et al. 2021, arXiv 2106.09685"
    Config = LoRAConfig

    n_adapters_at_setup = 1

    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        model = super().setup(model, stream)
        c = self.config
        head = None
        if c.head:
            try:
                head = model.get_submodule(c.head)
            except AttributeError:
                raise ValueError(f"{type(self.config).__name__}.head: the model ({type(model).__name__}) has no "
                                 f"submodule {c.head!r}") from None
        for p in model.parameters():
            p.requires_grad_(False)
        apply_lora(model, c.targets, r=c.r, alpha=c.alpha, dropout=c.dropout,
                                 n_adapters=self.n_adapters_at_setup, exclude=(c.head,) if c.head else ())
        if head is not None:
            for p in head.parameters():
                p.requires_grad_(True)
        return model

    @property
    def lora_modules(self) -> list[LoRALinear]:
        return list(lora_layers(self.model).values()) if self.model is not None else []
