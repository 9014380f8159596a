"""Memory aware synapses (Aljundi et al. 2018): importance = sensitivity of the output's squared L2 norm.

After each task, for every training sample x_n of the task,

    Omega_i += (1/N) sum_n | d ||F(x_n; theta)||_2^2 / d theta_i |,

(accumulated over tasks), with ``F`` the logits the scenario allows for the task (task-IL: its own head; class-IL:
every unit seen so far; domain-IL: the shared head). No label is needed. The penalty is
``lambda_ * sum_i Omega_i (theta_i - theta*_i)^2`` with ``theta*`` the parameters at the end of the latest task.
Under ``torch.distributed`` every rank uses its share of the samples (every world_size-th); each rank's mean is
weighted by its share before the ranks are averaged, so Omega is the mean over all samples, as in one process.

Default ``lambda_ = 1``, the authors' value for object recognition (rahafaljundi/MAS-Memory-Aware-Synapses,
``MAS.py``: "In object recognition it was set to 1"). The importance follows the paper's per-sample definition; the
authors' code can also take the gradient of a whole minibatch's norm (``b1=False``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from cltk.methods._penalty import (QuadraticRegularizer, all_reduce_mean_, detached_copy, per_sample_grad_moment,
                                   rank_shard, trainable_parameters)
from cltk.methods._task_bn import TaskBNConfig, TaskBNStats
from cltk.methods.base import Method, register
from cltk.streams.base import Task

__all__ = ["MASConfig", "MAS"]


@dataclass
class MASConfig(TaskBNConfig):
    """``lambda_`` (>= 0): penalty strength; ``samples``: training samples per task the importance is estimated
    on (``None``: all); ``chunk``: samples per vectorised per-sample-gradient pass (memory only; ``None``: as many
    as keep a pass's per-sample gradients within 512 MiB, at most 256); ``seed``: the sample draw; ``bn_stats="task"``:
    each task evaluated with its own BatchNorm statistics (task-IL; :mod:`cltk.methods._task_bn`)."""

    lambda_: float = 1.0
    samples: Optional[int] = None
    chunk: Optional[int] = None
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        self.check_nonnegative("lambda_")
        if self.samples is not None:
            self.check_int("samples", 1)
        if self.chunk is not None:
            self.check_int("chunk", 1)
        self.check_int("seed", 0)


@register
class MAS(QuadraticRegularizer, TaskBNStats, Method):
    name = "mas"
    description = "memory aware synapses: quadratic penalty weighted by the output-norm sensitivity"
    paper = "Aljundi et al. 2018, ECCV, arXiv:1711.09601"
    Config = MASConfig

    def __init__(self, config: Optional[MASConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self._init_terms()

    def term_coefficients(self) -> list[float]:
        return [self.config.lambda_] * len(self.importances)

    def importance(self, task: Task) -> list[Tensor]:
        """This task's Omega (before accumulation): one non-negative tensor per trainable parameter."""
        c, model = self.config, self.model
        device = trainable_parameters(model)[0].device
        x = task.train.x
        if c.samples is not None and c.samples < x.shape[0]:
            gen = torch.Generator().manual_seed(c.seed * 1_000_003 + task.index)
            x = x[torch.randperm(x.shape[0], generator=gen)[:c.samples]]
        n_total = int(x.shape[0])
        shard = rank_shard()
        x = x[shard].to(device)
        mask = self.active_mask(torch.full((x.shape[0],), task.index, dtype=torch.long, device=device),
                                upto=task.index)

        def squared_norm(logits: Tensor, m: Tensor) -> Tensor:
            return (logits * m).pow(2).sum()

        omega = per_sample_grad_moment(model, squared_norm, (x, mask), power=1, chunk_size=c.chunk)
        if shard.step is not None and n_total:   # distributed: weight each rank's mean by its share of the samples
            torch._foreach_mul_(omega, int(x.shape[0]) * shard.step / n_total)
        return all_reduce_mean_(omega)

    def after_task(self, task: Task) -> None:
        super().after_task(task)   # TaskBNStats: this task's BatchNorm statistics
        omega = self.importance(task)
        if self.importances:
            torch._foreach_add_(omega, self.importances[0])
        self.importances = [omega]
        self.anchors = [detached_copy(trainable_parameters(self.model))]

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self._terms_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._load_terms_state(state)
