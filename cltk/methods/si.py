"""Synaptic intelligence (Zenke, Poole & Ganguli 2017): importance from each parameter's path integral.

While task mu trains, every optimizer step adds ``-g_i * delta_theta_i`` to a running sum ``w_i`` (``g``: the gradient
of the task loss without the penalty, recovered in :meth:`after_backward` by subtracting the penalty's analytic
gradient; ``delta_theta``: the step's parameter change, seen in :meth:`after_step`). At the end of the task

    Omega_i <- max(0, Omega_i + w_i / ((theta_i(end) - theta_i(start))^2 + xi)),

and the penalty is ``c * sum_i Omega_i (theta_i - theta_i(end))^2``. The clamp at 0 is that of the authors' code
(``tf.nn.relu`` on omega in ganguli-lab/pathint): a negative path integral comes from gradient noise, and it keeps
the penalty a convex pull.

Defaults c = 1, xi = 1e-3 are the authors' split-MNIST values (ganguli-lab/pathint, ``fig_split_mnist`` notebook:
``PATH_INT_PROTOCOL(omega_decay='sum', xi=1e-3)``, ``cvals = [0, 1.0]``, Adam lr 1e-3). van de Ven & Tolias 2019
used xi = 0.1 and, on split MNIST, c = 50 (task-IL), 500 (domain-IL), 0.5 (class-IL) (GMvandeVen/continual-learning,
``param_values.py`` of the 2019 code).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from cltk.methods._penalty import QuadraticRegularizer, detached_copy, trainable_parameters
from cltk.methods._task_bn import TaskBNConfig, TaskBNStats
from cltk.methods.base import Method, register
from cltk.streams.base import Task

__all__ = ["SIConfig", "SI"]


@dataclass
class SIConfig(TaskBNConfig):
    """``c`` (>= 0): penalty strength; ``xi`` (> 0): damping of the normalisation by the squared total change;
    ``bn_stats="task"``: each task evaluated with its own BatchNorm statistics (task-IL;
    :mod:`cltk.methods._task_bn`)."""

    c: float = 1.0
    xi: float = 1e-3

    def validate(self) -> None:
        super().validate()
        self.check_nonnegative("c")
        self.check_positive("xi")


@register
class SI(QuadraticRegularizer, TaskBNStats, Method):
    name = "si"
    description = "synaptic intelligence: quadratic penalty weighted by each parameter's path integral of the loss"
    paper = "Zenke, Poole & Ganguli 2017, ICML, arXiv:1703.04200"
    Config = SIConfig

    def __init__(self, config: Optional[SIConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self._init_terms()
        self.path: Optional[list[Tensor]] = None        # w: running -g * delta_theta of the current task
        self._start: Optional[list[Tensor]] = None      # parameters when the task started
        self._prev: Optional[list[Tensor]] = None       # parameters after the previous step
        self._grad: Optional[list[Tensor]] = None       # task-loss gradient of the step being taken

    def term_coefficients(self) -> list[float]:
        return [self.config.c] * len(self.importances)

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        params = trainable_parameters(self.model)
        self._start = detached_copy(params)
        self._prev = detached_copy(params)
        self.path = [torch.zeros_like(p) for p in params]

    def after_backward(self, model: nn.Module) -> None:
        params = trainable_parameters(model)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        if self.importances:
            # Remove the penalty's own gradient 2 c Omega (theta - theta*) so the path integral sees the task loss.
            pen = torch._foreach_sub([p.detach() for p in params], self.anchors[0])
            torch._foreach_mul_(pen, self.importances[0])
            torch._foreach_add_(grads, pen, alpha=-2.0 * self.config.c)
        self._grad = grads

    def after_step(self, model: nn.Module) -> None:
        if self._grad is None:
            return
        params = [p.detach() for p in trainable_parameters(model)]
        delta = torch._foreach_sub(params, self._prev)
        torch._foreach_mul_(delta, self._grad)
        torch._foreach_sub_(self.path, delta)
        torch._foreach_copy_(self._prev, params)
        self._grad = None

    def after_task(self, task: Task) -> None:
        super().after_task(task)   # TaskBNStats: this task's BatchNorm statistics
        params = [p.detach() for p in trainable_parameters(self.model)]
        change = torch._foreach_sub(params, self._start)
        torch._foreach_mul_(change, change)
        torch._foreach_add_(change, self.config.xi)
        omega = torch._foreach_div(self.path, change)
        if self.importances:
            torch._foreach_add_(omega, self.importances[0])
        torch._foreach_clamp_min_(omega, 0.0)
        self.importances = [omega]
        self.anchors = [detached_copy(params)]
        self.path = self._start = self._prev = self._grad = None

    def state_dict(self) -> dict:
        state = {**super().state_dict(), **self._terms_state()}
        # Mid-task state: the running path integral and the task's starting point (absent between tasks).
        state["path"] = None if self.path is None else detached_copy(self.path)
        state["start"] = None if self._start is None else detached_copy(self._start)
        state["prev"] = None if self._prev is None else detached_copy(self._prev)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._load_terms_state(state)
        self.path = None if state.get("path") is None else detached_copy(state["path"])
        self._start = None if state.get("start") is None else detached_copy(state["start"])
        self._prev = None if state.get("prev") is None else detached_copy(state["prev"])
