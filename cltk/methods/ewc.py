"""Elastic weight consolidation: a quadratic pull towards earlier solutions, weighted by the diagonal Fisher.

``ewc`` (Kirkpatrick et al. 2017) keeps one term per finished task k, with its own Fisher F_k and anchor theta*_k:

    penalty = lambda_ / 2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2

``online-ewc`` (Schwarz et al. 2018, "Progress & compress") keeps one running Fisher and the latest anchor:

    F~_k = gamma F~_{k-1} + F_k,   penalty = lambda_ / 2 * sum_i gamma F~_{k,i} (theta_i - theta*_{k,i})^2

(the same decay convention as van de Ven & Tolias's code, so their lambda and gamma values carry over).

The Fisher is estimated in :meth:`after_task` from per-sample gradients on the task's training data (all of it, or
``fisher_samples`` drawn without replacement), over the output units the scenario allows (task-IL: the task's head;
class-IL: every unit seen so far; domain-IL: the shared head). ``fisher`` selects the label each sample's
log-likelihood uses: ``"true"`` draws it from the model's predictive distribution (the Fisher information itself, as
in Kirkpatrick et al.), ``"empirical"`` uses the true label, ``"predicted"`` the model's most likely label (van de Ven &
Tolias 2019). Under ``torch.distributed`` every rank estimates it on its own share of the samples (every world_size-th) and the
ranks' estimates are averaged (one all-reduce) before it is stored.

Default strengths: Kirkpatrick et al. give no value for split MNIST; the defaults are van de Ven & Tolias's task-IL
split-MNIST values (GMvandeVen/continual-learning, ``param_values.py`` of the 2019 "Three scenarios" code):

=========  ==========  ======================  ===========
scenario   ewc lambda  online-ewc lambda       gamma
=========  ==========  ======================  ===========
task       1e7         1e8                     0.8
domain     1e6         1e8                     0.7
class      1e8         1e9                     0.8
=========  ==========  ======================  ===========

(their Fisher uses ``"predicted"`` labels; the 2022 version of the same code uses lambda 1e5 / 1e10 / 1e9.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.methods._penalty import (MAX_CHUNK, QuadraticRegularizer, all_reduce_mean_, detached_copy,
                                   per_sample_grad_moment, rank_shard, trainable_parameters, unwrap_ddp)
from cltk.methods._task_bn import TaskBNConfig, TaskBNStats
from cltk.methods.base import Method, register
from cltk.streams.base import Task

__all__ = ["EWCConfig", "EWC", "OnlineEWCConfig", "OnlineEWC", "estimate_fisher", "FISHER_LABELS"]

FISHER_LABELS = ("true", "empirical", "predicted")


@dataclass
class EWCConfig(TaskBNConfig):
    """``lambda_``: penalty strength (>= 0); ``fisher``: label source, one of ``FISHER_LABELS``;
    ``fisher_samples``: how many training samples estimate the Fisher (``None``: all); ``fisher_chunk``: samples
    per vectorised per-sample-gradient pass (memory only, not the result; ``None``: as many as keep a pass's
    per-sample gradients within 512 MiB, at most 256, see ``cltk.methods._penalty.auto_chunk_size``);
    ``fisher_seed``: seeds the sample draw and the sampled labels; ``bn_stats="task"``: each task evaluated with its
    own BatchNorm statistics (task-IL; :mod:`cltk.methods._task_bn`)."""

    lambda_: float = 1e7
    fisher: str = "true"
    fisher_samples: Optional[int] = None
    fisher_chunk: Optional[int] = None
    fisher_seed: int = 0

    def validate(self) -> None:
        super().validate()
        self.check_nonnegative("lambda_")
        self.check_choice("fisher", FISHER_LABELS)
        if self.fisher_samples is not None:
            self.check_int("fisher_samples", 1)
        if self.fisher_chunk is not None:
            self.check_int("fisher_chunk", 1)
        self.check_int("fisher_seed", 0)


def estimate_fisher(method: Method, model: nn.Module, task: Task, labels: str = "true",
                    n_samples: Optional[int] = None, chunk_size: Optional[int] = None, seed: int = 0) -> list[Tensor]:
    """Diagonal Fisher of ``model`` on ``task``'s training data: ``E_x[(d log p(y|x) / d theta)^2]``.

    The log-likelihood is over the units ``method.active_mask`` allows for the task (the rest are masked out), with
    ``y`` chosen by ``labels`` (see :data:`FISHER_LABELS`). Returns one non-negative float tensor per trainable
    parameter, averaged over the samples and, under ``torch.distributed``, over the ranks.
    """
    if labels not in FISHER_LABELS:
        raise ValueError(f"estimate_fisher: labels must be one of {FISHER_LABELS}, got {labels!r}")
    model = unwrap_ddp(model)
    device = trainable_parameters(model)[0].device
    gen = torch.Generator().manual_seed(seed * 1_000_003 + task.index)
    x, y = task.train.x, task.train.y
    if n_samples is not None and n_samples < y.shape[0]:
        idx = torch.randperm(y.shape[0], generator=gen)[:n_samples]
        x, y = x[idx], y[idx]
    x, y = x.to(device), y.to(device)
    t = torch.full_like(y, task.index)
    mask = method.active_mask(t, upto=task.index)
    if labels != "empirical":
        # the labels are drawn for every sample on every rank, so a distributed run draws what one process draws
        was_training = model.training
        model.eval()
        with torch.no_grad():
            step = chunk_size or MAX_CHUNK      # no per-sample gradients here
            logits = torch.cat([model(x[s:s + step]) for s in range(0, x.shape[0], step)])
        model.train(was_training)
        logits = logits.masked_fill(~mask, float("-inf"))
        if labels == "predicted":
            y = logits.argmax(1)
        else:
            probs = torch.softmax(logits.float(), 1).cpu()
            y = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
    # Each rank takes every world_size-th sample; its mean is weighted by its share of the samples before the
    # all-reduce averages the ranks, so the result is the mean over all samples.
    n_total = int(y.shape[0])
    shard = rank_shard()
    x, y, mask = x[shard], y[shard], mask[shard]

    def nll(logits: Tensor, m: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(logits.masked_fill(~m, float("-inf")), label)

    fisher = per_sample_grad_moment(model, nll, (x, mask, y), power=2, chunk_size=chunk_size)
    if shard.step is not None and n_total:      # distributed: shard = slice(rank, None, world_size)
        torch._foreach_mul_(fisher, int(y.shape[0]) * shard.step / n_total)
    return all_reduce_mean_(fisher)


@register
class EWC(QuadraticRegularizer, TaskBNStats, Method):
    """One quadratic term per finished task, each with its own Fisher and anchor."""

    name = "ewc"
    description = "elastic weight consolidation: a Fisher-weighted quadratic penalty per earlier task"
    paper = "Kirkpatrick et al. 2017, PNAS, arXiv:1612.00796"
    Config = EWCConfig

    def added_parameters(self, task: int) -> int:
        """0 trainable parameters: the network is shared (each task stores a Fisher and an anchor, not trained)."""
        return 0

    def __init__(self, config: Optional[EWCConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self._init_terms()

    def term_coefficients(self) -> list[float]:
        return [0.5 * self.config.lambda_] * len(self.importances)

    def fisher(self, task: Task) -> list[Tensor]:
        c = self.config
        return estimate_fisher(self, self.model, task, c.fisher, c.fisher_samples, c.fisher_chunk, c.fisher_seed)

    def after_task(self, task: Task) -> None:
        super().after_task(task)   # TaskBNStats: this task's BatchNorm statistics
        self.consolidate(task)

    def consolidate(self, task: Task) -> None:
        """Add ``task``'s term: its Fisher, anchored at the parameters as they are now."""
        fisher = self.fisher(task)
        self.importances.append(fisher)
        self.anchors.append(detached_copy(trainable_parameters(self.model)))

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self._terms_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._load_terms_state(state)


@dataclass
class OnlineEWCConfig(EWCConfig):
    """``gamma`` in (0, 1]: decay of the running Fisher (1 keeps every task's Fisher at full weight)."""

    lambda_: float = 1e8
    gamma: float = 0.8

    def validate(self) -> None:
        super().validate()
        self.check_range("gamma", 0.0, 1.0, lo_open=True)


@register
class OnlineEWC(EWC):
    """One running term: the decayed sum of the tasks' Fishers, anchored at the end of the latest task."""

    name = "online-ewc"
    description = "online EWC: one running Fisher (decayed by gamma) anchored at the latest solution"
    paper = "Schwarz et al. 2018, ICML, arXiv:1805.06370"
    Config = OnlineEWCConfig

    def term_coefficients(self) -> list[float]:
        return [0.5 * self.config.lambda_ * self.config.gamma] * len(self.importances)

    def consolidate(self, task: Task) -> None:
        fisher = self.fisher(task)
        if self.importances:
            torch._foreach_add_(fisher, self.importances[0], alpha=self.config.gamma)
        self.importances = [fisher]
        self.anchors = [detached_copy(trainable_parameters(self.model))]
