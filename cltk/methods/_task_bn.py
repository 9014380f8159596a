"""Per-task BatchNorm statistics for methods that train one shared network (``bn_stats="task"``, task-IL only).

A network trained task after task keeps one set of BatchNorm running statistics, which every task's training moves
to its own data. Evaluated later, an earlier task is normalised with the latest task's statistics, a loss of its
accuracy that no penalty on the weights can prevent. With ``bn_stats="task"`` the running mean and variance of every
BatchNorm layer, as they stand when a task's training ends, are stored and loaded whenever that task is evaluated
(the task id selects them, as it selects the head in task-IL). Training is unchanged. A task costs
``2 * sum(channels)`` stored values (not trained; ``added_parameters`` counts trained parameters only).

:func:`frozen_copy` makes the frozen teacher of the distilling methods (LwF, iCaRL), with their ``teacher_bn``
choice of how its BatchNorm layers normalise.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from cltk.methods.base import FINGERPRINT_OMIT_DEFAULT, MethodConfig
from cltk.streams.base import Stream, Task

BN_STATS = ("shared", "task")
TEACHER_BN = ("running", "batch")


@dataclass
class TaskBNConfig(MethodConfig):
    """``bn_stats``: ``"shared"`` (default; one set of BatchNorm running statistics, moved by every task) or
    ``"task"`` (task-IL only; each task's statistics at the end of its training are stored and used when that task is
    evaluated, see :mod:`cltk.methods._task_bn`)."""

    bn_stats: str = field(default="shared", metadata={FINGERPRINT_OMIT_DEFAULT: True})

    def validate(self) -> None:
        super().validate()
        self.check_choice("bn_stats", BN_STATS)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics, in module order."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


class TaskBNStats:
    """Mixin (before :class:`~cltk.methods.base.Method` in the bases) for configs derived from :class:`TaskBNConfig`:
    stores each task's BatchNorm statistics in its ``after_task`` (so a method's own ``after_task`` calls
    ``super().after_task(task)``) and evaluates every sample with its own task's set."""

    _task_bn: dict[int, list[Tensor]]

    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        model = super().setup(model, stream)   # type: ignore[misc]
        self._task_bn = {}
        if self.config.bn_stats == "task":     # type: ignore[attr-defined]
            name = type(self.config).__name__  # type: ignore[attr-defined]
            if stream.scenario != "task":
                raise ValueError(f"{name}.bn_stats='task' needs the task-IL scenario (the task id selects the "
                                 f"statistics), got scenario {stream.scenario!r}")
            if not batchnorm_layers(model):
                raise ValueError(f"{name}.bn_stats='task': the model has no BatchNorm layer with running statistics")
        return model

    def _per_task(self) -> bool:
        return self.config.bn_stats == "task"  # type: ignore[attr-defined]

    def _live(self) -> list[Tensor]:
        return [b for m in batchnorm_layers(self.model) for b in (m.running_mean, m.running_var)]  # type: ignore

    def after_task(self, task: Task) -> None:
        """Keep the statistics as they are now as ``task``'s set (nothing with ``bn_stats="shared"``)."""
        super().after_task(task)               # type: ignore[misc]
        if self._per_task():
            self._task_bn[task.index] = [b.detach().clone() for b in self._live()]

    def eval_logits(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        evaluate = super().eval_logits         # type: ignore[misc]
        if not self._per_task() or not self._task_bn:
            return evaluate(model, x, t)
        tasks = t.unique().tolist()
        if len(tasks) == 1:
            return self._with_set(tasks[0], lambda: evaluate(model, x, t))
        out: Optional[Tensor] = None
        for k in tasks:                        # a batch mixing tasks: each task's samples with its own set
            idx = (t == k).nonzero().squeeze(1)
            part = self._with_set(k, lambda: evaluate(model, x[idx], t[idx]))
            if out is None:
                out = part.new_empty((x.shape[0],) + tuple(part.shape[1:]))
            out[idx] = part
        assert out is not None
        return out

    def _with_set(self, k: int, fn):
        stored = self._task_bn.get(int(k))
        if stored is None:                     # a task not trained yet: the statistics as they are
            return fn()
        live = self._live()
        saved = [b.clone() for b in live]
        with torch.no_grad():
            torch._foreach_copy_(live, stored)
        try:
            return fn()
        finally:
            with torch.no_grad():
                torch._foreach_copy_(live, saved)

    def state_dict(self) -> dict:
        state = super().state_dict()           # type: ignore[misc]
        if self._per_task():
            state["task_bn"] = {int(k): v for k, v in self._task_bn.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)         # type: ignore[misc]
        if self._per_task():
            self._task_bn = {int(k): [b.clone() for b in v] for k, v in state.get("task_bn", {}).items()}


def frozen_copy(model: nn.Module, teacher_bn: str = "running") -> nn.Module:
    """A frozen copy of ``model`` (a teacher for distillation): inference mode, no parameter requires grad.

    ``teacher_bn``: ``"running"`` normalises its BatchNorm layers with the running statistics the copy was made with;
    ``"batch"`` normalises each minibatch with its own statistics, as the training model does, and neither uses nor
    updates the copy's running statistics. On a network with BatchNorm and a shift of input distribution between
    tasks the two differ: with ``"running"`` the training model is pulled towards outputs computed under other
    normalisation than its own."""
    if teacher_bn not in TEACHER_BN:
        raise ValueError(f"frozen_copy: teacher_bn must be one of {TEACHER_BN}, got {teacher_bn!r}")
    old = copy.deepcopy(model)
    old.eval()
    if teacher_bn == "batch":
        for m in old.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False
    old.zero_grad(set_to_none=True)
    for p in old.parameters():
        p.requires_grad_(False)
    return old
