"""Continual pre-training metrics on a perplexity matrix.

``P[i, j]``: held-out perplexity on domain ``j`` after training on domains ``0..i`` (row 0: the model pre-trained
on the first domain; ``T`` rows and ``T`` columns). Lower is better everywhere, and every transfer metric below is
signed so that **positive means worse** (higher perplexity):

* ``average_ppl(P)  = mean_j P[T-1, j]``: the final model on every domain.
* ``bwt_ppl(P)      = mean_{j < T-1} (P[T-1, j] - P[j, j])``: backward transfer; positive = forgetting (the
  perplexity on an earlier domain went up after training on later ones), negative = later domains helped.
* ``fwt_ppl(P)      = mean_{2 <= j < T} (P[j-1, j] - P[0, j])``: forward transfer; the perplexity on domain ``j``
  just before training on it, against the first-domain model's perplexity on it. Negative = training on the
  domains between helped the unseen domain. Domain 1 is left out (there ``P[0, 1] - P[0, 1] = 0`` by definition),
  so it needs ``T >= 3`` (NaN otherwise).
* ``forgetting_ppl(P) = mean_{j < T-1} (P[T-1, j] - min_{i >= j, i < T-1} P[i, j])``: increase over the best
  perplexity the domain had before the final model (negative when the final model is its best so far).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

__all__ = ["average_ppl", "bwt_ppl", "fwt_ppl", "forgetting_ppl", "cpt_metrics", "perplexity"]

Matrix = Union[np.ndarray, Sequence[Sequence[float]]]


def _square(P: Matrix) -> np.ndarray:
    a = np.asarray(P, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"perplexity matrix must be square T x T with T >= 1, got shape {a.shape}")
    return a


def perplexity(mean_nll: float) -> float:
    """``exp`` of a mean negative log-likelihood in nats."""
    return math.exp(mean_nll)


def average_ppl(P: Matrix) -> float:
    a = _square(P)
    return float(a[-1].mean())


def bwt_ppl(P: Matrix) -> float:
    a = _square(P)
    T = a.shape[0]
    if T < 2:
        return float("nan")
    return float(np.mean([a[T - 1, j] - a[j, j] for j in range(T - 1)]))


def fwt_ppl(P: Matrix) -> float:
    a = _square(P)
    T = a.shape[0]
    if T < 3:
        return float("nan")
    return float(np.mean([a[j - 1, j] - a[0, j] for j in range(2, T)]))


def forgetting_ppl(P: Matrix) -> float:
    a = _square(P)
    T = a.shape[0]
    if T < 2:
        return float("nan")
    return float(np.mean([a[T - 1, j] - a[j:T - 1, j].min() for j in range(T - 1)]))


def cpt_metrics(P: Matrix) -> dict[str, float]:
    return {"avg_ppl": average_ppl(P), "bwt_ppl": bwt_ppl(P), "fwt_ppl": fwt_ppl(P),
            "forgetting_ppl": forgetting_ppl(P)}
