"""The continual pre-training methods: one named entry each, with a dataclass config validated with ValueError.

=============  =====================================================================================================
``vanilla``    AdamW on the current domain's blocks.
``migu``       :class:`cltk.optim.MIGU` wrapping AdamW, threshold T = 0.7 (the top 30% of each layer's output rows by
               L1 magnitude are updated; MIGU, Du et al. 2024, arXiv 2406.17245, uses T = 0.7 in its CPT runs).
``migu-adamw`` :class:`cltk.optim.MIGUAdamW` (the same mask folded into one fused AdamW step), T = 0.7.
``er``         AdamW, each batch of the current domain is concatenated with ``replay_batch_size`` blocks drawn from a
               reservoir buffer of token blocks (:class:`cltk.methods._replay_buffer.ReservoirBuffer`), which starts
               as a reservoir sample of the first domain's training blocks and sees every trained batch.
``er-migu``    ER with the MIGU-wrapped AdamW.
``joint``      AdamW on the union of the training blocks of every domain seen so far (upper bound).
=============  =====================================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
from torch import nn

from cltk._config import ConfigChecks
from cltk.optim import MIGU, MIGUAdamW

__all__ = ["CPTConfig", "MIGUCPTConfig", "ERCPTConfig", "ERMIGUCPTConfig", "CPTMethod", "CPT_METHODS",
           "cpt_method", "make_config"]


@dataclass
class CPTConfig(ConfigChecks):
    """AdamW hyper-parameters shared by every method (lr constant during continual pre-training)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95

    def validate(self) -> "CPTConfig":
        self.check_range("lr", 0.0, 1.0, lo_open=True)
        self.check_range("weight_decay", 0.0, 1.0)
        self.check_range("beta1", 0.0, 1.0, hi_open=True)
        self.check_range("beta2", 0.0, 1.0, hi_open=True)
        return self


@dataclass
class MIGUCPTConfig(CPTConfig):
    """``threshold``: MIGU's quantile level T in [0, 1) (0.7: the top 30% rows of every linear layer update)."""

    threshold: float = 0.7

    def validate(self) -> "MIGUCPTConfig":
        super().validate()
        self.check_range("threshold", 0.0, 1.0, hi_open=True)
        return self


@dataclass
class ERCPTConfig(CPTConfig):
    """``buffer_size``: token blocks kept; ``replay_batch_size``: blocks replayed per step (0: the batch size);
    ``seed``: offset of the buffer generator's seed (the run seed is added)."""

    buffer_size: int = 256
    replay_batch_size: int = 0
    seed: int = 0

    def validate(self) -> "ERCPTConfig":
        super().validate()
        self.check_int("buffer_size", 1)
        self.check_int("replay_batch_size", 0)
        self.check_int("seed", 0)
        return self


@dataclass
class ERMIGUCPTConfig(ERCPTConfig):
    threshold: float = 0.7

    def validate(self) -> "ERMIGUCPTConfig":
        super().validate()
        self.check_range("threshold", 0.0, 1.0, hi_open=True)
        return self


def _adamw(model: nn.Module, c: CPTConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2), weight_decay=c.weight_decay)


def _migu(model: nn.Module, c: Any) -> torch.optim.Optimizer:
    return MIGU(_adamw(model, c), model, threshold=c.threshold)


def _migu_adamw(model: nn.Module, c: Any) -> torch.optim.Optimizer:
    return MIGUAdamW(model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2), weight_decay=c.weight_decay,
                     model=model, threshold=c.threshold)


@dataclass(frozen=True)
class CPTMethod:
    name: str
    description: str
    config_cls: type
    make_optimizer: Callable[[nn.Module, Any], torch.optim.Optimizer]
    replay: bool = False
    joint: bool = False


CPT_METHODS: dict[str, CPTMethod] = {m.name: m for m in (
    CPTMethod("vanilla", "AdamW on the current domain", CPTConfig, _adamw),
    CPTMethod("migu", "cltk.optim.MIGU wrapping AdamW, T=0.7", MIGUCPTConfig, _migu),
    CPTMethod("migu-adamw", "cltk.optim.MIGUAdamW (fused masked AdamW), T=0.7", MIGUCPTConfig, _migu_adamw),
    CPTMethod("er", "AdamW + reservoir replay of token blocks mixed into each batch", ERCPTConfig, _adamw,
              replay=True),
    CPTMethod("er-migu", "ER with the MIGU-wrapped AdamW, T=0.7", ERMIGUCPTConfig, _migu, replay=True),
    CPTMethod("joint", "AdamW on the union of the domains seen so far (upper bound)", CPTConfig, _adamw,
              joint=True),
)}


def cpt_method(name: str) -> CPTMethod:
    if name not in CPT_METHODS:
        raise ValueError(f"unknown CPT method {name!r}; available: {', '.join(CPT_METHODS)}")
    return CPT_METHODS[name]


def make_config(name: str, **overrides: Any) -> CPTConfig:
    """The validated config of method ``name`` with ``overrides`` (unknown fields raise ValueError)."""
    cls = cpt_method(name).config_cls
    known = {f.name for f in fields(cls)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"{cls.__name__} has no field {', '.join(bad)}; fields: {', '.join(sorted(known))}")
    return cls(**overrides).validate()
