"""Continual-learning metrics over an accuracy matrix, and the linear readout of representational forgetting.

Notation: T tasks; ``R[i][j]`` is the test accuracy on task j after training tasks 0..i (rows: training time,
columns: task evaluated); ``b[j]`` is the test accuracy on task j of the randomly initialised model, evaluated with
the same output mask as ``R[j-1][j]``. Metrics of fewer than two tasks that need two (BWT, FWT, forgetting) are NaN.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["accuracy_matrix", "acc", "bwt", "fwt", "forgetting", "bwt_all_pairs", "fwt_adapted", "fit_readout",
           "readout_accuracy", "summarize"]

Matrix = Sequence[Sequence[float]]


def accuracy_matrix(R: Matrix) -> np.ndarray:
    """``R`` as a float64 [T, T] array; raises ValueError unless it is square and non-empty."""
    a = np.asarray(R, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square [T, T] with T >= 1, got shape {a.shape}")
    return a


def acc(R: Matrix) -> float:
    """Average accuracy after the last task: ``ACC = 1/T sum_j R[T-1][j]`` (Lopez-Paz & Ranzato 2017)."""
    a = accuracy_matrix(R)
    return float(a[-1].mean())


def bwt(R: Matrix) -> float:
    """Backward transfer: ``BWT = 1/(T-1) sum_{j<T-1} (R[T-1][j] - R[j][j])`` (Lopez-Paz & Ranzato 2017).

    Negative: training later tasks lowered the accuracy on earlier ones (forgetting).
    """
    a = accuracy_matrix(R)
    T = a.shape[0]
    if T < 2:
        return math.nan
    return float(np.mean([a[-1, j] - a[j, j] for j in range(T - 1)]))


def fwt(R: Matrix, b: Sequence[float]) -> float:
    """Forward transfer: ``FWT = 1/(T-1) sum_{j>=1} (R[j-1][j] - b[j])`` (Lopez-Paz & Ranzato 2017), with ``b[j]``
    the accuracy of the random-init model on task j.

    In class-IL with the output mask restricted to the tasks seen so far, task j's units are masked out in
    ``R[j-1][j]`` and ``b[j]``, so both are 0 and FWT is 0 by construction.
    """
    a = accuracy_matrix(R)
    T = a.shape[0]
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (T,):
        raise ValueError(f"fwt: b must have one accuracy per task ({T}), got shape {b.shape}")
    if T < 2:
        return math.nan
    return float(np.mean([a[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting(R: Matrix) -> float:
    """Average forgetting (Chaudhry et al. 2018, "Riemannian Walk"):
    ``F = 1/(T-1) sum_{j<T-1} f_j`` with ``f_j = max_{l in 0..T-2} R[l][j] - R[T-1][j]``.

    ``f_j`` is how far task j fell from its best accuracy before the last task; it is >= 0 whenever
    ``R[j][j]`` is among the candidates (l = j), so F >= 0 for any matrix whose rows l >= j are filled.
    """
    a = accuracy_matrix(R)
    T = a.shape[0]
    if T < 2:
        return math.nan
    return float(np.mean([a[: T - 1, j].max() - a[-1, j] for j in range(T - 1)]))


def bwt_all_pairs(R: Matrix) -> float:
    """Backward transfer over every pair, as Vettoruzzo et al. 2024 report it (after Díaz-Rodríguez et al. 2018):
    ``BWT_pairs = sum_{i=1}^{T-1} sum_{j<i} (R[i][j] - R[j][j]) / (T (T - 1) / 2)``.

    Every later row counts, not only the last one, so a method that forgets early and recovers is still charged.
    """
    a = accuracy_matrix(R)
    T = a.shape[0]
    if T < 2:
        return math.nan
    return float(sum(a[i, j] - a[j, j] for i in range(1, T) for j in range(i)) / (T * (T - 1) / 2))


def fwt_adapted(R: Matrix) -> float:
    """Forward transfer as Vettoruzzo et al. 2024 report it: the mean accuracy on the current and future tasks,
    ``FWT_adapted = sum_i sum_{j>=i} R[i][j] / (T (T + 1) / 2)``, where row i is measured after task i's
    test-time adaptation steps (no random-init baseline is subtracted, unlike :func:`fwt`)."""
    a = accuracy_matrix(R)
    T = a.shape[0]
    return float(sum(a[i, j] for i in range(T) for j in range(i, T)) / (T * (T + 1) / 2))


# ------------------------------------------------------------------------------------------------------- readout

def fit_readout(features: Tensor, labels: Tensor, n_classes: int, l2: float = 1e-3) -> Tensor:
    """Closed-form ridge regression from features to one-hot labels: a linear readout.

    Solves ``W = argmin ||[F, 1] W - Y||^2 + l2 * N * ||W||^2`` (bias not excluded from the penalty) in float64.

    Args:
        features: [N, D] float. labels: int64 [N] in ``[0, n_classes)``.
    Returns:
        W: float64 [D + 1, n_classes]; predict with :func:`readout_predict`.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"fit_readout: features must be [N, D] and labels [N], got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    f = torch.cat([features.double(), torch.ones(features.shape[0], 1, dtype=torch.float64,
                                                  device=features.device)], 1)
    y = torch.nn.functional.one_hot(labels.long(), n_classes).double()
    n, d = f.shape
    gram = f.T @ f + (l2 * max(n, 1)) * torch.eye(d, dtype=torch.float64, device=f.device)
    return torch.linalg.solve(gram, f.T @ y)


def readout_predict(w: Tensor, features: Tensor) -> Tensor:
    """Class predictions (int64 [N]) of the readout ``w`` from :func:`fit_readout`."""
    f = features.double()
    return (f @ w[:-1] + w[-1]).argmax(1)


def readout_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                     l2: float = 1e-3) -> float:
    """Representational-forgetting probe (Xiong, Ren & Urtasun 2019, "Linear readout of representations"):
    fit a linear readout on frozen features of a task's training data, return its test accuracy.

    Labels are remapped to ``0..K-1`` over the classes present in the training labels (the task's own classes), so
    the probe asks only whether the task is still linearly decodable from the features, independent of the head.
    """
    classes = torch.unique(train_labels)
    remap = torch.full((int(max(train_labels.max(), test_labels.max())) + 1,), -1, dtype=torch.long)
    remap[classes] = torch.arange(classes.numel())
    w = fit_readout(train_features, remap[train_labels], classes.numel(), l2)
    yt = remap[test_labels]
    pred = readout_predict(w, test_features)
    return float((pred == yt).double().mean()) if yt.numel() else math.nan


def summarize(R: Matrix, b: Sequence[float], readout: Optional[Sequence[float]] = None) -> dict[str, float]:
    """ACC, BWT, FWT, forgetting and (if given) the mean readout accuracy after the last task over all tasks."""
    out = {"acc": acc(R), "bwt": bwt(R), "fwt": fwt(R, b), "forgetting": forgetting(R)}
    out["readout"] = float(np.mean(readout)) if readout is not None and len(readout) else math.nan
    return out
