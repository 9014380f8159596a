"""BERT WordPiece tokenization (uncased), reading the vocabulary of a model's ``tokenizer.json`` or ``vocab.txt``.

The steps are those of BERT's ``BasicTokenizer`` + ``WordpieceTokenizer`` (the ``BertNormalizer``,
``BertPreTokenizer`` and ``WordPiece`` model of a HF ``tokenizer.json``):

1. clean: drop NUL, U+FFFD and control characters; every whitespace character becomes a space;
2. put spaces around CJK ideographs;
3. lowercase, then strip accents (NFD, drop combining marks), as ``strip_accents=None`` does with lowercasing;
4. split on whitespace, and make every punctuation character (ASCII symbols and Unicode category P*) its own word;
5. WordPiece: greedy longest match from the left, continuation pieces prefixed ``##``; a word with a piece that
   is not in the vocabulary, or longer than ``max_input_chars_per_word`` (100), becomes ``[UNK]``.

:meth:`WordPieceTokenizer.encode` adds ``[CLS]`` and ``[SEP]``, truncates to ``max_len`` and pads with ``[PAD]``.
"""
from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Iterable, Union

import torch

__all__ = ["WordPieceTokenizer", "basic_tokenize"]


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def _normalize(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out).lower())
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def basic_tokenize(text: str) -> list[str]:
    """Steps 1-4: the lowercased, accent-stripped words and punctuation marks of ``text``."""
    words: list[str] = []
    for chunk in _normalize(text).split():
        cur: list[str] = []
        for ch in chunk:
            if _is_punctuation(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
    return words


class WordPieceTokenizer:
    """Uncased BERT tokenizer over a fixed vocabulary.

    Args:
        vocab: token -> id.
        unk_token, cls_token, sep_token, pad_token: the special tokens (must be in ``vocab``).
        max_input_chars_per_word: longer words become ``[UNK]``.
    """

    def __init__(self, vocab: dict[str, int], *, unk_token: str = "[UNK]", cls_token: str = "[CLS]",
                 sep_token: str = "[SEP]", pad_token: str = "[PAD]", max_input_chars_per_word: int = 100) -> None:
        for name, tok in (("unk_token", unk_token), ("cls_token", cls_token), ("sep_token", sep_token),
                          ("pad_token", pad_token)):
            if tok not in vocab:
                raise ValueError(f"WordPieceTokenizer: {name} {tok!r} is not in the vocabulary")
        self.vocab = dict(vocab)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.unk_id, self.cls_id = self.vocab[unk_token], self.vocab[cls_token]
        self.sep_id, self.pad_id = self.vocab[sep_token], self.vocab[pad_token]
        self.max_input_chars_per_word = int(max_input_chars_per_word)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "WordPieceTokenizer":
        """From a HF ``tokenizer.json`` (WordPiece model) or a ``vocab.txt`` (one token per line, id = line number)."""
        path = Path(path)
        if path.suffix == ".json":
            spec = json.loads(path.read_text(encoding="utf-8"))
            model = spec.get("model", {})
            if model.get("type") != "WordPiece":
                raise ValueError(f"WordPieceTokenizer: {path} holds a {model.get('type')!r} model, expected WordPiece")
            if model.get("continuing_subword_prefix", "##") != "##":
                raise ValueError(f"WordPieceTokenizer: {path} uses continuing_subword_prefix "
                                 f"{model['continuing_subword_prefix']!r}, only '##' is supported")
            norm = spec.get("normalizer") or {}
            if norm.get("type") == "BertNormalizer" and not norm.get("lowercase", True):
                raise ValueError(f"WordPieceTokenizer: {path} is a cased tokenizer; only uncased BERT is supported")
            return cls(model["vocab"], unk_token=model.get("unk_token", "[UNK]"),
                       max_input_chars_per_word=model.get("max_input_chars_per_word", 100))
        tokens = path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        return cls({t: i for i, t in enumerate(tokens)})

    def wordpiece(self, word: str) -> list[str]:
        """Step 5 for one basic word."""
        if len(word) > self.max_input_chars_per_word:
            return [self.inv_vocab[self.unk_id]]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return [self.inv_vocab[self.unk_id]]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str, limit: int | None = None) -> list[str]:
        """The word pieces of ``text`` (no special tokens); stops once ``limit`` pieces are found."""
        out: list[str] = []
        for w in basic_tokenize(text):
            out.extend(self.wordpiece(w))
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    def encode(self, texts: Union[str, Iterable[str]], max_len: int = 64) -> torch.Tensor:
        """int64 [N, max_len]: ``[CLS] pieces[:max_len - 2] [SEP]`` then ``[PAD]`` (id ``pad_id``) to ``max_len``.

        A single string gives N = 1. The attention mask is ``ids != pad_id``.
        """
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"WordPieceTokenizer.encode: max_len must be an integer >= 2, got {max_len!r}")
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for text in texts:
            ids = [self.vocab[p] for p in self.tokenize(text, limit=max_len - 2)]
            row = [self.cls_id, *ids, self.sep_id]
            rows.append(row + [self.pad_id] * (max_len - len(row)))
        if not rows:
            return torch.zeros(0, max_len, dtype=torch.int64)
        return torch.tensor(rows, dtype=torch.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The tokens of ``ids`` (special tokens included, padding dropped)."""
        return [self.inv_vocab[int(i)] for i in ids if int(i) != self.pad_id]
