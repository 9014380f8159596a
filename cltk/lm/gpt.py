"""A small GPT-style decoder-only language model for the continual pre-training benchmark.

Token + learned position embeddings, ``n_layer`` pre-LN blocks (LayerNorm -> causal self-attention -> residual,
LayerNorm -> GELU MLP -> residual), a final LayerNorm and a linear LM head. Attention uses
``F.scaled_dot_product_attention(is_causal=True)``. Every projection (q/k/v fused, attention output, the two MLP
layers and the head) is an ``nn.Linear``, so :class:`cltk.optim.MIGU` hooks attach to all of them.

The head is untied by default (``tie_head=False``): the head is then an ordinary ``nn.Linear`` whose rows MIGU
masks like any other layer's, independently of the input embedding (which is not an ``nn.Linear`` and is never
masked). With ``tie_head=True`` the head's weight is the embedding matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPTConfig", "GPT"]


@dataclass
class GPTConfig:
    """``vocab_size`` tokens, contexts of at most ``block_size`` tokens, ``n_layer`` blocks of width ``d_model``
    with ``n_head`` heads and an MLP of ``mlp_ratio * d_model``; ``dropout`` on attention and residual paths."""

    vocab_size: int = 12288
    block_size: int = 64
    n_layer: int = 6
    n_head: int = 4
    d_model: int = 256
    mlp_ratio: int = 4
    dropout: float = 0.0
    tie_head: bool = False

    def validate(self) -> "GPTConfig":
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "mlp_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GPTConfig.{name} must be an integer >= 1, got {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        if not isinstance(self.tie_head, bool):
            raise ValueError(f"GPTConfig.tie_head must be a bool, got {self.tie_head!r}")
        return self

    def num_parameters(self) -> int:
        """Parameter count of ``GPT(self)`` without building it."""
        d, h = self.d_model, self.mlp_ratio * self.d_model
        block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
        head = 0 if self.tie_head else d * self.vocab_size
        return self.vocab_size * d + self.block_size * d + self.n_layer * block + 2 * d + head


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.dropout = c.dropout

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d_model)
        self.attn = CausalSelfAttention(c)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.fc = nn.Linear(c.d_model, c.mlp_ratio * c.d_model)
        self.out = nn.Linear(c.mlp_ratio * c.d_model, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """``GPT(config)(ids)`` -> logits ``[B, T, vocab_size]`` for int64 ``ids`` ``[B, T]`` (``T <= block_size``)."""

    def __init__(self, config: Optional[GPTConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        c = (config or GPTConfig(**kwargs)).validate()
        self.config = c
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init)
        # GPT-2: residual output projections scaled by 1/sqrt(2 * n_layer)
        for blk in self.blocks:
            for lin in (blk.attn.proj, blk.out):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * c.n_layer))
        if c.tie_head:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: Tensor) -> Tensor:
        b, t = ids.shape
        if t > self.config.block_size:
            raise ValueError(f"GPT: sequence length {t} exceeds block_size {self.config.block_size}")
        pos = torch.arange(t, device=ids.device)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))

    def loss(self, block: Tensor) -> Tensor:
        """Mean next-token cross-entropy of int64 ``block`` ``[B, T + 1]``: inputs ``[:, :-1]``, targets
        ``[:, 1:]``."""
        logits = self(block[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), block[:, 1:].reshape(-1))
