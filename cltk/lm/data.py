"""The BBC News continual pre-training (CPT) data: 5 topics as 5 domains, packed into fixed-length token blocks.

* Domains, in order: the topics of :data:`cltk.text.corpora.BBC_TOPICS` (business, entertainment, politics, sports,
  tech); domain 1 (business) is the pre-training domain.
* Split: the articles of each domain are shuffled with a ``torch.Generator`` seeded by ``split_seed`` and the first
  ``heldout_frac`` of them are held out; the split is by article, so no article contributes to both sides.
* Tokens: the in-tree WordPiece tokenizer (:func:`cltk.text.load_tokenizer`, the MiniLM vocabulary of 30,522
  pieces). Each article is ``pieces + [SEP]``; the articles of a split are concatenated in their shuffled order and
  cut into non-overlapping blocks of ``seq_len + 1`` tokens (inputs ``[:-1]``, targets ``[1:]``); the remainder is
  dropped.
* Vocabulary restriction (keeps the softmax cheap): the LM's vocabulary is the ``vocab_size - 1`` most frequent
  piece ids of the *training* text of all 5 domains (ties broken by id) plus ``[UNK]`` as id 0; every other piece,
  held-out ones included, becomes ``[UNK]``. ``vocab_size=None`` keeps every id seen in the training text. With
  the default 12,288 the restricted vocabulary covers 98.7% of the training tokens (8,192: about 96%); ``[UNK]``
  targets count in the perplexity like any other token (as in the 10k-word Penn Treebank setup).

Tokenizing the corpus takes a few seconds and is done once per process (cached in memory).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import torch
from torch import Tensor

from cltk.text.corpora import BBC_TOPICS, bbc_news

__all__ = ["CPTData", "split_articles", "pack_blocks", "build_vocab_map", "bbc_cpt_data"]


@dataclass
class CPTData:
    """``train[k]`` / ``heldout[k]``: int64 ``[N_k, seq_len + 1]`` blocks of domain ``k`` (restricted ids)."""

    domains: tuple[str, ...]
    train: list[Tensor]
    heldout: list[Tensor]
    vocab_size: int
    seq_len: int
    unk_rate: float           # fraction of training tokens mapped to [UNK]

    def describe(self) -> str:
        parts = [f"{d}: {len(tr)} train / {len(he)} held-out blocks"
                 for d, tr, he in zip(self.domains, self.train, self.heldout)]
        return (f"{len(self.domains)} domains, blocks of {self.seq_len}+1 tokens, vocab {self.vocab_size} "
                f"([UNK] {100 * self.unk_rate:.1f}% of training tokens); " + "; ".join(parts))


def split_articles(n: int, heldout_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic, disjoint split of ``range(n)``: ``(train, heldout)`` indices in shuffled order."""
    if not 0.0 < heldout_frac < 1.0:
        raise ValueError(f"split_articles: heldout_frac must be in (0, 1), got {heldout_frac!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    n_held = max(1, int(round(heldout_frac * n)))
    return order[n_held:], order[:n_held]


def pack_blocks(docs: Sequence[Sequence[int]], block_len: int) -> Tensor:
    """Concatenate ``docs`` and cut into non-overlapping int64 ``[N, block_len]`` blocks (remainder dropped)."""
    if isinstance(block_len, bool) or not isinstance(block_len, int) or block_len < 2:
        raise ValueError(f"pack_blocks: block_len must be an integer >= 2, got {block_len!r}")
    flat = [t for d in docs for t in d]
    n = len(flat) // block_len
    return torch.tensor(flat[: n * block_len], dtype=torch.int64).view(n, block_len)


def build_vocab_map(train_docs: Sequence[Sequence[int]], vocab_size: Optional[int], unk_id: int,
                    n_ids: int) -> tuple[Tensor, int]:
    """A lookup table ``[n_ids]`` original id -> restricted id (0 = [UNK]) and the restricted vocabulary size."""
    counts = Counter(t for d in train_docs for t in d)
    counts.pop(unk_id, None)
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2 or None, got {vocab_size!r}")
        ranked = ranked[: vocab_size - 1]
    table = torch.zeros(n_ids, dtype=torch.int64)
    table[torch.tensor(sorted(ranked), dtype=torch.int64)] = torch.arange(1, len(ranked) + 1)
    return table, len(ranked) + 1


@lru_cache(maxsize=1)
def _tokenized_bbc() -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...], int, int]:
    from cltk.text import load_tokenizer
    tok = load_tokenizer()
    texts, labels = bbc_news()
    docs = tuple(tuple([tok.vocab[p] for p in tok.tokenize(t)] + [tok.sep_id]) for t in texts)
    return docs, labels, tok.unk_id, len(tok.vocab)


@lru_cache(maxsize=4)
def bbc_cpt_data(seq_len: int = 64, vocab_size: Optional[int] = 12288, heldout_frac: float = 0.2,
                 split_seed: int = 0, max_heldout_blocks: Optional[int] = 32) -> CPTData:
    """The 5 BBC domains as :class:`CPTData` (cached; do not modify the returned tensors).

    ``max_heldout_blocks``: evaluate on at most this many held-out blocks per domain (the first ones of the
    shuffled held-out articles); ``None`` keeps all.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"bbc_cpt_data: seq_len must be an integer >= 1, got {seq_len!r}")
    docs, labels, unk_id, n_ids = _tokenized_bbc()
    splits = []
    for k in range(len(BBC_TOPICS)):
        idx = [i for i, y in enumerate(labels) if y == k]
        tr, he = split_articles(len(idx), heldout_frac, split_seed + k)
        splits.append(([docs[idx[i]] for i in tr], [docs[idx[i]] for i in he]))
    table, v = build_vocab_map([d for tr, _ in splits for d in tr], vocab_size, unk_id, n_ids)
    train, heldout = [], []
    n_tok = n_unk = 0
    for tr, he in splits:
        b = table[pack_blocks(tr, seq_len + 1)]
        n_tok += b.numel()
        n_unk += int((b == 0).sum())
        train.append(b)
        h = table[pack_blocks(he, seq_len + 1)]
        heldout.append(h if max_heldout_blocks is None else h[:max_heldout_blocks])
    return CPTData(tuple(BBC_TOPICS), train, heldout, v, seq_len, n_unk / max(1, n_tok))
