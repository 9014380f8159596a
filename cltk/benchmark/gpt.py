"""A small GPT-style decoder for the scaling runs: pre-LayerNorm blocks of causal self-attention and a GELU MLP.

Every projection is an ``nn.Linear`` (qkv, out, fc1, fc2, lm_head), so gradient-masking optimizers that hook
linear layers see the same layer set as in a real decoder. Sizes are named by their target parameter count;
``GPT.num_parameters()`` gives the actual one, which is what results report.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    d_model: int
    n_layer: int
    n_head: int
    vocab_size: int = 8192
    seq_len: int = 256
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "n_head", "vocab_size", "seq_len", "mlp_ratio"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig: d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")

    def num_parameters(self) -> int:
        """Parameter count of ``GPT(self)`` without building it."""
        d, h = self.d_model, self.mlp_ratio * self.d_model
        block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
        return self.vocab_size * d + self.seq_len * d + self.n_layer * block + 2 * d + d * self.vocab_size


# target size -> config; about 12 d^2 per block plus 2 * vocab * d for the untied embedding and head
SIZES: dict[str, GPTConfig] = {
    "10M": GPTConfig(d_model=256, n_layer=8, n_head=4),
    "30M": GPTConfig(d_model=512, n_layer=7, n_head=8),
    "100M": GPTConfig(d_model=768, n_layer=12, n_head=12),
    "300M": GPTConfig(d_model=1024, n_layer=23, n_head=16),
    "1B": GPTConfig(d_model=2048, n_layer=19, n_head=16),
}


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.mlp_ratio * d)
        self.fc2 = nn.Linear(cfg.mlp_ratio * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (batch, t) int64 token ids, t <= seq_len. Returns logits (batch, t, vocab)."""
        if idx.dim() != 2 or idx.shape[1] > self.cfg.seq_len:
            raise ValueError(f"GPT: idx must be (batch, t) with t <= {self.cfg.seq_len}, got {list(idx.shape)}")
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
